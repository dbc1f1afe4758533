-- lockwise: concurrent-index
-- One invitation per sender's idempotency key at a lock (migration 0081): two retries at once make one.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS invitations_sender_key
    ON invitations (lock_id, invited_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
