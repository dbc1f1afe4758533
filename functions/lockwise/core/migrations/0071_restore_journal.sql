-- What a restore of this database to an earlier point would undo, kept where the restore does not reach: every
-- revocation (a lock's credential, a membership, a member's terms, a lock, an ownership handed on, an invitation
-- closed, a transfer offer closed) and every voice erasure writes a journal entry to Firestore (journal/{key}, through the mirror's
-- outbox: in the change's own transaction, written after it commits) and keeps its key here. After a restore,
-- lockwise.devices.restored does again each entry Firestore has and this table does not: restored to an hour ago,
-- the database had taken back that hour's re-pairings (the replaced device was the lock again, its certificate off
-- the revocation list), removals, withdrawn invitations, transfers and voice erasures (attack run 83).
-- A Firestore TTL policy on the journal group's expires_at deletes an entry 35 days on; its key is kept two more.
CREATE TABLE journal_entries (
    key         uuid PRIMARY KEY,
    at          timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX journal_entries_expiry ON journal_entries (expires_at);

-- The restores done again (lockwise.devices.restored), each run taking up where the one before stopped (its
-- cursors: the last standing document, journal entry and access document done) until done_at. A lock's signed
-- request dated before the latest fence is refused, its nonce perhaps among those the restore took back (one
-- captured in the minute before could be taken again), and every account checked before it is due a check.
CREATE TABLE database_restores (
    fenced_at       timestamptz PRIMARY KEY,
    journal_from    text NOT NULL,  -- the journal's entries are read from this time on (RFC 3339, UTC)
    standing_after  text,
    journal_after   text,
    access_after    text,
    done_at         timestamptz
);

CREATE FUNCTION journal(kind text, body jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    key uuid := gen_random_uuid();
    at timestamptz := clock_timestamp();
BEGIN
    INSERT INTO journal_entries (key, at, expires_at) VALUES (key, at, at + interval '37 days');
    INSERT INTO firestore_outbox (doc_path, op, data) VALUES (
        'journal/' || key::text,
        'set',
        body || jsonb_build_object(
            'kind', kind,
            'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'expires_at', jsonb_build_object(
                '__timestamp__', to_char((at + interval '35 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
            )
        )
    );
END;
$$;

-- A credential revoked or deleted while active (re-paired, the lock deleted), with every certificate it was issued
-- that has not expired: a device paired after the restore point is unknown to the restored database, its
-- certificates too, and they go on the revocation list from here.
CREATE FUNCTION journal_credential() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone lock_credentials;
BEGIN
    gone := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    PERFORM journal('credential_revoked', jsonb_build_object(
        'lock_id', gone.lock_id::text,
        'credential_id', gone.id::text,
        'certificates', coalesce((
            SELECT jsonb_agg(jsonb_build_object('serial', c.serial, 'not_after', c.expires_at))
            FROM lock_certificates c WHERE c.credential_id = gone.id AND c.expires_at > now()
        ), '[]'::jsonb)
    ));
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_credentials_journal_revoked AFTER UPDATE OF revoked_at ON lock_credentials
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL) EXECUTE FUNCTION journal_credential();
CREATE TRIGGER lock_credentials_journal_deleted AFTER DELETE ON lock_credentials
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL) EXECUTE FUNCTION journal_credential();

-- A membership ended before its time: removed, left, its account gone, its lock deleted.
CREATE FUNCTION journal_membership() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone lock_members;
BEGIN
    gone := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    PERFORM journal('membership_ended', jsonb_build_object(
        'lock_id', gone.lock_id::text, 'uid', gone.user_uid, 'role', gone.role
    ));
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_members_journal_ended AFTER UPDATE OF revoked_at ON lock_members
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL) EXECUTE FUNCTION journal_membership();
CREATE TRIGGER lock_members_journal_deleted AFTER DELETE ON lock_members
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND (OLD.expires_at IS NULL OR OLD.expires_at > now()))
    EXECUTE FUNCTION journal_membership();

