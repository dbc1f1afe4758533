-- The Firestore mirror replaces whole fields (a lock's member access map loses the keys it no longer has), and
-- re-mirrors a lock's member access when a guest window's time zone changes its UTC offset.
ALTER TABLE firestore_outbox DROP CONSTRAINT firestore_outbox_op_check;
ALTER TABLE firestore_outbox ADD CONSTRAINT firestore_outbox_op_check
    CHECK (op IN ('merge', 'replace_fields', 'set', 'delete', 'delete_collection'));

CREATE TABLE mirror_refresh_due (
    lock_id  uuid PRIMARY KEY REFERENCES locks (id) ON DELETE CASCADE,
    due_at   timestamptz NOT NULL
);
CREATE INDEX mirror_refresh_due_at ON mirror_refresh_due (due_at);
