-- Every foreign key gets an index led by its columns (NULLs left out where most rows have none): deleting a lock, an
-- attempt or a user looks up the rows that refer to it, and without one each lookup read the whole table. A review
-- measured a lock with 1,500 attempts among 100,000 commands: its deletion took 24.6 s (each attempt's ON DELETE SET
-- NULL scanned every command), past the request path's 4 s statement limit, so that lock could never be deleted;
-- 0.06 s with these. tests/integration/test_migrations.py checks that no foreign key is left without one.
CREATE INDEX commands_lock ON commands (lock_id);
CREATE INDEX commands_attempt ON commands (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX commands_issuer ON commands (issuer_uid) WHERE issuer_uid IS NOT NULL;
CREATE INDEX invitations_lock ON invitations (lock_id);
CREATE INDEX invitations_invited_by ON invitations (invited_by);
CREATE INDEX lock_credentials_lock ON lock_credentials (lock_id);
CREATE INDEX lock_members_invited_by ON lock_members (invited_by) WHERE invited_by IS NOT NULL;
CREATE INDEX provisioning_codes_lock ON provisioning_codes (lock_id);
CREATE INDEX provisioning_codes_created_by ON provisioning_codes (created_by);
CREATE INDEX verification_attempts_matched ON verification_attempts (matched_uid) WHERE matched_uid IS NOT NULL;
CREATE INDEX verify_follow_ups_lock ON verify_follow_ups (lock_id);
CREATE INDEX voice_fingerprints_attempt ON voice_fingerprints (attempt_id) WHERE attempt_id IS NOT NULL;
