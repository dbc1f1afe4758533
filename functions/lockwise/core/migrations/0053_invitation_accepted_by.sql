-- Who accepted an invitation. An acceptance sent again (its answer lost) is answered with the membership it made
-- (attack run 39), found by the account that accepted it: an invitation sent to an address was matched by the address
-- the caller holds now, so its acceptor, having moved to another address, was answered 404, and the address's new
-- holder, a member through another invitation of the same sender, was answered with that membership (attack run 40).
-- Nullable, without a default: added without rewriting the table; invitations accepted before it have none, and are
-- answered 404 when accepted again, as before.
ALTER TABLE invitations ADD COLUMN accepted_by text;
ALTER TABLE invitations
    ADD CONSTRAINT invitations_accepted_by_check CHECK (accepted_by IS NULL OR accepted_at IS NOT NULL) NOT VALID;
