-- Devices: pending invitations, lock request nonces (replay protection), and the Firestore mirror queue.

CREATE TABLE invitations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lock_id      uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    email        text NOT NULL CHECK (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
    role         text NOT NULL CHECK (role IN ('admin', 'member', 'guest')),
    access       jsonb NOT NULL DEFAULT '{}'::jsonb,
    invited_by   text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    CHECK (expires_at > created_at)
);
CREATE UNIQUE INDEX invitations_open ON invitations (lock_id, lower(email)) WHERE accepted_at IS NULL;
CREATE INDEX invitations_email_idx ON invitations (lower(email)) WHERE accepted_at IS NULL;

-- Nonces of signed lock requests seen within the accepted clock skew; a repeat is a replay.
CREATE TABLE lock_request_nonces (
    lock_id  uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    nonce    text NOT NULL CHECK (length(nonce) BETWEEN 16 AND 64),
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lock_id, nonce)
);
CREATE INDEX lock_request_nonces_seen_idx ON lock_request_nonces (seen_at);

-- Writes to Firestore, queued in the same transaction as the change they mirror; flushed after commit and retried
-- until Firestore takes them, so the app's view converges even across a Firestore outage.
CREATE TABLE firestore_outbox (
    id          bigserial PRIMARY KEY,
    doc_path    text NOT NULL CHECK (length(doc_path) BETWEEN 3 AND 500),
    op          text NOT NULL CHECK (op IN ('merge', 'set', 'delete', 'delete_collection')),
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);

-- Wake listeners (the relay, the broker account sync) when there is work; payloads are ids only (ASCII).
CREATE FUNCTION notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lockwise_commands', NEW.id::text);
    RETURN NEW;
END;
$$;
CREATE TRIGGER commands_notify AFTER INSERT ON commands FOR EACH ROW EXECUTE FUNCTION notify_command();

CREATE FUNCTION notify_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lockwise_credentials', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON lock_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION notify_credentials();
