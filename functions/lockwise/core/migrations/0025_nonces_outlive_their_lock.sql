-- A signed request's nonce is recorded before the request's work, in a statement of its own: a lock deleted just
-- before it failed the foreign key (a 500 where the deleted lock answers 401). As the minute's counts (0022), the
-- nonces need no foreign key: they only refuse a replay, and old ones are pruned by age (lockwise.devices.lock_auth).
ALTER TABLE lock_request_nonces DROP CONSTRAINT lock_request_nonces_lock_id_fkey;
