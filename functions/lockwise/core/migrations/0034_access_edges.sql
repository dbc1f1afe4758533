-- Access documents carry `in_window`, and each lock's mirror is due again at its members' next access edge (an
-- expiry, a guest's last day, a recurring window's start and end), so that an open listener is checked again there
-- (attack run 12: an expired member's and a guest's open listeners kept the lock's state and feed). Locks mirrored
-- before have neither until their members change: every lock is mirrored again by the relay's next upkeep, which
-- writes the field and sets each lock's next edge.
INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT id, now() FROM locks
    ON CONFLICT (lock_id) DO UPDATE SET due_at = LEAST(mirror_refresh_due.due_at, now());
