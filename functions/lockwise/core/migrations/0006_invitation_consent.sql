-- Consent before access: every membership starts as an invitation its invitee accepts in the app. An invitation is
-- addressed to a verified email or to a uid (the add-by-uid of old, now asked rather than imposed), and may be
-- declined or withdrawn. Nobody's voiceprint is scored at a lock they have not accepted.
ALTER TABLE invitations ALTER COLUMN email DROP NOT NULL;
ALTER TABLE invitations ADD COLUMN invitee_uid text CHECK (length(invitee_uid) BETWEEN 1 AND 128);
ALTER TABLE invitations ADD COLUMN closed_at timestamptz;  -- declined by the invitee or withdrawn by an admin
ALTER TABLE invitations ADD CONSTRAINT invitations_one_invitee CHECK ((email IS NULL) <> (invitee_uid IS NULL));

DROP INDEX invitations_open;
DROP INDEX invitations_email_idx;
CREATE UNIQUE INDEX invitations_open_email ON invitations (lock_id, lower(email))
    WHERE accepted_at IS NULL AND closed_at IS NULL AND email IS NOT NULL;
CREATE UNIQUE INDEX invitations_open_uid ON invitations (lock_id, invitee_uid)
    WHERE accepted_at IS NULL AND closed_at IS NULL AND invitee_uid IS NOT NULL;
CREATE INDEX invitations_email_idx ON invitations (lower(email)) WHERE accepted_at IS NULL AND closed_at IS NULL;
CREATE INDEX invitations_uid_idx ON invitations (invitee_uid) WHERE accepted_at IS NULL AND closed_at IS NULL;
