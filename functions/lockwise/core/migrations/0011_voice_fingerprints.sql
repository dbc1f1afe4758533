-- Fingerprints of known recordings (lockwise.voice.fingerprint): hashes of spectral peak pairs of one take, never
-- audio, never mirrored to Firestore. Two kinds:
--  * an enrollment sample's: kept while its voiceprint is (replaced with it on re-enrollment, deleted with it);
--  * an attempt's at a lock: kept until expires_at (LOCKWISE_REPLAY_MEMORY_HOURS), deleted with the lock, with
--    the attempt, and with the voice data of the member an accepted attempt matched (speaker_uid).
CREATE TABLE voice_fingerprints (
    id           bigserial PRIMARY KEY,
    user_uid     text REFERENCES voiceprints (user_uid) ON DELETE CASCADE,
    lock_id      uuid REFERENCES locks (id) ON DELETE CASCADE,
    attempt_id   uuid REFERENCES verification_attempts (id) ON DELETE CASCADE,
    speaker_uid  text REFERENCES users (uid) ON DELETE CASCADE,
    landmarks    bytea NOT NULL CHECK (length(landmarks) % 8 = 0),
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_uid IS NULL) <> (lock_id IS NULL)),
    CHECK (lock_id IS NULL OR (attempt_id IS NOT NULL AND expires_at IS NOT NULL))
);
CREATE INDEX voice_fingerprints_user ON voice_fingerprints (user_uid) WHERE user_uid IS NOT NULL;
CREATE INDEX voice_fingerprints_lock ON voice_fingerprints (lock_id) WHERE lock_id IS NOT NULL;
CREATE INDEX voice_fingerprints_expiry ON voice_fingerprints (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX voice_fingerprints_speaker ON voice_fingerprints (speaker_uid) WHERE speaker_uid IS NOT NULL;
