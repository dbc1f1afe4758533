-- Whose voiceprints an attempt was scored closest to: the best candidate and the runner-up, whatever the outcome.
-- An accepted attempt names who opened the door in matched_uid; a rejected one named nobody, so deleting a person's
-- voice data left the scores and cosines of the attempts scored against their voiceprint, and the fingerprint of a
-- "say it again" utterance (their own voice, just under the threshold) for the replay memory's 7 days (attack run
-- 20). These columns are read by that erasure only (lockwise.core.erasure.forget_voice): never mirrored, never in an
-- answer; it clears them with the scores. No foreign key: a rejection takes no lock on anyone's user row.
ALTER TABLE verification_attempts ADD COLUMN best_uid text, ADD COLUMN runner_up_uid text;
CREATE INDEX verification_attempts_best_uid ON verification_attempts (best_uid) WHERE best_uid IS NOT NULL;
CREATE INDEX verification_attempts_runner_up_uid ON verification_attempts (runner_up_uid)
    WHERE runner_up_uid IS NOT NULL;
