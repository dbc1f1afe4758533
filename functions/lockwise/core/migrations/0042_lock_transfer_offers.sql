-- A lock changes hands only when the member it is offered to accepts (lockwise.devices.transfers): the owner's
-- transfer was carried out at once, without the new owner's consent, and charged them for a lock whose device the
-- giver kept (attack run 20). One standing offer per lock; it goes with the lock and with either account.
-- taker_row: the member's row as it was when the offer was made (row_to_json); an offer is taken only by that
-- membership, unchanged: removed and invited back, expired and invited back, demoted or given other terms, the
-- member takes nothing on it (a review and attack run 21 found each).
CREATE TABLE lock_transfer_offers (
    lock_id     uuid PRIMARY KEY REFERENCES locks (id) ON DELETE CASCADE,
    from_uid    text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    to_uid      text NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
    offered_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    taker_row   text NOT NULL,
    CHECK (from_uid <> to_uid)
);
CREATE INDEX lock_transfer_offers_from ON lock_transfer_offers (from_uid);
CREATE INDEX lock_transfer_offers_to ON lock_transfer_offers (to_uid);
CREATE INDEX lock_transfer_offers_expiry ON lock_transfer_offers (expires_at);  -- lapsed ones go (retention)
