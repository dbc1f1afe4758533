-- Users whose uid cannot be one Firestore document id ('/', '.', '..', '__name__', empty or over 1,500 bytes) were
-- recorded before ID tokens with such subjects were refused (lockwise.core.id_tokens): they can no longer sign in,
-- and their Firestore paths named other users' documents. Each is marked as an account found gone (audited as the
-- sweep audits one), so the relay's flush ends what it holds (memberships, invitations, voice data) as for an
-- account deleted outside the app. And a clean-up that failed is tried again after the others
-- (account_end_tried_at), not by moving the account's Firebase Auth recheck.
ALTER TABLE users ADD COLUMN account_end_tried_at timestamptz;
INSERT INTO audit_log (actor, action, outcome, target, details)
SELECT 'system:accounts', 'user.account_gone', 'ok', uid, '{"why": "uid_not_a_document_id"}'::jsonb FROM users
WHERE account_gone_at IS NULL
  AND (uid LIKE '%/%' OR uid IN ('', '.', '..') OR uid ~ '^__.*__$' OR octet_length(uid) > 1500);
UPDATE users SET account_gone_at = now(), account_checked_at = now()
WHERE account_gone_at IS NULL
  AND (uid LIKE '%/%' OR uid IN ('', '.', '..') OR uid ~ '^__.*__$' OR octet_length(uid) > 1500);
