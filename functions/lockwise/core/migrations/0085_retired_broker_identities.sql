-- Broker identities no lock uses any more, whose retained messages the relay clears (mqtt_relay/retired.py): an
-- identity's presence stayed retained on lockwise/<identity>/status for good once its lock was paired again or
-- deleted, one per pairing, handed to every relay subscription anew after a broker restart and each posted to the
-- devices function and refused as an unknown or revoked lock (attack run 127's leftover, attack run 131). A
-- credential's identity is listed as it is revoked (the lock paired again) or deleted while live (with its lock),
-- by a trigger, so no path that revokes can forget it; and by the devices function when a lock topic's event comes
-- from an identity no live credential holds (a retained presence from before this, a will sent late). The relay
-- publishes an empty retained message to each of its topics and deletes the row once the broker acknowledged them:
-- a row outlives any relay's restart.
CREATE TABLE retired_broker_identities (
    identity   text PRIMARY KEY,
    retired_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retired_broker_identities_order ON retired_broker_identities (retired_at);

CREATE FUNCTION retire_broker_identity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'DELETE' AND OLD.revoked_at IS NULL)
            OR (TG_OP = 'UPDATE' AND NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL) THEN
        INSERT INTO retired_broker_identities (identity) VALUES (OLD.mqtt_username) ON CONFLICT DO NOTHING;
        PERFORM pg_notify('lockwise_commands', '');  -- wakes the relays' delivery loop, which clears them
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER lock_credentials_retired AFTER UPDATE OF revoked_at OR DELETE ON lock_credentials
    FOR EACH ROW EXECUTE FUNCTION retire_broker_identity();

-- the identities revoked before this that are still on record (those deleted are known again as their presence
-- comes in, above)
INSERT INTO retired_broker_identities (identity)
    SELECT mqtt_username FROM lock_credentials WHERE revoked_at IS NOT NULL ON CONFLICT DO NOTHING;
