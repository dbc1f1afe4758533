-- The broker identity a command was last published to. A command is sent again only to that identity: an unlock sent
-- to a lock's old device (which may have carried it out; its ack is refused once the identity is revoked) was sent
-- again to the device paired since, which opened the door a second time (attack runs 48 and 49: the pairing fails
-- the open commands, but one a relay held meanwhile, or one made by a clock ahead of the pairing's, slipped past a
-- comparison of times). Nullable, without a default: added without rewriting the table; a command sent before it
-- has none and is sent again as before.
ALTER TABLE commands ADD COLUMN sent_to text;
