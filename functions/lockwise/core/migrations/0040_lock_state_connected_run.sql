-- The newest broker run a lock's current connection was heard from on: the broker plugin (infra/broker/lockwise_acl.c) tags each
-- lock message with its run (the broker's start, microseconds on the broker's own clock), and the relay forwards it
-- with the event. The upkeep turns offline the locks shown online whose connection was made in an earlier run than
-- the broker's current one (lockwise.devices.broker_restarts.not_back_since): an order, not two clocks and a slack, so a
-- lock that connected just before a second crash is caught too (attack run 18). NULL: a connection heard of without a
-- run (a relay or broker plugin from before it), judged by connected_at as before.
ALTER TABLE lock_state ADD COLUMN connected_run bigint;
CREATE INDEX lock_state_online_connected_run_idx ON lock_state (connected_run) WHERE online;
