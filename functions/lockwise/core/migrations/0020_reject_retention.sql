-- Refused lock events were kept forever, every one: a paired lock publishing malformed messages in a loop added
-- 121,000 rows in a minute (attack run). Now each topic keeps at most 100 an hour (the rest are counted in the
-- relay's health, not stored: lockwise.devices.lock_events._park) and rows go after 30 days
-- (lockwise.core.retention).
ALTER TABLE lock_event_rejects ADD COLUMN expires_at timestamptz NOT NULL DEFAULT now() + interval '30 days';
UPDATE lock_event_rejects SET expires_at = received_at + interval '30 days';
CREATE INDEX lock_event_rejects_expiry ON lock_event_rejects (expires_at);
CREATE INDEX lock_event_rejects_topic ON lock_event_rejects (topic, received_at);
