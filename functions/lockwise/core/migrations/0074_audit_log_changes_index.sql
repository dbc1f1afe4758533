-- lockwise: concurrent-index
-- The changes one owner or admin made at one lock in the last day (lockwise.devices.changes.take, before each of
-- theirs): read through the lock's index alone, every audit row of the lock's day was read and filtered, every
-- member's commands among them (20,015 rows read to count 6: attack run 93). The actions are changes.COUNTED (a
-- test checks that the two agree).
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_log_changes_idx ON audit_log (lock_id, actor, at)
    WHERE action IN ('lock.update', 'lock.transfer_offer', 'member.invite', 'member.update', 'voice.reset_lockout')
    AND outcome = 'ok';
