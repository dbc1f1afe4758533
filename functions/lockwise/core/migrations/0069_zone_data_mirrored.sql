-- Which zone data (the pinned tzdata package's version) the live view's access documents were last mirrored with:
-- the devices function's upkeep, of a release whose data is newer, has every lock with a guest whose window is read
-- in a zone mirrored again, and records its own (lockwise.devices.members.mirror_for_zone_data); a second time a
-- while later (``passes``), over what instances of the release before mirrored during the deploy. The documents
-- written before zones came from the pinned data alone took the host's, which has Vancouver and 13 other zones an
-- hour off for the coming years (attack run 80); a pin moved on later moves windows too. Empty: none recorded yet.
CREATE TABLE zone_data_mirrored (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version      text NOT NULL,
    mirrored_at  timestamptz NOT NULL DEFAULT now(),
    passes       smallint NOT NULL DEFAULT 1 CHECK (passes IN (1, 2))
);
