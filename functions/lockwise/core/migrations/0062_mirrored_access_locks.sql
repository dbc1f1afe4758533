-- The locks whose members' access has been recorded in mirrored_access (their first mirror since migration 0046 is
-- done). A lock with nothing recorded has every former member's access document ended once (0046 began empty: attack
-- run 33); a lock whose record was empty because nobody's access stands now (its owner's account disabled, nobody
-- else left) had that done again on every mirror, and with former members' documents now ended rather than deleted,
-- each was written again, one Firestore had deleted a day on was made again, and a deleted account's uid was kept
-- (attack run 51). No foreign key, as mirrored_access has none (0046); the lock's deletion deletes its row.
CREATE TABLE mirrored_access_locks (
    lock_id uuid PRIMARY KEY
);
INSERT INTO mirrored_access_locks SELECT DISTINCT lock_id FROM mirrored_access;
