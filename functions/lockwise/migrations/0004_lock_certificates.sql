-- Locks prove who they are to the broker with client certificates (lockwise.lock_certs), not passwords.
-- A credential's mqtt_username is its broker identity (the certificate's common name); new credentials have no
-- broker password. Credentials paired before this keep their password hash until their first certificate
-- (POST /devices/lock/certificate), after which it is cleared; the broker no longer accepts passwords at all.
ALTER TABLE lock_credentials ALTER COLUMN mqtt_password_hash DROP NOT NULL;
ALTER TABLE lock_credentials ADD COLUMN cert_serial text CHECK (cert_serial ~ '^[0-9a-f]{1,40}$');
ALTER TABLE lock_credentials ADD COLUMN cert_not_after timestamptz;
ALTER TABLE lock_credentials ADD CONSTRAINT lock_credentials_cert_complete
    CHECK ((cert_serial IS NULL) = (cert_not_after IS NULL));

-- The broker-accounts sidecar that listened for these is gone: the broker keeps nothing per lock.
DROP TRIGGER lock_credentials_notify ON lock_credentials;
DROP FUNCTION notify_credentials();
