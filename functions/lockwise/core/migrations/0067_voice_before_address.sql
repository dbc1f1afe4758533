-- A voice enrolled by a token without a verified address (anyone can sign up with anyone's address) is dropped the
-- first time the account's address is verified (lockwise.core.users.upsert). Firebase keeps the uid when the
-- address's owner takes such an account over (a Google sign-in, a password reset), so a voice an attacker enrolled
-- on an account made in advance with the owner's address opened the owner's doors (attack run 73).
-- users.address_verified_at: when a token first showed the account's address verified. From then on a token without
-- a verified address (one issued before, valid up to an hour) enrolls nothing, and a voiceprint stored without one
-- is no candidate at any door (a review: the attacker's old token enrolled again after the drop).
-- Constant defaults: added without rewriting the tables; voiceprints enrolled before it count as verified.
ALTER TABLE voiceprints ADD COLUMN address_unverified boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN address_verified_at timestamptz;
