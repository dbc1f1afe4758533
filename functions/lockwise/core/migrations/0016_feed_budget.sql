-- A lock's state and online/offline reports each added an entry to its Firestore activity feed: one lock reporting
-- in a loop (attack run: ~1,000 a second) filled its feed, the Firestore bill and the mirror's queue. Each lock now
-- gets at most a budget of such entries per window (LOCKWISE_FEED_REPORTS_PER_MINUTE, lockwise.devices.lock_events); past it
-- its reports still change its row and its document, and the next entry listed says how many were left out.
ALTER TABLE lock_state
    ADD COLUMN feed_window_start timestamptz,
    ADD COLUMN feed_entries      integer NOT NULL DEFAULT 0 CHECK (feed_entries >= 0),
    ADD COLUMN feed_unlisted     integer NOT NULL DEFAULT 0 CHECK (feed_unlisted >= 0);
