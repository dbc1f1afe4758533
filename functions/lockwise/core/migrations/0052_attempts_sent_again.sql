-- A lock whose /verify answer never came (its Wi-Fi dropped, a timeout) sends the clip again, signed anew: it was
-- decided again, found a replay of itself (its fingerprint kept by the first decision), rejected, counted towards
-- the lockout and shown in the owner's feed as a playback attack, while the first had opened the door (attack run
-- 39). The decided attempt now keeps the SHA-256 of the clip it decided (its body as signed, content type and rate): the same clip from
-- the same lock within two minutes is answered with that decision, nothing counted or recorded again. A nullable
-- column without a default is added without rewriting the table, and its check NOT VALID without scanning it.
ALTER TABLE verification_attempts ADD COLUMN clip_sha256 bytea;
ALTER TABLE verification_attempts
    ADD CONSTRAINT verification_attempts_clip_sha256_check CHECK (clip_sha256 IS NULL OR length(clip_sha256) = 32)
    NOT VALID;
