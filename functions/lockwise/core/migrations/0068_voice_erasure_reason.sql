-- Why each user's voice data was last erased, for GET /embed/enrollment to tell the member who finds it gone:
-- 'requested' (DELETE /embed/enrollment), 'address_verified' (enrolled before the account's address was verified,
-- dropped when it was: migration 0067), 'account_gone' (the account found deleted). Erasures before it say nothing.
ALTER TABLE voice_erasures ADD COLUMN reason text CHECK (reason IN ('requested', 'address_verified', 'account_gone'));
