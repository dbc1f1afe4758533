-- What the relay published to a lock's device (first sendings and re-sends) since it was last heard from: past
-- mqtt_relay.outbox.UNANSWERED it publishes it nothing more until any event of the device comes (a lock gone with a
-- clean DISCONNECT is taken for online, and Mosquitto kept every message published into its away session: attack
-- run 54). Cleared by the events' batch (lockwise.devices.lock_events.heard_from) and by a re-pairing; a row only
-- once the relay sent the lock something.
CREATE TABLE lock_unanswered (
    lock_id uuid PRIMARY KEY REFERENCES locks (id) ON DELETE CASCADE,
    sent    integer NOT NULL CHECK (sent >= 0)
);
