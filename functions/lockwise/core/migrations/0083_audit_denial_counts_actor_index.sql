-- lockwise: concurrent-index
-- One actor's counts of refused requests in a minute (lockwise.core.audit.record_denied, before each refusal it counts):
-- they were counted and logged per actor, lock and action, and a guest at 200 locks refused at each of ten actions
-- wrote 20,000 audit rows and 2,000 counts a minute (attack run 130); counted per actor now, the minute's rows are
-- read through this index, at most DENIAL_COUNTS_PER_MINUTE + 1, never the actor's 400 days of them.
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_denial_counts_actor_minute ON audit_denial_counts (actor, minute);
