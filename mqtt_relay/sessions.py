"""The relay's MQTT sessions: how a relay client is made, and how an abandoned replica's session is emptied.

The broker hands each lock event to one member of the relays' shared subscription, including members that are
offline with a persistent session (Mosquitto 2.0 queues for them). A replica that crashed, or the last one to stop,
leaves such a session behind, and the broker keeps queueing part of the events there. A live relay that finds a
slot free (no replica holds its lease) takes the slot for a moment, connects as that slot, forwards what the session
holds, leaves the share group and ends the session (session expiry 0 on disconnect), so nothing stays stranded.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lockwise.core.db import Connection
from lockwise.devices import topics
from mqtt_relay.broker_start import RUN_TOPIC, UPTIME_TOPIC, run_of
from mqtt_relay.forwarder import Event, Forwarder
from mqtt_relay.settings import RelaySettings

log = logging.getLogger("mqtt_relay.sessions")


class MissingIdentity(RuntimeError):
    """``MQTT_CLIENT_CERTS`` holds no certificate for a slot the relay leased."""


#: lock events the broker may have sent this relay and not yet had acknowledged (MQTT 5 Receive Maximum; it replaces
#: the broker's own ``max_inflight_messages``). Left to the broker (100 in our Mosquitto configuration), a relay
#: benchmark's flood arrived partly out of order: in 13 of 56 runs, 1-114 of 3,000 reports after a later report of
#: the same lock, each then ignored as stale and missing from the app's feed (yet the relay held over 2,000
#: unacknowledged events at once, more than that window: the broker's accounting is not what its setting says, and
#: the mechanism was not pinned down). Asked for explicitly, none in 26 runs of 3,000 (8 of them at 4,000); a
#: flood larger than the window can still arrive partly out of order (227 of a second 8,000-report flood on one
#: stack). Bounded so that what a relay holds stays small: at most this many events (at most 16 KiB each) per
#: session, the rest waiting in the broker's queue
RECEIVE_MAXIMUM = 4000
EVENT_KINDS = ("state", "ack", "status")
#: the group every replica used to share under a fixed name: a lock could join it (see ``share_group``); a relay
#: leaves it as it connects, since a resumed session keeps the subscriptions it had
LEGACY_EVENT_TOPICS = [f"$share/lockwise-relay/{topics.ROOT}/+/{kind}" for kind in EVENT_KINDS]


def share_group(con: Connection) -> str:
    """The replicas' shared-subscription group: the broker hands each lock event to one member of it.

    Mosquitto's ``acl_file`` never refuses a subscription (it checks ``read`` only as it delivers), so a lock that
    could name the group could subscribe to ``$share/<group>/lockwise/+/state`` and be handed its share of every
    lock's events, each then dropped by that read check (an attacker's four paired locks lost 8 of a victim's 10
    state reports under the fixed name this replaced). The name is random, made once by a migration and kept in
    PostgreSQL, which no lock reaches (made again, by the first replica to look, if the row is ever gone); a group
    of a lock's own takes nothing from the relays'."""
    con.run("INSERT INTO relay_share_group DEFAULT VALUES ON CONFLICT DO NOTHING")  # the name: the table's default
    return str(con.run("SELECT name FROM relay_share_group")[0][0])


def event_topics(group: str) -> list[str]:
    return [f"$share/{group}/{topics.ROOT}/+/{kind}" for kind in EVENT_KINDS]


def event_subscriptions(group: str) -> list[tuple[str, SubscribeOptions]]:
    """``event_topics`` as a relay subscribes to them, at QoS 1: a lock's retained presence (``status``) given only to
    a subscription that is new (a group's first replica learns where each lock is), none on a session's subscribing
    again as it reconnects; retained states and acks never (the broker keeps none now: ``lockwise_acl.c``). Every
    replica's reconnect was handed every lock's retained messages again (up to 2 x 64 KB a lock, a lock's own choice:
    attack run 78)."""
    return [
        (
            topic,
            SubscribeOptions(
                qos=1,
                retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                if topic.endswith("/status")
                else SubscribeOptions.RETAIN_DO_NOT_SEND,
            ),
        )
        for topic in event_topics(group)
    ]


def new_client(settings: RelaySettings, client_id: str) -> mqtt.Client:
    """An MQTT 5 client for a relay session: TLS with the slot's own client certificate (the broker takes its
    common name as username and client id), manual acks."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
    cert, key = _identity_files(settings.mqtt_client_certs, client_id)
    client.tls_set(
        ca_certs=settings.mqtt_ca_file, certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    client.on_socket_open = no_delay
    return client


def no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Send each packet at once (TCP_NODELAY): with Nagle's algorithm a command published right after an
    acknowledgement waits for the broker's delayed ACK, about 40 ms on Linux (measured: command receipt p50 44 ms
    with it, against a plain MQTT echo of the same size)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # not a TCP socket (a websocket wrapper): nothing to tune
        pass


_files_dir: Path | None = None


