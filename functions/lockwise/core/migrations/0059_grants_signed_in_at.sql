-- When the session that made a grant signed in (its token's auth_time): a pairing code, an invitation, an ownership
-- offer. What an account gave stands no longer than the hand that gave it: not once the account is found deleted or
-- disabled, nor once the sessions signed in before users.tokens_valid_since were revoked (a thief with the owner's
-- phone asked for a pairing code, invited their own account and offered the lock to it, and each still worked after
-- the account was disabled, deleted or signed out everywhere: attack run 47). Nullable, without a default: added
-- without rewriting the tables; a grant made before it has none, and falls only with its account.
ALTER TABLE provisioning_codes ADD COLUMN issuer_signed_in_at timestamptz;
ALTER TABLE invitations ADD COLUMN issuer_signed_in_at timestamptz;
ALTER TABLE lock_transfer_offers ADD COLUMN issuer_signed_in_at timestamptz;
