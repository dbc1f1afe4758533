"""The local broker's TLS files (``infra.local.certs``): a client pinning the CA reaches the server by either name,
and a restart keeps the CA the locks already pin."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest

from infra.local.certs import TlsFiles, ensure_tls


def handshake(files: TlsFiles, server_hostname: str) -> str:
    """TLS over a socket pair: the server serves ``files``' certificate, the client pins ``files.ca_cert``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    a, b = socket.socketpair()

    def serve() -> None:  # the client's side says how the handshake went; a refused one also fails here
        with contextlib.suppress(ssl.SSLError, OSError), server_ctx.wrap_socket(b, server_side=True):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(a, server_hostname=server_hostname) as tls:
            return str(tls.version())
    finally:
        thread.join(10)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_a_client_pinning_the_ca_reaches_the_server_by_either_name(tmp_path: Path, name: str) -> None:
    files = ensure_tls(tmp_path / "tls")
    assert handshake(files, name).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, "broker.example")  # the certificate names only the local host
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600


def test_a_restart_keeps_the_ca_and_a_lost_server_certificate_is_reissued_under_it(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path / "tls")
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    assert ensure_tls(tmp_path / "tls") == first
    assert (first.ca_cert.read_bytes(), first.server_cert.read_bytes()) == (ca, server)  # nothing remade
    first.server_cert.unlink()
    first.server_key.unlink()
    again = ensure_tls(tmp_path / "tls")
    assert again.ca_cert.read_bytes() == ca  # what locks pin is unchanged
    assert again.server_cert.read_bytes() != server
    assert handshake(again, "localhost").startswith("TLS")  # the new certificate chains to the kept CA
