-- When a member was last removed from (or left) a lock, kept when they rejoin: revoked_at is cleared by a rejoin,
-- and an invitation sent before the removal stood again once the rejoined membership lapsed (an attack run's
-- removed member came back as an admin). lockwise.devices.invitations compares invitations with this.
ALTER TABLE lock_members ADD COLUMN last_removed_at timestamptz;
UPDATE lock_members SET last_removed_at = revoked_at WHERE revoked_at IS NOT NULL;

-- A lock's commands by time: the app's per-member minute budget and the relay's "a newer command exists" read the
-- last moments of one lock, not its whole history (commands are kept).
CREATE INDEX commands_lock_created ON commands (lock_id, created_at);
