-- Who declined an invitation. A decline sent again (its answer lost, or sent twice at once) is answered as the first
-- was, found by the account that declined it: it was 404 "no such invitation", as for one never theirs, and an app
-- retrying a lost answer could not tell its decline had been taken. Nullable, without a default: added without
-- rewriting the table; invitations declined before it have none, and are answered 404 when declined again, as before.
ALTER TABLE invitations ADD COLUMN declined_by text;
ALTER TABLE invitations
    ADD CONSTRAINT invitations_declined_by_check CHECK (declined_by IS NULL OR closed_at IS NOT NULL) NOT VALID;
