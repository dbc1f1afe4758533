-- Activity entries carry who reads them (audience, about: lockwise.core.mirror.activity_entry) and access documents
-- the member's role, so the rules give the whole feed to owners and admins only (a guest read every member's comings
-- and goings and who invited whom there, which the API shows admins only). Every lock is mirrored again by the
-- relay's periodic flush, writing the role into its access documents; until then the rules take its owner and
-- admins for members (the console falls back to a member's queries when the whole feed is refused). Entries written
-- before carry no audience: owners and admins read them, nobody else.
INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT id, now() FROM locks
    ON CONFLICT (lock_id) DO UPDATE SET due_at = now();
