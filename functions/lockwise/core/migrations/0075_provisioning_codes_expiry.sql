-- lockwise: concurrent-index
-- The relay's flush deletes pairing codes once they have ended (lockwise.core.retention): each was kept as long as
-- its lock, used, replaced or expired (attack run 102: an owner may be given 50 a day). This index lets each flush
-- find the ended ones without reading the table whole.
CREATE INDEX CONCURRENTLY IF NOT EXISTS provisioning_codes_expiry ON provisioning_codes (expires_at);
