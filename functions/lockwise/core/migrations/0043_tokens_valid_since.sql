-- Sessions revoked outside the app (the Admin SDK's revokeRefreshTokens, a password changed or reset): Firebase Auth
-- records when (validSince), and a token signed in before it is revoked, but ID tokens are checked offline and
-- live up to an hour. The relay's account check (lockwise.core.accounts) keeps it here; app requests with a token
-- whose auth_time is earlier are refused (401 token_revoked: attack run 26).
ALTER TABLE users ADD COLUMN tokens_valid_since timestamptz;
