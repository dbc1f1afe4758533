-- The relay's flush deletes ended commands, voice attempts and ended invitations once they are older than they are
-- kept (lockwise.core.retention): they were kept for as long as their lock (attack run 32: a member at one lock may
-- add 43,200 commands a day, a lock 172,800 attempts). These indexes let each flush find the oldest without reading
-- the tables whole. An invitation's end is the first of its acceptance, its closing and its expiry (LEAST passes over
-- NULLs).
CREATE INDEX commands_expires ON commands (expires_at);
CREATE INDEX verification_attempts_created ON verification_attempts (created_at);
CREATE INDEX invitations_ended ON invitations ((LEAST(expires_at, accepted_at, closed_at)));
