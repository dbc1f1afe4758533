-- When the devices function first heard of a lock's current connection, on its own clock (its "online <n>", a state
-- report naming a newer connection, or any report bringing it back online). A broker restart ends every connection,
-- and Mosquitto keeps no last will across a crash: the relay's upkeep turns offline the locks shown online whose
-- connection was heard of before the broker started (lockwise.devices.lock_events.not_back_since). Not last_seen: a
-- report the lock sent before the crash, forwarded after it, would have counted as heard from since (a review).
-- Rows online before this migration take their last_seen.
ALTER TABLE lock_state ADD COLUMN connected_at timestamptz;
UPDATE lock_state SET connected_at = last_seen WHERE online;
CREATE INDEX lock_state_online_connected_idx ON lock_state (connected_at) WHERE online;
