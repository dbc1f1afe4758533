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

-- The lock CA's revocation list: every certificate of a credential that was revoked (the lock paired again) or
-- deleted (with its lock) before it expired. Kept by a trigger, so no code path that revokes can forget it; served
-- by GET /devices/lock-ca/crl until the certificate has expired anyway.
CREATE TABLE revoked_lock_certificates (
    serial      text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]{1,40}$'),
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    not_after   timestamptz NOT NULL
);
CREATE INDEX revoked_lock_certificates_live ON revoked_lock_certificates (not_after);

CREATE FUNCTION list_revoked_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.cert_serial IS NOT NULL AND OLD.revoked_at IS NULL THEN
            INSERT INTO revoked_lock_certificates (serial, not_after) VALUES (OLD.cert_serial, OLD.cert_not_after)
                ON CONFLICT DO NOTHING;
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL AND NEW.cert_serial IS NOT NULL THEN
        INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)
            VALUES (NEW.cert_serial, NEW.revoked_at, NEW.cert_not_after) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER lock_credentials_revoked AFTER UPDATE OF revoked_at OR DELETE ON lock_credentials
    FOR EACH ROW EXECUTE FUNCTION list_revoked_certificate();
