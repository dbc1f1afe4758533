-- lockwise: concurrent-index
-- The refused attempts listed in no feed (migration 0077's refusal_listed false: past their lock's or owner's budget
-- of listed refusals), deleted by the relay's flush after lockwise.core.retention.UNLISTED_REFUSALS_KEPT_DAYS, not the
-- attempts log's 90 days: an account's 100 locks, made and paired for free, each posting junk at its 120 signed
-- requests a minute, kept 17M rows a day, 1.5 billion over 90 days (attack run 130). Read through this index, the
-- prune reads only those, the oldest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS verification_attempts_unlisted
    ON verification_attempts (created_at) WHERE NOT refusal_listed;
