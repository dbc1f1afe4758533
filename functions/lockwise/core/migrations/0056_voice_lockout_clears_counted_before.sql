-- The app unlock a lockout marker stands for: it clears the failures counted before it, as an acknowledgement that
-- did not wait does. Without it a marker cleared whatever it found when taken: one written in a relay batch that
-- committed late cleared the lockout that failures counted after the unlock, and after its acknowledgement, had
-- begun (attack run 43). Nullable: markers written before it (taken within seconds) clear as they did.
ALTER TABLE voice_lockout_clears ADD COLUMN counted_before timestamptz;
