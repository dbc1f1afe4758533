-- An app whose PUT /embed/enrollment answer never came (its network dropped, a timeout) sends the same samples
-- again: they were enrolled again, counted a second time towards the day's enrollments and the day's comparisons
-- with co-members' voices (five a day), and stored again, after the co-members enrolled since. The voiceprint now
-- keeps which samples it was made from (a SHA-256 of them bound to the voiceprint: ``voiceprints.made_from``): the
-- same samples sent again are answered with the voiceprint as stored, nothing compared, counted or stored again. A
-- nullable column without a default is added without rewriting the table, and its check NOT VALID without scanning
-- it.
ALTER TABLE voiceprints ADD COLUMN samples_sha256 bytea;
ALTER TABLE voiceprints
    ADD CONSTRAINT voiceprints_samples_sha256_check CHECK (samples_sha256 IS NULL OR length(samples_sha256) = 32)
    NOT VALID;
