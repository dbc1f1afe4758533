-- LockWise core schema: people, locks, membership, credentials, voiceprints, attempts, commands, audit.
-- Rules that keep a door safe live here as constraints, not only in Python.

CREATE TABLE users (
    uid         text PRIMARY KEY CHECK (length(uid) BETWEEN 1 AND 128),
    email       text CHECK (email IS NULL OR (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1)),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE locks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    owner_uid        text NOT NULL REFERENCES users (uid),
    supports_open    boolean NOT NULL DEFAULT false,
    -- per-lock voice threshold override; NULL means the encoder's calibrated default
    voice_threshold  real CHECK (voice_threshold IS NULL OR voice_threshold BETWEEN -1 AND 1),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX locks_owner_idx ON locks (owner_uid);

CREATE TABLE lock_members (
    lock_id           uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    user_uid          text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    role              text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    -- guest access window: absolute bounds, weekdays (bit 0 = Monday) and minutes of the day in `timezone`
    valid_from        timestamptz,
    valid_until       timestamptz,
    weekdays          smallint CHECK (weekdays IS NULL OR weekdays BETWEEN 1 AND 127),
    day_start_minute  smallint CHECK (day_start_minute IS NULL OR day_start_minute BETWEEN 0 AND 1439),
    day_end_minute    smallint CHECK (day_end_minute IS NULL OR day_end_minute BETWEEN 1 AND 1440),
    timezone          text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    expires_at        timestamptz,
    revoked_at        timestamptz,
    invited_by        text REFERENCES users (uid) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lock_id, user_uid),
    CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from),
    CHECK ((day_start_minute IS NULL) = (day_end_minute IS NULL)),
    CHECK (role = 'guest' OR (valid_from IS NULL AND valid_until IS NULL AND weekdays IS NULL
                              AND day_start_minute IS NULL)),
    CHECK (role <> 'owner' OR (expires_at IS NULL AND revoked_at IS NULL))
);
CREATE UNIQUE INDEX lock_members_one_owner ON lock_members (lock_id) WHERE role = 'owner';
CREATE INDEX lock_members_user_idx ON lock_members (user_uid);

-- A lock's own credentials. Only verifiers are stored: the broker password as a PBKDF2 hash and the public half
-- of the request-signing key the lock generated, so a dump of this table lets nobody impersonate a lock.
CREATE TABLE lock_credentials (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lock_id             uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    mqtt_username       text NOT NULL CHECK (mqtt_username ~ '^[A-Za-z0-9_-]{8,64}$'),
    mqtt_password_hash  text NOT NULL CHECK (mqtt_password_hash LIKE '$7$%'),
    signing_public_key  bytea NOT NULL CHECK (length(signing_public_key) = 32),
    created_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz
);
CREATE UNIQUE INDEX lock_credentials_one_active ON lock_credentials (lock_id) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX lock_credentials_username_active ON lock_credentials (mqtt_username) WHERE revoked_at IS NULL;

-- One-time provisioning codes; only a hash of the code is kept.
CREATE TABLE provisioning_codes (
    code_hash    bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    lock_id      uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    created_by   text NOT NULL REFERENCES users (uid),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    redeemed_at  timestamptz,
    CHECK (expires_at > created_at)
);

-- A user's voiceprint: the normalised mean and the sample embeddings (float32 little-endian), tagged with the
-- identity of the model that made them. Re-enrollment replaces the row.
CREATE TABLE voiceprints (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_uid           text NOT NULL UNIQUE REFERENCES users (uid) ON DELETE CASCADE,
    model_id           text NOT NULL CHECK (length(model_id) BETWEEN 1 AND 200),
    dim                integer NOT NULL CHECK (dim BETWEEN 1 AND 4096),
    embedding          bytea NOT NULL,
    sample_count       smallint NOT NULL CHECK (sample_count BETWEEN 1 AND 20),
    sample_embeddings  bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (length(embedding) = 4 * dim),
    CHECK (length(sample_embeddings) = 4 * dim * sample_count)
);

CREATE TABLE verification_attempts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lock_id          uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    outcome          text NOT NULL CHECK (outcome IN ('accepted', 'rejected', 'refused', 'invalid')),
    reason           text CHECK (reason IS NULL OR length(reason) <= 200),
    matched_uid      text REFERENCES users (uid) ON DELETE SET NULL,
    score            real,
    runner_up_score  real,
    threshold        real,
    model_id         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (outcome <> 'accepted' OR matched_uid IS NOT NULL)
);
CREATE INDEX verification_attempts_lock_idx ON verification_attempts (lock_id, created_at DESC);

-- The commands outbox: the relay claims pending rows and delivers them to the lock.
CREATE TABLE commands (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lock_id          uuid NOT NULL REFERENCES locks (id) ON DELETE CASCADE,
    action           text NOT NULL CHECK (action IN ('lock', 'unlock', 'open')),
    issuer_kind      text NOT NULL CHECK (issuer_kind IN ('user', 'voice')),
    issuer_uid       text REFERENCES users (uid) ON DELETE SET NULL,
    attempt_id       uuid REFERENCES verification_attempts (id) ON DELETE SET NULL,
    idempotency_key  text CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 128),
    nonce            text NOT NULL UNIQUE CHECK (length(nonce) BETWEEN 16 AND 64),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'acked', 'failed', 'expired')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    acked_at         timestamptz,
    send_count       integer NOT NULL DEFAULT 0 CHECK (send_count >= 0),
    last_error       text,
    -- what the lock receives: canonical JSON signed by the server's Ed25519 key (the relay holds no key)
    payload          text NOT NULL,
    CHECK (expires_at > created_at),
    CHECK (issuer_kind <> 'voice' OR attempt_id IS NOT NULL OR status <> 'pending'),
    CHECK (status <> 'acked' OR acked_at IS NOT NULL)
);
CREATE UNIQUE INDEX commands_idempotency ON commands (lock_id, issuer_uid, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_open_idx ON commands (created_at) WHERE status IN ('pending', 'sent');

CREATE TABLE lock_state (
    lock_id      uuid PRIMARY KEY REFERENCES locks (id) ON DELETE CASCADE,
    state        text NOT NULL DEFAULT 'unknown'
                 CHECK (state IN ('locked', 'unlocked', 'locking', 'unlocking', 'jammed', 'unknown')),
    battery_pct  smallint CHECK (battery_pct IS NULL OR battery_pct BETWEEN 0 AND 100),
    online       boolean NOT NULL DEFAULT false,
    firmware     text CHECK (firmware IS NULL OR length(firmware) <= 64),
    last_seen    timestamptz,
    -- the lock's own timestamp of the report applied last; older (redelivered) reports are ignored
    reported_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Append-only audit log. lock_id carries no foreign key: the record outlives the lock.
CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action   text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    lock_id  uuid,
    target   text,
    outcome  text NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    details  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_lock_idx ON audit_log (lock_id, at DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
