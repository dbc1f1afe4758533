-- Every certificate a lock credential was issued is revoked with it. The revocation list held only a credential's
-- last serial, so certificates replaced by renewal stayed valid for up to 7 days after the lock was re-paired or
-- deleted, and a stolen lock key could mint spares that outlived the re-pairing (attack run). Each issued serial is
-- now kept (until it expires) beside its credential, and revoking or deleting the credential lists all of them that
-- have not expired. A renewal alone lists nothing: the list grows with revocations, not with the fleet (listing
-- each renewed-away certificate would put about one entry per lock in it, fetched by the broker every minute).
CREATE TABLE lock_certificates (
    serial         text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]{1,40}$'),
    credential_id  uuid NOT NULL,  -- no foreign key: the credential's delete trigger reads these rows
    expires_at     timestamptz NOT NULL  -- the certificate's notAfter; pruned after it (lockwise.core.retention)
);
CREATE INDEX lock_certificates_credential ON lock_certificates (credential_id);
CREATE INDEX lock_certificates_expiry ON lock_certificates (expires_at);
INSERT INTO lock_certificates (serial, credential_id, expires_at)
    SELECT cert_serial, id, cert_not_after FROM lock_credentials
    WHERE cert_serial IS NOT NULL AND cert_not_after > now() ON CONFLICT DO NOTHING;

CREATE FUNCTION keep_issued_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.cert_serial IS NOT DISTINCT FROM OLD.cert_serial THEN
            RETURN NEW;
        END IF;
    END IF;
    IF NEW.cert_serial IS NOT NULL THEN
        INSERT INTO lock_certificates (serial, credential_id, expires_at)
            VALUES (NEW.cert_serial, NEW.id, NEW.cert_not_after) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER lock_credentials_issued AFTER INSERT OR UPDATE OF cert_serial ON lock_credentials
    FOR EACH ROW EXECUTE FUNCTION keep_issued_certificate();

CREATE OR REPLACE FUNCTION list_revoked_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone lock_credentials;
BEGIN
    IF TG_OP = 'DELETE' THEN
        gone := OLD;
    ELSIF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        gone := NEW;
    ELSE
        RETURN NEW;
    END IF;
    -- every unexpired certificate it was issued (a credential revoked before its delete: listed then, a no-op now)
    INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)
        SELECT serial, coalesce(gone.revoked_at, now()), expires_at FROM lock_certificates
        WHERE credential_id = gone.id AND expires_at > now() ON CONFLICT DO NOTHING;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM lock_certificates WHERE credential_id = OLD.id;
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;
