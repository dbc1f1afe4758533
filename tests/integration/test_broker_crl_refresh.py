"""The broker host's revocation list refresh (``lockwise-crl-refresh``, rendered from its template as for production),
run against a real Mosquitto with the subscription plugin: what it installs, and what it leaves out.

OpenSSL 3 prints ``verify failure`` for a list another key signed and exits 0, and the refresh took the exit status:
it installed such a list, and every handshake of the lock CA's clients, locks and relays alike, was refused; and it
installed an expired list (the same), and an older one (its revocations taken back) (attack run 57).
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.broker import render
from infra.local.services import Broker
from lockwise.devices.lock_certs import LockCa, crl
from tests.integration.test_broker import RELAY, Peer, identity_of, own_broker

__all__ = ["own_broker"]  # the broker fixture, used here by name


class CrlSource:
    """What the refresh fetches (``GET /devices/lock-ca/crl`` in production): ``body``, over HTTP."""

    def __init__(self) -> None:
        self.body = b""
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(source.body)))
                self.end_headers()
                self.wfile.write(source.body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/devices/lock-ca/crl"


@pytest.fixture
def source() -> Iterator[CrlSource]:
    served = CrlSource()
    yield served
    served.server.shutdown()


def refresh(
    broker: Broker, source: CrlSource, tmp_path: Path, *, openssl_1_1: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the refresh as rendered for production, with this broker's files; its ``systemctl kill --signal=HUP
    mosquitto`` is a stand-in that signals this broker and counts the reloads in ``tmp_path / "reloads"``.
    ``openssl_1_1``: ``openssl`` prints CRL numbers as OpenSSL 1.1 does, without ``0x``."""
    script = tmp_path / "lockwise-crl-refresh"
    values = {"CRLFILE": str(broker.crl_file), "CLIENT_CAFILE": str(broker.lock_ca_file), "CRL_URL": source.url}
    script.write_text(render.render("lockwise-crl-refresh.sh.template", values))
    script.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    reloads = tmp_path / "reloads"
    (bindir / "systemctl").write_text(f"#!/bin/sh\necho >> {reloads}\nkill -HUP {broker.process.popen.pid}\n")
    (bindir / "systemctl").chmod(0o755)
    older = bindir / "openssl"
    if openssl_1_1:
        real = shutil.which("openssl")
        older.write_text(f'#!/bin/sh\n{real} "$@" | sed "s/^crlNumber=0x/crlNumber=/"\n')
        older.chmod(0o755)
    else:
        older.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=False, timeout=60)
    time.sleep(1.0)  # the SIGHUP is handled between connections (a loaded machine's broker may take a while)
    return done


def reloads(tmp_path: Path) -> int:
    path = tmp_path / "reloads"
    return len(path.read_text().splitlines()) if path.exists() else 0


def connects(broker: Broker, files: tuple[Path, Path], client_id: str) -> bool:
    peer = Peer(broker, files, client_id=client_id)
    try:
        return peer.start(wait_s=3)
    finally:
        peer.stop()


def signed_list(
    ca: LockCa,
    key: ec.EllipticCurvePrivateKey,
    this: dt.datetime,
    until: dt.datetime,
    *,
    numbered: bool = True,
    number_at: dt.datetime | None = None,
) -> bytes:
    """A list in the lock CA's name, signed by ``key``, numbered by ``number_at`` (``this`` by default, as the
    server numbers them) or not at all."""
    built = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(this).next_update(until)
    if numbered:
        at = number_at or this
        built = built.add_extension(x509.CRLNumber(int(at.timestamp() * 1000)), critical=False)
    return built.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def serial_of(files: tuple[Path, Path]) -> str:
    return format(x509.load_pem_x509_certificate(files[0].read_bytes()).serial_number, "x")


