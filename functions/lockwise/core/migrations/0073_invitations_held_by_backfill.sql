-- Invitations sent to an address before 0072 have no held_by: a member who moved their account to another address
-- and was then removed left them open, answerable by a second account made with the address (attack run 87). The
-- account holding the address now stands for the one that held it when it was sent, the best this database knows
-- (one who held it then and has moved since is not known; one who took it since is withheld from as its holder
-- anyway while they hold it). Only the invitations still open: a closed or accepted one is answered by nobody.
UPDATE invitations i SET held_by = u.uid
FROM users u
WHERE i.held_by IS NULL AND i.invitee_uid IS NULL AND i.accepted_at IS NULL AND i.closed_at IS NULL
    AND u.email IS NOT NULL AND lower(u.email) = lower(i.email);
