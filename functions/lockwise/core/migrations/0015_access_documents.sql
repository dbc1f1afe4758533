-- The members' access moved from a map on each lock document (which every member read: a guest learnt every other
-- member's expiry and window) to per-member documents the rules read (lockwise.devices.members.mirror_access).
-- Every lock is mirrored again by the relay's periodic flush, which writes them; until then the rules still read
-- the map (infra/firestore.rules, fromTheLockDocument), so no live view goes dark on the deploy.
INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT id, now() FROM locks
    ON CONFLICT (lock_id) DO UPDATE SET due_at = now();
