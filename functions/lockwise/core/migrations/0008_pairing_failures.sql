-- Failed pairing-code redemptions per client address and hour: after LOCKWISE_PAIRING_FAILURES_PER_HOUR of them an
-- address gets 429 until the hour turns (codes are about 120 bits; this is defence in depth). Rows older than a day
-- are pruned as new ones come.
CREATE TABLE pairing_failures (
    source        text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    hour          timestamptz NOT NULL,
    failures      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (source, hour)
);
CREATE INDEX pairing_failures_hour ON pairing_failures (hour);
