"""The broker's start as the relay reads it from Mosquitto's ``$SYS/broker/uptime`` (``mqtt_relay.broker_start``;
``tests/e2e/test_relay.py`` restarts the real broker)."""

from __future__ import annotations

from mqtt_relay.broker_start import BrokerStart


def test_the_start_is_read_from_a_live_uptime_only() -> None:
    """A retained uptime, given on subscribing, is as old as the broker's last publish (up to ``sys_interval``): a
    start read from it would be dated late, and a lock heard from just after the real start turned offline."""
    now = [1_767_225_600.0]
    start = BrokerStart(clock=lambda: now[0])
    start.heard(b"120 seconds", retained=True)
    assert start.started_at is None
    start.heard(b"125 seconds", retained=False)
    assert start.started_at == 1_767_225_475.0
    now[0] += 10.4
    start.heard(b"135 seconds", retained=False)
    assert start.started_at == 1_767_225_475.4  # read again each time: within a second of it
    for junk in (b"", b"-1 seconds", b"12", b"12 seconds\n", b"1e3 seconds", b"12345678901 seconds"):
        start.heard(junk, retained=False)
        assert start.started_at == 1_767_225_475.4, junk
    start.forget()  # a new connection: perhaps to a broker restarted meanwhile
    assert start.started_at is None
    start.heard(b"2 seconds", retained=False)
    assert start.started_at == now[0] - 2
