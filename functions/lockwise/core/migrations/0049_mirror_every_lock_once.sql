-- Every lock is mirrored again once by the relay's upkeep (100 locks a flush), so each has its first mirror since
-- 0046 soon after the deploy. A lock's first mirror with nothing recorded in mirrored_access writes every member's
-- access document and deletes every former member's, as every mirror did before (lockwise.devices.members
-- .mirror_access): with mirrored_access empty, a member removed by the first change after the deploy kept their
-- document, and with it the lock's live view, for good (attack run 33).
INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT id, now() FROM locks
    ON CONFLICT (lock_id) DO UPDATE SET due_at = LEAST(mirror_refresh_due.due_at, EXCLUDED.due_at);
