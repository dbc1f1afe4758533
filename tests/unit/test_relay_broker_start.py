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


def test_a_start_forgotten_by_another_thread_mid_read_is_unknown_not_a_type_error() -> None:
    """Attack run 96: paho's network thread ``forget``s the start on a reconnect while the upkeep's and the health
    report's threads read it; read twice, None between the test and the subtraction was a TypeError that ended the
    upkeep's thread for good. The clock here is read between the two, as a switch of threads there would."""
    start: BrokerStart

    def clock() -> float:
        start.forget()  # paho's thread, between the upkeep's test and its subtraction
        return 1000.0

    start = BrokerStart(clock=clock)
    start._started = 880.0  # noqa: SLF001 - a live uptime heard before (``heard`` reads the clock too)
    assert start.uptime_s() == 120.0  # the start as it stood when read (the next reading: unknown)
    assert start.uptime_s() is None


class _ForgottenMidRead(BrokerStart):
    """A relay whose run paho's thread forgets right after it is first read (a drained session's thread tags)."""

    _run: int | None = None

    @property
    def run(self) -> int | None:
        run, self._run = self._run, None
        return run

    @run.setter
    def run(self, value: int | None) -> None:
        self._run = value


def test_a_run_forgotten_by_another_thread_mid_tag_is_no_type_error() -> None:
    """Attack run 96: a drained session's messages are tagged on its client's thread, while the relay's own may
    ``forget`` the run; ``self.run`` tested, then compared, was None for the comparison: a TypeError in that client's
    callback."""
    start = _ForgottenMidRead()
    start.run = 1_700_000_000_000_000
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [(RUN_PROPERTY, "1700000000000001")]  # newer than the broker's run: a will's own
    assert start.tag(properties) is None
