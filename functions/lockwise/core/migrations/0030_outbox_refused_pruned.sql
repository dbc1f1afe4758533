-- Mirror writes Firestore refused are kept 30 days for an operator, then pruned by the relay's periodic flush
-- (lockwise.core.retention): they were kept for ever, and an attack run's account made 300 in 2 s.
CREATE INDEX firestore_outbox_refused ON firestore_outbox (refused_at) WHERE refused_at IS NOT NULL;
