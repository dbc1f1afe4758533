-- Accounts deleted outside the app (the Firebase console, the Admin SDK): the relay's periodic flush asks Firebase
-- Auth whether each user's account still exists, the oldest checked first (lockwise.core.accounts), and one found
-- gone is marked so: it leaves every lock it does not own, and no lock scores its voice again.
ALTER TABLE users ADD COLUMN account_checked_at timestamptz, ADD COLUMN account_gone_at timestamptz;
CREATE INDEX users_account_check_due ON users (account_checked_at NULLS FIRST) WHERE account_gone_at IS NULL;
CREATE INDEX users_account_gone ON users (account_gone_at) WHERE account_gone_at IS NOT NULL;
