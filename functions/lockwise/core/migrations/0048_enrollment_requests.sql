-- Enrollment requests a user sent, whatever their answer, counted before the request's body is read: LOCKWISE_ENROLL_
-- REQUESTS_PER_DAY in any 24 hours (then 429 enrollment_limit). A request refused by its samples' own checks was never
-- counted, and its body (up to ~19 MB) was parsed, decoded and measured first: ~170 ms of an instance a request,
-- ~60 times a read's, as often as one account sent them (attack run 32). Rows expire after a day
-- (lockwise.core.retention).
CREATE TABLE enrollment_requests (
    id          bigserial PRIMARY KEY,
    user_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 day'
);
CREATE INDEX enrollment_requests_user ON enrollment_requests (user_uid, expires_at);
CREATE INDEX enrollment_requests_expiry ON enrollment_requests (expires_at);
