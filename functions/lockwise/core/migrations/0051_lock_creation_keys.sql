-- A lock created by an app whose answer was lost (a phone changing networks, a 503 before a COMMIT's answer was
-- looked up) was made again by the app's retry: the owner found two locks of the same name, one never paired. A
-- create may now carry an idempotency key: the lock it made is kept beside the key, its creator's, for as long as
-- the lock exists, and a retry with the same key is answered with that lock (and a new pairing code) instead of a
-- second lock. The key's request is kept too (name, supports_open): the same key for another lock is refused.
CREATE TABLE lock_creation_keys (
    created_by       text NOT NULL REFERENCES users (uid),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    lock_id          uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    supports_open    boolean NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (created_by, idempotency_key)
);
CREATE UNIQUE INDEX lock_creation_keys_lock ON lock_creation_keys (lock_id);
