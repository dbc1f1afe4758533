-- The keys of a lock's last state reports taken (its own time to the microsecond and the state;
-- lockwise.devices.lock_events.RECENT_REPORTS of them): a report that comes again (a relay restart redelivers what it
-- had not acknowledged) is known and listed in the feed once, a late one included, without a second entry, a wrong
-- `late` mark or a second charge on the feed budget.
ALTER TABLE lock_state ADD COLUMN recent_reports text[] NOT NULL DEFAULT '{}';
