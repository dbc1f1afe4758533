-- Refused requests are audited (devices' with_denials_audited), each an append-only row: a guest outside her window
-- (or a member answered role_too_low) added one per request, as fast as she sent them, never limited (attack run 26).
-- The first few a minute per actor, lock and action are still logged one by one; every refusal is counted here, per
-- minute, and kept DENIAL_COUNTS_KEPT_DAYS (lockwise.core.retention).
CREATE TABLE audit_denial_counts (
    actor   text NOT NULL,
    lock_id uuid NOT NULL,
    action  text NOT NULL,
    minute  timestamptz NOT NULL,
    n       integer NOT NULL CHECK (n > 0),
    PRIMARY KEY (actor, lock_id, action, minute)
);
CREATE INDEX audit_denial_counts_minute ON audit_denial_counts (minute);
