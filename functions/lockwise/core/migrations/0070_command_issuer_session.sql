-- When the session that made an app command signed in (its token's auth_time): a command stands no longer than that
-- session, as a pairing code, an invitation or an ownership offer does (lockwise.core.users.vouches_sql). An unlock
-- tapped by a stolen phone a moment before its owner signed out everywhere was still sent once the revocation was
-- read, to a lock offline meanwhile (attack run 81). NULL for voice commands, and for commands made before it.
ALTER TABLE commands ADD COLUMN issuer_signed_in_at timestamptz;
