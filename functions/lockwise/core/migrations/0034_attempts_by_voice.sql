-- A voice's accepted attempts of the last minute, over every lock (lockwise.devices.lockout.budgets: one enrolled
-- voice made a member of many accounts' locks is budgeted as a voice, not per lock). Led by the foreign key's
-- column, so it replaces that key's own index (0026).
CREATE INDEX verification_attempts_matched_at ON verification_attempts (matched_uid, created_at)
    WHERE matched_uid IS NOT NULL;
DROP INDEX verification_attempts_matched;
