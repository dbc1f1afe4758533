-- Voice: the per-lock brute-force lockout (NIST SP 800-63B: throttle after repeated failures).

CREATE TABLE voice_lockouts (
    lock_id               uuid PRIMARY KEY REFERENCES locks (id) ON DELETE CASCADE,
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    locked_until          timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
