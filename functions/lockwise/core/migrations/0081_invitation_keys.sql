-- The idempotency key an invitation was sent with (POST /devices/locks/{id}/members with Idempotency-Key), kept
-- with it: a retry with the key is answered with the invitation it made, whatever became of it. Without one, an
-- invitation sent again after its invitee had declined it (its answer lost) asked them again (attack run 108's
-- leftover). NULL: sent without a key, or before this column.
ALTER TABLE invitations ADD COLUMN idempotency_key text;
