-- A lock's reports past its feed's budget change its row, not its Firestore document (every report applied was a
-- write to that one document: a lock at the broker's pace made 1.73M a day, attack run 54); the row says so, and the
-- relay's upkeep writes the document once the budget's window is over (lockwise.devices.lock_events.mirror_behind).
-- A constant default: added without rewriting the table.
ALTER TABLE lock_state ADD COLUMN doc_behind boolean NOT NULL DEFAULT false;
CREATE INDEX lock_state_doc_behind ON lock_state (lock_id) WHERE doc_behind;
