-- Pairing attempts per client address, one row each (a wrong code's stays; any other outcome deletes its row): an
-- address gets 429 once LOCKWISE_PAIRING_FAILURES_PER_HOUR of them fall within the last hour. Counted per clock hour
-- (pairing_failures), 40 passed in seconds across the hour's turn; counted as this hour's and a share of the last
-- (a sliding-window counter), up to 39 fell within one 60 minutes (attack run 45). Pruned a day on by the relay's
-- upkeep. Nothing writes pairing_failures any more; its rows are pruned as before.
CREATE TABLE pairing_attempts (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source  text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pairing_attempts_source_at ON pairing_attempts (source, at);
CREATE INDEX pairing_attempts_at ON pairing_attempts (at);
