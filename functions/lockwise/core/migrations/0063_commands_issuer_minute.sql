-- An app member's commands of the last minute, counted over all their locks (LOCKWISE_APP_COMMANDS_PER_ACCOUNT_MINUTE:
-- per lock only, an account's 50 locks took 1,500 commands a minute, attack run 54): by issuer and time, which also
-- serves what the issuer's index alone served (withdrawing a removed member's unsent commands, ON DELETE SET NULL).
CREATE INDEX commands_issuer_created ON commands (issuer_uid, created_at) WHERE issuer_uid IS NOT NULL;
DROP INDEX commands_issuer;
