-- When the address a user row holds was vouched for: the issue time of the ID token that recorded it. A token keeps
-- the address it was issued with for up to an hour after its account moved to another; one of an account that had
-- moved, seen by an instance for the first time, recorded the old address again and took it from the account that
-- holds it now. An address is now replaced, or taken from another row, only by a token issued no earlier than the
-- one that recorded it. Rows recorded before have none and yield to any token.
ALTER TABLE users ADD COLUMN email_since timestamptz;
