-- When each user's voice data was last erased (DELETE /embed/enrollment, or their account found gone): an enrollment
-- that began before it stores nothing. One already computing its voiceprint when the deletion was answered (204)
-- stored it afterwards, and the account's deletion then left a voiceprint behind (attack run 14: 6 of 8 rounds).
CREATE TABLE voice_erasures (
    user_uid   text PRIMARY KEY REFERENCES users (uid) ON DELETE CASCADE,
    erased_at  timestamptz NOT NULL
);
