-- Enrollments refused because the voice would pass as someone who shares a lock with the user (409
-- voice_matches_member). That answer is one accept/reject bit against a co-member's voiceprint, outside the door's
-- lockout and daily ceiling, so a user gets at most LOCKWISE_ENROLL_MATCH_REFUSALS of them in any 24 hours (then
-- 429 enrollment_limit before any voice is scored). Rows expire after a day (lockwise.core.retention).
CREATE TABLE enrollment_refusals (
    id          bigserial PRIMARY KEY,
    user_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 day'
);
CREATE INDEX enrollment_refusals_user ON enrollment_refusals (user_uid, created_at);
CREATE INDEX enrollment_refusals_expiry ON enrollment_refusals (expires_at);
