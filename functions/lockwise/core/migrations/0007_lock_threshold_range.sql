-- A lock's own voice threshold is a cosine in [0, 1]; a negative one (which opened the door to any voice) is
-- dropped back to the encoder's default. verify also never uses one below the encoder's floor (FMR 1 in 100).
UPDATE locks SET voice_threshold = NULL WHERE voice_threshold < 0;
ALTER TABLE locks DROP CONSTRAINT locks_voice_threshold_check;
ALTER TABLE locks ADD CONSTRAINT locks_voice_threshold_check
    CHECK (voice_threshold IS NULL OR voice_threshold BETWEEN 0 AND 1);
