-- The best voiceprint's raw cosine beside its decision score. With a score cohort the score is normalised, and the
-- decision also wants the cosine at the encoder's floor (lockwise.voice.model.encoder.policy): a `below_threshold`
-- row whose score is over the threshold was refused by that floor, which only this column shows. Biometric-derived
-- like the scores: cleared with them when the voiceprint is deleted.
ALTER TABLE verification_attempts ADD COLUMN cosine real;
