-- Enrollments whose voice was compared with the voiceprints of people who share a lock with the user. Each answer
-- (201 stored, or 409 voice_matches_member) is one accept/reject bit on a co-member's voiceprint, outside the door's
-- lockout and daily ceiling, so a user gets at most LOCKWISE_ENROLL_COMPARISONS of them in any 24 hours (then 429
-- enrollment_limit before any voice is compared). The 409s are in the audit log too. Rows expire after a day
-- (lockwise.core.retention).
CREATE TABLE enrollment_comparisons (
    id          bigserial PRIMARY KEY,
    user_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 day'
);
CREATE INDEX enrollment_comparisons_user ON enrollment_comparisons (user_uid, expires_at);
CREATE INDEX enrollment_comparisons_expiry ON enrollment_comparisons (expires_at);
