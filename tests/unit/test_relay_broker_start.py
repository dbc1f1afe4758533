"""The broker's uptime as the relay reads it from Mosquitto's ``$SYS/broker/uptime`` (``mqtt_relay.broker_start``;
``tests/e2e/test_relay.py`` restarts the real broker)."""

from __future__ import annotations

from mqtt_relay.broker_start import BrokerStart


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
