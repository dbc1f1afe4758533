-- A voice that lands just under the threshold on normalised scores gets "say it again": the scores of that first
-- utterance per candidate wait here (30 s, single use) to be fused with the second one. Scores only, never audio or
-- an embedding; deleted when used, when they expire, and with the lock.
CREATE TABLE verify_follow_ups (
    attempt_id  uuid PRIMARY KEY REFERENCES verification_attempts (id) ON DELETE CASCADE,
    lock_id     uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    scores      jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX verify_follow_ups_expiry ON verify_follow_ups (expires_at);
