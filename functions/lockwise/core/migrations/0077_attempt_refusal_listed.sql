-- Whether a refused attempt (one answered without the model) was listed in its lock's feed, or wrote the feed's
-- note that more came than it lists (lockwise.voice.verification.record_attempt). The budget of all the locks one
-- account owns counted every refused attempt at them, listed or not (attack run 110's): one door's junk, 61 clips
-- within its own request limit, spent it, and the refusals at the owner's other doors were listed nowhere (attack
-- run 111). It counts the listed ones now. NULL: not a refusal, or recorded before this column.
ALTER TABLE verification_attempts ADD COLUMN refusal_listed boolean;
