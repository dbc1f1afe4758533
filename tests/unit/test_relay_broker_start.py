"""The broker's uptime as the relay reads it from Mosquitto's ``$SYS/broker/uptime`` (``mqtt_relay.broker_start``;
``tests/e2e/test_relay.py`` restarts the real broker)."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_relay.broker_start import RUN_PROPERTY, BrokerStart, run_of


def test_the_uptime_is_read_from_live_publishes_and_dates_the_start_earliest() -> None:
    """A retained uptime, given on subscribing, is as old as the broker's last publish (up to 11 s): a start read from
    it would be dated late, and a lock heard of just after the real start turned offline. Each live one is late by
    its delivery: the one that dates the start earliest is kept, and the uptime goes on with the relay's clock."""
    now = [1000.0]
    start = BrokerStart(clock=lambda: now[0])
    start.heard(b"120 seconds", retained=True)
    assert start.uptime_s() is None
    start.heard(b"125 seconds", retained=False)
    assert start.uptime_s() == 125
    now[0] += 11.4
    start.heard(b"136 seconds", retained=False)  # delivered 0.4 s late: the first reading stands
    assert start.uptime_s() == 136.4
    now[0] += 10.6
    start.heard(b"148 seconds", retained=False)  # this one dates the start 0.6 s earlier
    assert start.uptime_s() == 148
    for junk in (b"", b"-1 seconds", b"12", b"12 seconds\n", b"1e3 seconds", b"12345678901 seconds"):
        start.heard(junk, retained=False)
        assert start.uptime_s() == 148, junk
    start.forget()  # a new connection: perhaps to a broker restarted meanwhile
    assert start.uptime_s() is None
    start.heard(b"2 seconds", retained=False)
    now[0] += 1.5
    assert start.uptime_s() == 3.5


def test_the_broker_run_is_read_from_its_topic_and_each_messages_tag() -> None:
    """The plugin publishes its run's number (retained or live, it is the running broker's: ``$SYS`` is never
    persisted) and tags each lock message with it; the relay forgets the run on a new connection, and takes a tag
    only as the plugin writes it (one, decimal, a bigint)."""
    start = BrokerStart()
    assert start.run is None
    start.heard_run(b"1764840000123456")
    assert start.run == 1764840000123456
    for junk in (b"", b"0", b"-5", b"012", b"1e6", b"17648400001234567890", b"12 ", b"\xff"):
        start.heard_run(junk)
        assert start.run == 1764840000123456, junk
    start.forget()
    assert start.run is None

    def tagged(*pairs: tuple[str, str]) -> Properties:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = list(pairs)
        return properties

    assert run_of(None) is None and run_of(Properties(PacketTypes.PUBLISH)) is None  # type: ignore[no-untyped-call]
    assert run_of(tagged(("fw", "1"), (RUN_PROPERTY, "42"))) == 42
    assert run_of(tagged((RUN_PROPERTY, "42"), (RUN_PROPERTY, "43"))) is None, "two tags: not the plugin's"
    assert run_of(tagged((RUN_PROPERTY, "x"))) is None and run_of(tagged(("other", "42"))) is None
    # a last will is not tagged by the plugin and keeps its lock's properties: a run newer than the broker's is not
    # taken (none is known before the run is read: the function bounds it then)
    assert start.tag(tagged((RUN_PROPERTY, "42"))) == 42
    start.heard_run(b"100")
    assert start.tag(tagged((RUN_PROPERTY, "100"))) == 100 and start.tag(tagged((RUN_PROPERTY, "99"))) == 99
    assert start.tag(tagged((RUN_PROPERTY, "101"))) is None and start.tag(None) is None
