-- The name of the shared-subscription group the relay replicas receive lock events through. Mosquitto's ACL file
-- grants any subscription (it checks read access only as it delivers), so a lock that could name the group would
-- be handed a share of every lock's events, each then dropped (attack run: 8 of a victim's 10 reports lost). The
-- name is random (122 bits), made once here, and read by the relays from PostgreSQL, which no lock reaches; it does
-- not change with the relays' certificates.
CREATE TABLE relay_share_group (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    name      text NOT NULL DEFAULT 'lockwise-relay-' || replace(gen_random_uuid()::text, '-', '')
              CHECK (name ~ '^lockwise-relay-[0-9a-f]{32}$')
);
INSERT INTO relay_share_group DEFAULT VALUES;

-- Pairing refuses a signing key another lock's live credential holds (lockwise.devices.provisioning): looked up here.
CREATE INDEX lock_credentials_live_signing_key ON lock_credentials (signing_public_key) WHERE revoked_at IS NULL;
