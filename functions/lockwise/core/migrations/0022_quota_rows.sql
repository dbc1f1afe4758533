-- Pairing codes were limited per lock, which deleting and creating the lock again got round (each deletion of a
-- paired lock revokes its credential too: an entry in the public revocation list). Now per account, in rows that
-- outlive the lock (lockwise.devices.provisioning.issue), kept a day (lockwise.core.retention).
CREATE TABLE pairing_issues (
    id          bigserial PRIMARY KEY,
    user_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 day'
);
CREATE INDEX pairing_issues_user ON pairing_issues (user_uid, expires_at);
CREATE INDEX pairing_issues_expiry ON pairing_issues (expires_at);

-- A lock's signed requests per minute, one counter row per lock and clock minute, raised atomically with the
-- request's nonce (lockwise.devices.lock_auth): a count of recent nonces let a parallel burst all see room and all
-- pass. No foreign key: a request of a lock deleted meanwhile must not fail on it; old rows go with the nonces.
CREATE TABLE lock_request_counts (
    lock_id  uuid NOT NULL,
    minute   timestamptz NOT NULL,
    n        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (lock_id, minute)
);
CREATE INDEX lock_request_counts_minute ON lock_request_counts (minute);
