-- The audit log was kept for good (attack run 54): a row for every command, credential and membership change, each
-- naming an account and a lock, for as long as the product runs, those of deleted accounts and locks too. Now a
-- row may be deleted once it is over a year old (the relay's prune deletes it after
-- lockwise.core.retention.AUDIT_KEPT_DAYS); a younger row stays append-only for every role and every statement,
-- and no row is ever updated or truncated.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.at < now() - interval '365 days' THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