def test_a_list_another_key_signed_or_an_expired_one_is_not_installed(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    lock = broker.client_files("lk-crl-refresh", tmp_path / "lock")
    relay = broker.client_files(RELAY, tmp_path / "relay")
    now = dt.datetime.now(dt.UTC)
    source.body = crl(ca, [], now).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1
    installed = broker.crl_file.read_bytes()
    assert installed == source.body

    later = now + dt.timedelta(minutes=1)
    refused = {  # the lock CA's name on each
        "another key": signed_list(ca, ec.generate_private_key(ec.SECP256R1()), later, later + dt.timedelta(days=7)),
        "expired": signed_list(ca, ca.key, later - dt.timedelta(days=8), later - dt.timedelta(days=1)),
        "not a list": b"<html>a captive portal</html>",
    }
    for why, body in refused.items():
        source.body = body
        done = refresh(broker, source, tmp_path)
        assert done.returncode != 0 and "not installed" in done.stderr, (why, done.stderr)
        assert broker.crl_file.read_bytes() == installed, why
    assert reloads(tmp_path) == 1
    # every client of the lock CA still connects (an installed one of those refused them all)
    assert connects(broker, lock, identity_of(lock)) and connects(broker, relay, RELAY)


def test_a_newer_list_is_installed_once_and_an_older_one_never(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    stolen = broker.client_files("lk-crl-stolen", tmp_path / "stolen")
    assert connects(broker, stolen, identity_of(stolen))
    now = dt.datetime.now(dt.UTC)
    older = crl(ca, [], now - dt.timedelta(minutes=10)).encode()  # served 10 minutes ago (a cache, a replay)
    source.body = crl(ca, [(serial_of(stolen), now)], now).encode()  # its lock paired again since
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1
    assert not connects(broker, stolen, identity_of(stolen)), "revoked and reloaded: refused"
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1  # the same: no reload
    source.body = older
    done = refresh(broker, source, tmp_path)
    assert done.returncode == 0 and "kept the installed list" in done.stderr, done.stderr
    assert reloads(tmp_path) == 1
    assert not connects(broker, stolen, identity_of(stolen)), "the older list took the revocation back"
    # as OpenSSL 1.1 prints numbers (no 0x): read as none, the older list was taken (a review)
    done = refresh(broker, source, tmp_path, openssl_1_1=True)
    assert done.returncode == 0 and "kept the installed list" in done.stderr and reloads(tmp_path) == 1, done.stderr


def test_a_list_without_a_number_is_kept_out_and_said_and_one_ending_soon_is_replaced(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    """After a numbered list, one with none is a rolled-back server: kept out, and the run fails for an alert (it
    was kept out silently, and the installed list's end would then have turned every lock and relay away). An
    installed list ending within a day is replaced by any valid one the lock CA signed, whatever its number."""
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    now = dt.datetime.now(dt.UTC)
    source.body = crl(ca, [], now).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1

    source.body = signed_list(ca, ca.key, now + dt.timedelta(minutes=1), now + dt.timedelta(days=7), numbered=False)
    done = refresh(broker, source, tmp_path)
    assert done.returncode != 0 and "kept the installed list" in done.stderr, done.stderr
    assert reloads(tmp_path) == 1
    tomorrow = now + dt.timedelta(days=1)  # numbered above anything served, ending in 12 hours
    source.body = signed_list(ca, ca.key, now, now + dt.timedelta(hours=12), number_at=tomorrow)
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 2
    source.body = crl(ca, [], now + dt.timedelta(minutes=2)).encode()  # an older number, a week to run
    done = refresh(broker, source, tmp_path)
    assert done.returncode == 0 and "installing the fetched one" in done.stderr, done.stderr
    assert reloads(tmp_path) == 3 and broker.crl_file.read_bytes() == source.body


def test_a_newer_list_that_drops_a_revocation_of_the_last_day_is_kept_out_and_said(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    """A list read from a database restored to before a re-pairing is newer (numbered by the database's clock) and
    names nothing of it: installed, the replaced device connected again (attack run 83). A revocation of the last
    day cannot leave the list but so (the server lists one until a day past its certificate's end); an older one
    goes as the server prunes it, and a list naming the revocation again is installed."""
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    stolen = broker.client_files("lk-crl-restored", tmp_path / "stolen")
    now = dt.datetime.now(dt.UTC)
    old = "1f2e3d4c5b6a"  # revoked 8 days ago, its certificate ended a day and more ago
    source.body = crl(ca, [(serial_of(stolen), now), (old, now - dt.timedelta(days=8))], now).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1
    assert not connects(broker, stolen, identity_of(stolen))

    source.body = crl(ca, [(old, now - dt.timedelta(days=8))], now + dt.timedelta(minutes=1)).encode()
    done = refresh(broker, source, tmp_path)
    assert done.returncode != 0 and "drops revocations of the last day" in done.stderr, done.stderr
    assert serial_of(stolen).upper() in done.stderr and old.upper() not in done.stderr
    assert reloads(tmp_path) == 1 and not connects(broker, stolen, identity_of(stolen))
    # the journal done again (POST /devices/operator/restored): listed again, and the pruned one gone, installed
    source.body = crl(ca, [(serial_of(stolen), now)], now + dt.timedelta(minutes=2)).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 2
    assert not connects(broker, stolen, identity_of(stolen))


def test_a_list_left_cut_short_by_a_refresh_that_was_stopped_is_replaced(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    """A refresh stopped while it wrote the list (the host shut down, systemd's stop, power lost before the page
    cache reached the disk) left the installed file cut short: ``install`` unlinks the old list and copies the new one
    over. Every later refresh then failed reading the installed list's number, exit 1 each minute, and installed
    nothing: no revocation reached the broker again, and the next restart met a list it cannot read (attack run
    126). A list the broker cannot read is taken as none: the fetched one, signed and current, is installed."""
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    stolen = broker.client_files("lk-crl-cut", tmp_path / "stolen")
    now = dt.datetime.now(dt.UTC)
    source.body = crl(ca, [], now).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1
    installed = broker.crl_file.read_bytes()
    broker.crl_file.write_bytes(installed[: len(installed) // 2])  # what the stopped copy left

    source.body = crl(ca, [(serial_of(stolen), now)], now + dt.timedelta(minutes=1)).encode()  # paired again since
    done = refresh(broker, source, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "could not be read" in done.stderr, done.stderr
    assert broker.crl_file.read_bytes() == source.body and reloads(tmp_path) == 2
    assert not connects(broker, stolen, identity_of(stolen)), "revoked and reloaded: refused"
    left = {p.name for p in broker.crl_file.parent.glob(f"{broker.crl_file.name}.*")}
    assert left == {f"{broker.crl_file.name}.loaded"}  # its own files renamed or removed, but what it signalled for


def test_a_list_a_stopped_refresh_installed_without_signalling_mosquitto_is_loaded_by_the_next(
    own_broker: Broker, source: CrlSource, tmp_path: Path
) -> None:
    """A refresh stopped after it put the list in place and before it signalled Mosquitto (or whose signal failed)
    left the list on disk and not loaded: every later run found the fetched list the same as the installed one and
    exited 0, so a revoked certificate went on connecting until the next revocation anywhere or the broker's restart
    (attack run 126). A list is taken as loaded once Mosquitto was signalled for it."""
    broker = own_broker
    ca = LockCa.from_pem(broker.lock_ca_pem)
    stolen = broker.client_files("lk-crl-unsignalled", tmp_path / "stolen")
    now = dt.datetime.now(dt.UTC)
    source.body = crl(ca, [], now).encode()
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 1
    source.body = crl(ca, [(serial_of(stolen), now)], now + dt.timedelta(minutes=1)).encode()  # paired again since
    broker.crl_file.write_bytes(source.body)  # what the stopped run put in place, unsignalled
    assert connects(broker, stolen, identity_of(stolen)), "not loaded yet"

    done = refresh(broker, source, tmp_path)
    assert done.returncode == 0, done.stderr
    assert reloads(tmp_path) == 2
    assert not connects(broker, stolen, identity_of(stolen)), "revoked and reloaded: refused"
    assert refresh(broker, source, tmp_path).returncode == 0 and reloads(tmp_path) == 2  # loaded: no reload again
