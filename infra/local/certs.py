"""The local broker's TLS files: a certificate authority and a server certificate, made once per state folder.

Made with ``trustme`` (PyPI, the test-certificate library): the CA's certificate is what locks and the relay pin
locally (``MQTT_CA_FILE``); the server certificate names ``localhost`` and ``127.0.0.1``. Keys are ECDSA P-256. A
later start reuses the files (the CA reloaded with ``trustme.CA.from_pem``), so locks provisioned earlier still trust
the broker. Development only: a deployment's broker has its own certificate (README, Deploy).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import trustme

from infra.local.private_files import write_private

ORGANIZATION = "LockWise local"
HOSTS = ("localhost", "127.0.0.1")
SERVER_CERT_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def ensure_tls(directory: Path) -> TlsFiles:
    """Create the CA and the server certificate under ``directory`` unless they already exist."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "ca.key", directory / "server.crt", directory / "server.key")
    if files.ca_cert.exists() and files.ca_key.exists():
        ca = trustme.CA.from_pem(files.ca_cert.read_bytes(), files.ca_key.read_bytes())
    else:
        ca = trustme.CA(organization_name=ORGANIZATION)
        ca.cert_pem.write_to_path(str(files.ca_cert))
        _write_key(ca.private_key_pem, files.ca_key)
    if not (files.server_cert.exists() and files.server_key.exists()):
        server = ca.issue_cert(
            *HOSTS,
            organization_name=ORGANIZATION,
            not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=SERVER_CERT_DAYS),
        )
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        _write_key(server.private_key_pem, files.server_key)
    return files


def _write_key(blob: trustme.Blob, path: Path) -> None:
    write_private(path, blob.bytes().decode())
