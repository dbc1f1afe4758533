-- The lock's credential (its paired device) a command was made for: the device whose voice decision made it, or
-- the one the lock held when a member sent it from the app. The relay sends a command only to that credential's
-- identity, and fails it once the lock was paired again: an unlock a relay held unpublished while the lock was paired
-- again (the pairing's "fail the open commands" passes over rows a relay holds) had no sent_to yet, and went to the
-- new device (attack run 51: a voice the replaced device heard opened the door through the new one). No foreign key:
-- credentials go only with their lock, as its commands do, and an insert holds no lock on the credential's row.
-- Nullable, without a default: added without rewriting the table; a command made before it is judged by sent_to.
ALTER TABLE commands ADD COLUMN made_for uuid;
