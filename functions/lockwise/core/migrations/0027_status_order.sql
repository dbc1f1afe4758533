-- The order of a lock's online/offline reports (lockwise.devices.lock_events._status): a lock that numbers its
-- connections ("online 17", and the last will "offline 17" set for that connection) has a report applied only when
-- it is newer than the last one applied, 2 x the connection's number + 1 for offline. Relay replicas share the
-- status topic's subscription and an abandoned session is drained late, so reports reach the function in either
-- order: an older "online" applied after a newer "offline" showed an offline lock online (attack runs). NULL: no
-- numbered report yet (plain "online"/"offline" are applied as they come).
ALTER TABLE lock_state ADD COLUMN status_order bigint;
