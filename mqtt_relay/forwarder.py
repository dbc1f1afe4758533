"""Lock events (state, acks, online/offline) from the broker to the devices function, acknowledged only after.

Messages arrive on paho's network thread and are queued; one worker posts them in batches to
``/devices/relay/events`` with the relay's service token and calls ``ack`` for each only when the function has
accepted the batch. If the relay dies first, the broker redelivers (persistent session, QoS 1): nothing is lost, and
the devices side is idempotent on redelivery.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from lockwise.headers import SERVICE_TOKEN_HEADER

log = logging.getLogger("mqtt_relay.forwarder")


@dataclass(frozen=True)
class Event:
    topic: str
    payload: str
    #: acknowledges the message to the broker (on the session it came from), once the devices function took it
    ack: Callable[[], None]


class Forwarder:
    def __init__(
        self,
        devices_url: str,
        service_token: str,
        *,
        batch: int = 100,
        timeout_s: float = 10.0,
        identity: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.url = f"{devices_url}/devices/relay/events"
        self.flush_url = f"{devices_url}/devices/relay/flush"
        self.headers = {SERVICE_TOKEN_HEADER: service_token}
        self.identity = identity or dict
        self.batch = batch
        self.timeout_s = timeout_s
        self.queue: queue.Queue[Event] = queue.Queue()
        self.forwarded = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: Event) -> None:
        self.queue.put(event)

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Forward what is queued (up to the timeout), then stop; anything left is redelivered by the broker."""
        deadline = time.monotonic() + drain_timeout_s
        while (not self.queue.empty() or self.in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)

    def _take(self) -> list[Event]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        events = [first]
        while len(events) < self.batch:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return events

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            events = self._take()
            if not events:
                continue
            self.in_flight = len(events)
            while not self._stop.is_set():
                if self._post(events):
                    for event in events:
                        event.ack()
                    self.forwarded += len(events)
                    backoff = 0.2
                    break
                time.sleep(backoff)  # keep the batch, unacknowledged, until the function takes it
                backoff = min(backoff * 2, 5.0)
            self.in_flight = 0

    def _post(self, events: list[Event]) -> bool:
        body = {"events": [{"topic": e.topic, "payload": e.payload} for e in events]}
        try:
            headers = {**self.headers, **self.identity()}
            resp = self._session.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except (requests.RequestException, OSError) as exc:
            self.last_error = type(exc).__name__
            log.warning("devices function unreachable; will retry", extra={"fields": {"error": self.last_error}})
            return False
        if resp.status_code != 200:
            self.last_error = f"HTTP {resp.status_code}"
            log.warning("devices function refused events; will retry", extra={"fields": {"status": resp.status_code}})
            return False
        self.last_error = None
        return True

    def flush_mirror(self) -> None:
        """Ask the devices function to write queued Firestore mirror rows (the app's view converges)."""
        try:
            requests.post(self.flush_url, headers={**self.headers, **self.identity()}, timeout=self.timeout_s)
        except (requests.RequestException, OSError) as exc:
            log.warning("mirror flush failed", extra={"fields": {"error": type(exc).__name__}})
