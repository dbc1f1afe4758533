-- When the user last left every lock (DELETE /devices/me, which the app calls before it deletes the account). A lock
-- made by a token issued before then, from the account's other phone as it was being deleted, was left owned by an
-- account nobody could sign in to again (attack run 14: both requests succeeded in 8 of 10 rounds). A token issued
-- later (the user signed in again: the account was kept) makes locks as before.
ALTER TABLE users ADD COLUMN left_at timestamptz;
