-- A mirror write Firestore refuses (400: an invalid document name or value) is set aside instead of retried first
-- forever: the flush takes the oldest rows first, so one such row froze every lock's live view (attack run: a uid
-- Firestore refuses as a document name). Set-aside rows stay here, with Firestore's answer in last_error, for an
-- operator (lockwise.core.mirror.Flusher).
ALTER TABLE firestore_outbox ADD COLUMN refused_at timestamptz;
CREATE INDEX firestore_outbox_waiting ON firestore_outbox (id) WHERE refused_at IS NULL;
