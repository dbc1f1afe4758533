"""The lock CA and the relay replicas' broker certificates: ``python -m infra.lock_ca init|relay-certs``.

``init --out DIR --project P`` makes a new lock CA for the deployment of Firebase project ``P`` (named in it:
a devices function of another refuses it): ``lock-ca.pem`` (certificate and key: the ``lockwise-lock-ca`` secret, held
by the devices function only) and ``lock-ca.crt`` (the certificate alone: the broker checks client certificates
against it). ``relay-certs --ca DIR/lock-ca.pem --out relay-certs.json`` issues one client certificate per relay slot
(``lockwise-relay-1`` ..., as the broker's ACL lists them): the ``lockwise-relay-certs`` secret. The local stack and
the tests use the same functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequest, CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from infra.broker.render import relay_identities
from infra.deploy_config import RELAY_SLOTS
from infra.local.private_files import write_private
from lockwise.devices.lock_certs import LockCa, issue, new_ca


def client_cert(ca_pem: str, identity: str, days: int) -> tuple[str, str]:
    """A new EC P-256 key and a certificate for ``identity`` signed by the CA: ``(cert PEM, key PEM)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    issued = issue(LockCa.from_pem(ca_pem), csr, identity, days * 86400, dt.datetime.now(dt.UTC))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return issued.pem, key_pem


def make_csr(key: ec.EllipticCurvePrivateKey, subject: str = "lockwise") -> CertificateSigningRequest:
    """A CSR for ``key`` (the CA ignores its subject: the identity is the CA's to choose)."""
    return (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, subject)]))
        .sign(key, hashes.SHA256())
    )


def relay_certs(ca_pem: str, slots: int = RELAY_SLOTS, days: int = 365) -> dict[str, dict[str, str]]:
    """``{identity: {"cert", "key"}}`` for every relay slot: what ``MQTT_CLIENT_CERTS`` holds."""
    bundle = {}
    for identity in relay_identities(slots):
        cert, key = client_cert(ca_pem, identity, days)
        bundle[identity] = {"cert": cert, "key": key}
    return bundle


#: the longest a relay's certificate is asked to last (it ends with the CA anyway): ``--days`` 0 wrote certificates
#: ending as they were made, reported as written, and a negative or a huge count was a traceback (attack run 119)
MAX_DAYS = 3650


def _within(least: int, most: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``least`` to ``most`` (argparse's usage error, exit 2, otherwise)."""

    def number(text: str) -> int:
        if not (text.isascii() and text.isdigit() and least <= int(text) <= most):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {least} to {most}")
        return int(text)

    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="a new lock CA")
    init.add_argument("--out", type=Path, required=True)
    init.add_argument(
        "--project", required=True, help="the deployment's Firebase project (LOCKWISE_PROJECT_ID): named in the CA"
    )
    relay = commands.add_parser("relay-certs", help="one client certificate per relay slot")
    relay.add_argument("--ca", type=Path, required=True, help="lock-ca.pem (certificate and key)")
    relay.add_argument("--out", type=Path, required=True)
    relay.add_argument("--slots", type=_within(1, RELAY_SLOTS), default=RELAY_SLOTS, help=f"1 to {RELAY_SLOTS}")
    relay.add_argument("--days", type=_within(1, MAX_DAYS), default=365, help=f"1 to {MAX_DAYS} (the CA's end first)")
    args = parser.parse_args(argv)
    # the key files are their user's only from their first byte (``write_private``): written into a file already
    # there, they kept its mode, 0644 (attack run 57)
    if args.command == "init":
        args.out.mkdir(parents=True, exist_ok=True)
        ca_file, cert_file = args.out / "lock-ca.pem", args.out / "lock-ca.crt"
        if ca_file.exists():  # every lock's certificate and the relays' stand on it
            cert = LockCa.from_pem(ca_file.read_text()).cert_pem()
            if cert_file.exists() and cert_file.read_text() == cert:
                sys.stderr.write(f"{ca_file} exists: a new lock CA goes to another directory\n")
                return 1
            # a run stopped after the CA and before its certificate left the broker none, and every later run
            # refused (attack run 126): the CA there is kept, its certificate written
            _write_whole(cert_file, cert)
            sys.stdout.write(f"{cert_file} written from the lock CA already in {args.out} (no new CA made)\n")
            return 0
        pem = new_ca(project=args.project)  # a devices function of another deployment refuses it (attack run 116)
        write_private(ca_file, pem)
        _write_whole(cert_file, LockCa.from_pem(pem).cert_pem())
        sys.stdout.write(f"lock CA written to {ca_file} (secret) and lock-ca.crt (for the broker)\n")
    else:
        write_private(args.out, json.dumps(relay_certs(args.ca.read_text(), args.slots, args.days), indent=2))
        sys.stdout.write(f"{args.slots} relay certificates written to {args.out}\n")
    return 0


def _write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` (a certificate: public), renamed into place, so it is never left cut short."""
    new = path.with_name(f".{path.name}.new")
    new.write_text(text)
    new.replace(path)


if __name__ == "__main__":
    sys.exit(main())
