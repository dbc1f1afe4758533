-- A renewed certificate supersedes the one before it: the lock reconnects with the new one (the firmware contract),
-- so the previous one is listed in the lock CA's revocation list at once, as a revoked credential's is. Before, the
-- list held only a credential's last serial: certificates replaced by renewal stayed valid for up to 7 days after
-- the lock was re-paired or deleted, and a stolen lock key could mint spare ones (attack run).
CREATE OR REPLACE FUNCTION list_revoked_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.cert_serial IS NOT NULL AND OLD.revoked_at IS NULL THEN
            INSERT INTO revoked_lock_certificates (serial, not_after) VALUES (OLD.cert_serial, OLD.cert_not_after)
                ON CONFLICT DO NOTHING;
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.cert_serial IS NOT NULL AND NEW.cert_serial IS DISTINCT FROM OLD.cert_serial THEN
        INSERT INTO revoked_lock_certificates (serial, not_after) VALUES (OLD.cert_serial, OLD.cert_not_after)
            ON CONFLICT DO NOTHING;
    END IF;
    IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL AND NEW.cert_serial IS NOT NULL THEN
        INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)
            VALUES (NEW.cert_serial, NEW.revoked_at, NEW.cert_not_after) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER lock_credentials_revoked ON lock_credentials;
CREATE TRIGGER lock_credentials_revoked AFTER UPDATE OF revoked_at, cert_serial OR DELETE ON lock_credentials
    FOR EACH ROW EXECUTE FUNCTION list_revoked_certificate();
