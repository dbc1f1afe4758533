-- Accounts deleted (or disabled) outside the app (the Firebase console, the Admin SDK): the relay's periodic flush
-- asks Firebase Auth whether each user's account still exists, the oldest checked first (lockwise.core.accounts). One
-- found gone is marked so: it leaves every lock it does not own, its voice data is erased (account_ended_at: done),
-- and no lock scores its voice again; a disabled one keeps everything but its voice is not scored while it is
-- disabled. Found again (made again with its uid): gone no more.
ALTER TABLE users ADD COLUMN account_checked_at timestamptz, ADD COLUMN account_gone_at timestamptz,
    ADD COLUMN account_ended_at timestamptz, ADD COLUMN account_disabled boolean NOT NULL DEFAULT false;
CREATE INDEX users_account_check_due ON users (account_checked_at NULLS FIRST);
CREATE INDEX users_account_to_end ON users (account_gone_at) WHERE account_gone_at IS NOT NULL AND account_ended_at IS NULL;
