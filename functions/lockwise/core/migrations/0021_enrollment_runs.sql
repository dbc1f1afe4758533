-- Enrollments that reached the model (each embeds every sample: ~1.7 s of CPU for five). An enrollment with no
-- co-member's voice to compare was free and unlimited, so one account could keep an instance busy (attack run);
-- now a user gets LOCKWISE_ENROLLMENTS_PER_DAY of them in any 24 hours (then 429 enrollment_limit before any model
-- work). Rows expire after a day (lockwise.core.retention).
CREATE TABLE enrollment_runs (
    id          bigserial PRIMARY KEY,
    user_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 day'
);
CREATE INDEX enrollment_runs_user ON enrollment_runs (user_uid, expires_at);
CREATE INDEX enrollment_runs_expiry ON enrollment_runs (expires_at);