-- A membership's terms changed while it stands: its role, window or expiry (a pause is an expiry in the past). The
-- terms it has now, which the restore would take back to wider ones. An owner's change is its lock's hand-over.
CREATE FUNCTION journal_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM journal('membership_changed', jsonb_build_object(
        'lock_id', NEW.lock_id::text, 'uid', NEW.user_uid, 'role', NEW.role, 'terms', jsonb_build_object(
            'valid_from', NEW.valid_from, 'valid_until', NEW.valid_until, 'weekdays', NEW.weekdays,
            'day_start_minute', NEW.day_start_minute, 'day_end_minute', NEW.day_end_minute,
            'timezone', NEW.timezone, 'expires_at', NEW.expires_at
        )
    ));
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_members_journal_terms
    AFTER UPDATE OF role, valid_from, valid_until, weekdays, day_start_minute, day_end_minute, timezone, expires_at
    ON lock_members FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NULL AND OLD.role <> 'owner' AND NEW.role <> 'owner'
          AND (OLD.role, OLD.valid_from, OLD.valid_until, OLD.weekdays, OLD.day_start_minute, OLD.day_end_minute,
               OLD.timezone, OLD.expires_at)
              IS DISTINCT FROM (NEW.role, NEW.valid_from, NEW.valid_until, NEW.weekdays, NEW.day_start_minute,
                                NEW.day_end_minute, NEW.timezone, NEW.expires_at))
    EXECUTE FUNCTION journal_terms();

-- A lock deleted, or handed to another owner.
CREATE FUNCTION journal_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM journal('lock_deleted', jsonb_build_object('lock_id', OLD.id::text, 'owner_uid', OLD.owner_uid));
    ELSE
        PERFORM journal('owner_changed', jsonb_build_object(
            'lock_id', NEW.id::text, 'from_uid', OLD.owner_uid, 'to_uid', NEW.owner_uid
        ));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER locks_journal_deleted AFTER DELETE ON locks FOR EACH ROW EXECUTE FUNCTION journal_lock();
CREATE TRIGGER locks_journal_owner AFTER UPDATE OF owner_uid ON locks
    FOR EACH ROW WHEN (OLD.owner_uid IS DISTINCT FROM NEW.owner_uid) EXECUTE FUNCTION journal_lock();

-- An invitation answered: withdrawn, declined, closed by a removal, or accepted (restored open, one accepted and
-- then removed took it again).
CREATE FUNCTION journal_invitation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM journal('invitation_closed', jsonb_build_object('invitation_id', NEW.id::text, 'lock_id', NEW.lock_id::text));
    RETURN NULL;
END;
$$;
CREATE TRIGGER invitations_journal_closed AFTER UPDATE OF closed_at, accepted_at ON invitations
    FOR EACH ROW WHEN (OLD.closed_at IS NULL AND OLD.accepted_at IS NULL
                       AND (NEW.closed_at IS NOT NULL OR NEW.accepted_at IS NOT NULL))
    EXECUTE FUNCTION journal_invitation();

-- A certificate issued to a credential (paired, renewed): a re-pairing revokes every certificate its credential was
-- issued, and one renewed after the restore point was not among those the restored database knew.
CREATE FUNCTION journal_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM journal('certificate_issued', jsonb_build_object(
        'credential_id', NEW.credential_id::text, 'serial', NEW.serial,
        'not_after', to_char(NEW.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ));
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_certificates_journal AFTER INSERT ON lock_certificates
    FOR EACH ROW EXECUTE FUNCTION journal_certificate();

-- A transfer offer withdrawn, declined or taken before it lapsed.
CREATE FUNCTION journal_offer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM journal('offer_closed', jsonb_build_object(
        'lock_id', OLD.lock_id::text, 'from_uid', OLD.from_uid, 'to_uid', OLD.to_uid,
        'offered_at', to_char(OLD.offered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ));
    RETURN NULL;
END;
$$;
CREATE TRIGGER lock_transfer_offers_journal_closed AFTER DELETE ON lock_transfer_offers
    FOR EACH ROW WHEN (OLD.expires_at > now()) EXECUTE FUNCTION journal_offer();

-- A user's voice erased (asked for, an address verified by another, the account gone): only an erasure that
-- removed one (its forgotten_at), so a loop of DELETE /embed/enrollment with nothing to erase writes nothing.
CREATE FUNCTION journal_voice_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM journal('voice_erased', jsonb_build_object('uid', NEW.user_uid, 'reason', NEW.reason));
    RETURN NULL;
END;
$$;
CREATE TRIGGER voice_erasures_journal_first AFTER INSERT ON voice_erasures
    FOR EACH ROW WHEN (NEW.forgotten_at IS NOT NULL) EXECUTE FUNCTION journal_voice_erasure();
CREATE TRIGGER voice_erasures_journal AFTER UPDATE OF forgotten_at ON voice_erasures
    FOR EACH ROW WHEN (NEW.forgotten_at IS DISTINCT FROM OLD.forgotten_at) EXECUTE FUNCTION journal_voice_erasure();
