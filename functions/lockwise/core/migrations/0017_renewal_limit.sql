-- A lock could renew its broker certificate in a loop: each renewal signs a certificate (CPU) and keeps a row here
-- until it expires (7 days), so one lock key could grow this table without bound (attack run: renewals were not
-- limited). When each certificate was issued is kept, and a credential gets at most LOCKWISE_LOCK_RENEWALS_PER_DAY
-- in any 24 hours (lockwise.devices.provisioning.renew; then 429 renewal_limit). Rows kept before this migration
-- count as issued now: a lock that renewed in the last day may wait up to a day for its next one.
ALTER TABLE lock_certificates ADD COLUMN issued_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX lock_certificates_issued ON lock_certificates (credential_id, issued_at);
