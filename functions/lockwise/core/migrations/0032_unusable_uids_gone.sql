-- Users whose uid cannot be one Firestore document id ('/', '.', '..', '__name__', empty or over 1,500 bytes) were
-- recorded before ID tokens with such subjects were refused (lockwise.core.id_tokens): they can no longer sign in,
-- and their Firestore paths named other users' documents. Each is marked as an account found gone, so the relay's
-- flush ends what it holds (memberships, invitations, voice data) as for an account deleted outside the app.
UPDATE users SET account_gone_at = now(), account_checked_at = now()
WHERE account_gone_at IS NULL
  AND (uid LIKE '%/%' OR uid IN ('', '.', '..') OR uid ~ '^__.*__$' OR octet_length(uid) > 1500);
