-- The deployment this database belongs to: the Firebase project whose accounts its rows name (lockwise.core.deployment).
-- The migration job writes it on its first run; every function compares it with its own LOCKWISE_PROJECT_ID on each
-- new connection and serves nothing while they differ. Nothing bound a database to its deployment: a staging copy
-- whose DATABASE_URL named production's database, a local stack pointed at it, or a backup restored into another
-- deployment, asked its own Firebase Auth about production's accounts at the relay's flush, found none, and ended
-- every member's place and erased every voiceprint (attack run 116). One row at most.
CREATE TABLE deployment (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    project_id text NOT NULL,
    bound_at   timestamptz NOT NULL DEFAULT now()
);
