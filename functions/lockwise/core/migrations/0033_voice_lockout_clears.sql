-- An app unlock acknowledged while a voice decision holds the lock's lockout row does not wait for it (the relay's
-- batch carries every lock's events): it leaves a marker here instead, which that decision, or the lock's next
-- attempt, takes as it counts, clearing the lockout then (lockwise.devices.lockout). No key on the lock: a unique
-- one would make the marker's insert wait for a decision deleting an earlier marker, the wait this avoids.
CREATE TABLE voice_lockout_clears (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lock_id       uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX voice_lockout_clears_lock ON voice_lockout_clears (lock_id);