def _identity_pems(bundle: str, identity: str) -> tuple[str, str]:
    """The identity's certificate and key (PEM) from the bundle."""
    try:
        entry = json.loads(Path(bundle).read_text())[identity]
        return str(entry["cert"]), str(entry["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingIdentity(f"MQTT_CLIENT_CERTS ({bundle}) has no certificate for {identity}") from exc


def _identity_files(bundle: str, identity: str) -> tuple[Path, Path]:
    """The identity's certificate and key from the bundle, as files (what OpenSSL loads), in a private folder."""
    global _files_dir
    cert_pem, key_pem = _identity_pems(bundle, identity)
    if _files_dir is None:
        _files_dir = Path(tempfile.mkdtemp(prefix="lockwise-relay-"))  # mode 700
    cert, key = _files_dir / f"{identity}.crt", _files_dir / f"{identity}.key"
    cert.write_text(cert_pem)
    key.touch(mode=0o600)
    key.write_text(key_pem)
    return cert, key


def certificate_expiry(settings: RelaySettings, identity: str) -> dt.datetime:
    """When the identity's client certificate expires (the broker refuses it from then on: ``python -m infra.lock_ca
    relay-certs`` issues them for a year, and nothing said so before every relay was turned away: attack run 57)."""
    cert_pem, _ = _identity_pems(settings.mqtt_client_certs, identity)
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def session_properties(expiry_s: int, packet: int = PacketTypes.CONNECT) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    if packet == PacketTypes.CONNECT:
        props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def close(client: mqtt.Client) -> None:
    """Close ``client``'s sockets now: its connection, if still open, and the pair that wakes its network loop. paho
    closes them only as the client is collected (``__del__``), and a client whose callbacks hold it (``drain``'s acks
    do) is in a reference cycle, collected at the garbage collector's next full pass: each emptying of a free slot's
    session, every ``LOCKWISE_RELAY_ORPHAN_SCAN_S`` for each free slot, left two or three descriptors open until then
    (attack run 114: 100 after 50 emptyings, and 11-29 sockets in an idle relay scanning every second). An ack made
    after it is dropped unsent, as after its disconnect: the broker's session sends that message again."""
    client._reset_sockets()  # paho has no public close


def drain(
    settings: RelaySettings,
    client_id: str,
    forwarder: Forwarder,
    subscribed: list[str],
    *,
    quiet_s: float = 1.0,
    tag: Callable[[Any], int | None] = run_of,
) -> int:
    """Forward what the abandoned session ``client_id`` holds, then end it; returns how many events it held.
    ``tag``: each message's broker run, from its properties (the relay's ``BrokerStart.tag``).

    The caller holds the slot's lease, so no replica uses this session meanwhile."""
    client = new_client(settings, client_id)
    connected = threading.Event()
    refused: list[str] = []
    present: list[bool] = []
    lock = threading.Lock()
    counts = {"received": 0, "acked": 0}
    last_message = [time.monotonic()]

    def on_connect(c: mqtt.Client, _ud: Any, flags: Any, rc: ReasonCode, _props: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        present.append(bool(flags.session_present))
        connected.set()

    def acked(mid: int, qos: int) -> None:
        if qos > 0:
            client.ack(mid, qos)
        with lock:
            counts["acked"] += 1

    def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic in (UPTIME_TOPIC, RUN_TOPIC):  # the session's plain subscriptions, not events (QoS 0: no ack)
            return
        with lock:
            counts["received"] += 1
        last_message[0] = time.monotonic()
        ack = functools.partial(acked, msg.mid, msg.qos)
        forwarder.submit(
            Event.of(msg.topic, bytes(msg.payload), ack, tag(msg.properties), redelivered=bool(msg.dup), mid=msg.mid)
        )

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(
            settings.mqtt_host,
            settings.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=session_properties(settings.session_expiry_s),
        )
        client.loop_start()
        if not connected.wait(10) or refused:
            log.warning("could not open an abandoned relay session", extra={"fields": {"client_id": client_id}})
            return 0
        if not present[0]:  # no session was left behind: end the empty one the connect made
            client.disconnect(properties=session_properties(0, PacketTypes.DISCONNECT))
            return 0
        # out of the share group (and the fixed-name one of before): the broker queues nothing more here
        client.unsubscribe([*subscribed, *LEGACY_EVENT_TOPICS, UPTIME_TOPIC, RUN_TOPIC])
        deadline = time.monotonic() + 60
        idle = False
        while time.monotonic() < deadline and not idle:
            time.sleep(0.05)
            with lock:
                idle = counts["received"] == counts["acked"] and time.monotonic() - last_message[0] >= quiet_s
        if idle:  # everything forwarded and acknowledged: the session ends now
            client.disconnect(properties=session_properties(0, PacketTypes.DISCONNECT))
        else:  # the devices function did not take it all: the session keeps the rest for the next scan
            client.disconnect()
    finally:
        client.loop_stop()
        close(client)
    if counts["received"]:
        log.info(
            "abandoned relay session emptied", extra={"fields": {"client_id": client_id, "events": counts["received"]}}
        )
    return counts["received"]
