-- The feed's budget of an owner's locks together (LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE): the reports listed in the
-- feeds of the locks an account owns in the window begun at window_start (lockwise.devices.lock_events). The budget
-- was a lock's alone (lock_state.feed_entries), and an account owns up to 100 locks, paired for free: 100 locks
-- reporting in a loop listed 3,000 entries a minute and wrote as many lock documents (attack run 110). A row an
-- owner, made by the first report listed at one of their locks; the users row is never deleted.
CREATE TABLE owner_feed_windows (
    owner_uid    text PRIMARY KEY REFERENCES users (uid),
    window_start timestamptz,
    entries      integer NOT NULL DEFAULT 0
);
