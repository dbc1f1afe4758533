-- The access document last queued for each member (lockwise.devices.members.mirror_access), one row while it stands:
-- a row is made or changed with each write queued, and deleted with the document's deletion. Every membership change
-- rewrote every member's access document and deleted every former member's again, however long gone: N + F + 2
-- Firestore writes a change, F growing with every account ever removed (attack run 32: 88 writes for one PATCH at a
-- lock of 45 members and 41 former ones). Only what differs from these rows is written now. Empty at first: the next
-- mirror of each lock writes its members' documents once more (former members' were deleted by every mirror before).
-- No foreign keys: the rows are written under the lock's mirror lock, and a key check would take a share of member
-- and lock rows that requests hold for update while they wait for that same mirror lock. The lock's deletion deletes
-- its rows.
CREATE TABLE mirrored_access (
    lock_id  uuid NOT NULL,
    user_uid text NOT NULL,
    access   jsonb NOT NULL,
    PRIMARY KEY (lock_id, user_uid)
);
