-- When an account was first found disabled (lockwise.core.accounts): a token issued after it says the account was
-- enabled again (Firebase issues none to a disabled account), and makes it the next account check's first. It was
-- judged from the last check, which every check of a still-disabled account moves on: a token issued within a
-- minute of one triggered nothing, and the account, enabled again, stayed refused until its hourly recheck (attack
-- run 27).
ALTER TABLE users ADD COLUMN account_disabled_at timestamptz;
UPDATE users SET account_disabled_at = account_checked_at WHERE account_disabled;
