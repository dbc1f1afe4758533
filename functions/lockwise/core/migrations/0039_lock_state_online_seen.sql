-- The locks shown online, by when they were last heard from: after a broker restart, the relay's upkeep turns those
-- not heard from since the broker started to offline (lockwise.devices.lock_events.not_back_since; Mosquitto keeps
-- no last will across a restart, so a lock that did not come back was shown online until it did).
CREATE INDEX lock_state_online_seen_idx ON lock_state (last_seen) WHERE online;
