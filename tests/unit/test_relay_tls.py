"""The relay's TLS towards the broker (``mqtt_relay.sessions.new_client``): the broker's certificate checked against
``MQTT_CA_FILE`` and the host name it is reached by, and TLS 1.2 at least. Attack run 115 asked it the weakest a
server in the broker's place could offer; a guard of what it measured (each case passes before: paho's context for
``PROTOCOL_TLS_CLIENT`` checks both, Python's floor is 1.2), against a plain TLS server, no broker."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import trustme

from infra.lock_ca import client_cert
from lockwise.devices.lock_certs import new_ca
from mqtt_relay.sessions import new_client
from mqtt_relay.settings import RelaySettings

IDENTITY = "lockwise-relay-1"


class TlsServer:
    """Completes TLS handshakes (nothing after) as ``context`` allows; ``handshakes`` counts those completed, and
    ``done`` is released at each."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.handshakes = 0
        self.done = threading.Semaphore(0)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, args=(context,), daemon=True).start()

    def _serve(self, context: ssl.SSLContext) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    self.handshakes += 1
                    self.done.release()
            except (ssl.SSLError, OSError):
                conn.close()


@pytest.fixture
def relay_settings(tmp_path: Path) -> Iterator[tuple[RelaySettings, trustme.CA]]:
    """A relay's settings trusting a fresh broker CA, with its slot's client certificate."""
    ca = trustme.CA()
    ca_file = tmp_path / "broker-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = client_cert(new_ca(), IDENTITY, 1)
    bundle = tmp_path / "relay-certs.json"
    bundle.write_text(json.dumps({IDENTITY: {"cert": cert, "key": key}}))
    yield cast(RelaySettings, SimpleNamespace(mqtt_ca_file=str(ca_file), mqtt_client_certs=str(bundle))), ca


def serving(ca: trustme.CA, name: str, newest: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> TlsServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version, context.maximum_version = ssl.TLSVersion.MINIMUM_SUPPORTED, newest
    return TlsServer(context)


def test_the_relay_checks_the_brokers_name_and_ca_and_speaks_tls_1_2_at_least(
    relay_settings: tuple[RelaySettings, trustme.CA],
) -> None:
    settings, ca = relay_settings
    right = serving(ca, "127.0.0.1")
    new_client(settings, IDENTITY).connect("127.0.0.1", right.port)  # the control: this one is taken
    assert right.done.acquire(timeout=10)
    other_name = serving(ca, "broker.elsewhere.example")
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        new_client(settings, IDENTITY).connect("127.0.0.1", other_name.port)
    other_ca = serving(trustme.CA(), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        new_client(settings, IDENTITY).connect("127.0.0.1", other_ca.port)
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        server = serving(ca, "127.0.0.1", newest=old)
        with pytest.raises(ssl.SSLError):
            new_client(settings, IDENTITY).connect("127.0.0.1", server.port)
        assert server.handshakes == 0, old
    assert (other_name.handshakes, other_ca.handshakes) == (0, 0)
