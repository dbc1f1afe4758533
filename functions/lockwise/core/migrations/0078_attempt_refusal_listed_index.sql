-- lockwise: concurrent-index
-- The refused attempts listed in the feeds of an owner's locks in the last minute (migration 0077), at most the
-- owner's budget: counted by each refused attempt, without reading the minute's unlisted ones (up to 12,000 for an
-- account's 100 locks: attack run 111).
CREATE INDEX CONCURRENTLY IF NOT EXISTS verification_attempts_refusal_listed
    ON verification_attempts (lock_id, created_at) WHERE refusal_listed;
