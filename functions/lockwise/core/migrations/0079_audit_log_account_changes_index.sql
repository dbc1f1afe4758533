-- lockwise: concurrent-index
-- The changes one account made at all the locks it manages in the last minute (lockwise.devices.changes.take, before
-- each of its changes, LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_MINUTE): the budget was a lock's alone, and an account
-- owns up to 100 locks (attack run 110: 30 changes a minute at each, 3,000 a minute, each an audit row and most a
-- rewrite of the lock's documents). Read through this index, the count reads only the account's own changes of
-- the minute, at most its budget. The actions are changes.COUNTED (a test checks that the two agree).
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_log_account_changes_idx ON audit_log (actor, at)
    WHERE action IN ('lock.update', 'lock.transfer_offer', 'member.invite', 'member.update', 'voice.reset_lockout')
    AND outcome = 'ok';
