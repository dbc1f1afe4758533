-- When each command's row was written, on the database's clock. An app unlock's ack ends the voice failures counted
-- before the unlock was made; a failure's time is the database's (voice_lockouts.updated_at) and was compared with
-- the command's created_at, the devices instance's clock (signed into the command for the lock): an instance a
-- few seconds ahead ended a lockout begun after its unlock. Both sides are now the database's clock. Rows written
-- before this migration take its time, earlier than any failure counted after it.
ALTER TABLE commands ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT statement_timestamp();
