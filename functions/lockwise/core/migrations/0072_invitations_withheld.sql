-- An invitation sent to a member's address, withheld when the member leaves or is removed: it stands for nobody (a
-- removed member came back through one with a new account holding the address), and it is listed to the lock's owner
-- and admins as waiting, as before, until it expires or is withdrawn. Closed instead, the one invitation that closed
-- with the membership told the admins, who are shown members' uids and never their addresses, which of the
-- addresses they had invited was the member's (attack run 86). NULL: it stands.
ALTER TABLE invitations ADD COLUMN withheld_at timestamptz;
-- The account that held the invitation's address, verified, when it was sent (users.email then): its removal
-- withholds the invitation wherever its address has moved since (attack run 87: a member moved their account to
-- another address, was removed, and a second account made with the first accepted an admin invitation sent to it).
ALTER TABLE invitations ADD COLUMN held_by text;
