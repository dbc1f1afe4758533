-- When a member's commands to the lock were last withdrawn (their removal, or their role or access narrowed): a
-- command made before it is never published again, also one the relay had claimed but not published when the
-- change committed (the withdrawal passes over claimed rows rather than wait for them: an attack run saw a guest's
-- unlock, made before their window moved to tomorrow, published the round after). lockwise.devices.commands and
-- mqtt_relay.outbox read it.
ALTER TABLE lock_members ADD COLUMN commands_withdrawn_before timestamptz;
