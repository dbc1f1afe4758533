-- Lock events the devices function refused (malformed, oversized, unknown or revoked identity, or refused by the
-- database): kept for an operator, with a printable excerpt, and never retried. A refused event never holds up
-- another one (lockwise.lock_events.apply_batch).
CREATE TABLE lock_event_rejects (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    topic            text,
    reason           text NOT NULL,
    payload_excerpt  text NOT NULL,
    payload_chars    integer
);
CREATE INDEX lock_event_rejects_received ON lock_event_rejects (received_at);
