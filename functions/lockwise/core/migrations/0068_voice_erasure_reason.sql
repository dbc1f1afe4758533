-- Why, and when, each user's voice was last forgotten, for GET /embed/enrollment to tell the member who finds it
-- gone: 'requested' (DELETE /embed/enrollment), 'address_verified' (enrolled before the account's address was
-- verified, dropped when it was: migration 0067), 'account_gone' (the account found deleted). Written when an
-- erasure removed a voiceprint; one that found none (erased_at still moves: it fences an enrollment under way) leaves
-- them as they were. Erasures before it say nothing.
ALTER TABLE voice_erasures
    ADD COLUMN reason text CHECK (reason IN ('requested', 'address_verified', 'account_gone')),
    ADD COLUMN forgotten_at timestamptz;
