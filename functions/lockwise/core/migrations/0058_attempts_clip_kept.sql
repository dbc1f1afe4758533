-- The attempts whose clip identity is still kept (migration 0052): the relay's upkeep clears it once no clip sent
-- again could be answered with it (LOCKWISE_VOICE_SENT_AGAIN_S, at most 600 s; it was kept with the attempt, 90
-- days: attack run 46). A partial index: it holds only the last minutes' attempts.
CREATE INDEX verification_attempts_clip_kept ON verification_attempts (created_at) WHERE clip_sha256 IS NOT NULL;
