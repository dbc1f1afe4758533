-- Every lock with a guest whose window is read in a time zone (weekdays or hours of the day) is mirrored again once
-- by the relay's upkeep: zones now come from the pinned tzdata package alone (lockwise.core.zones), and the access
-- documents written before took the host's zone data, which has Vancouver and 13 other zones an hour off for the
-- coming years (attack run 80); the rules judged those guests by it until the lock's next window edge.
INSERT INTO mirror_refresh_due (lock_id, due_at)
    SELECT DISTINCT m.lock_id, now() FROM lock_members m
    WHERE m.role = 'guest' AND m.revoked_at IS NULL AND (m.weekdays IS NOT NULL OR m.day_start_minute IS NOT NULL)
    ON CONFLICT (lock_id) DO UPDATE SET due_at = LEAST(mirror_refresh_due.due_at, EXCLUDED.due_at);
