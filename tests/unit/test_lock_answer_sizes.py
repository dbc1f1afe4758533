"""Every answer and message a lock receives, built with the longest of each of its parts the server takes, stays
within what docs/FIRMWARE.md ("Sizes") tells a lock maker to size buffers by; a lock CA or broker host that would make
one larger stops the devices function at start (attack run 117). The real stack's answers:
tests/integration/test_lock_answer_sizes.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockwise.core import errors, http
from lockwise.core.config import ConfigError, Settings
from lockwise.devices import command_signing, lock_certs, provisioning, receipts
from lockwise.voice.verification import Result
from tests.unit.test_config import PROD_OK

NOW = dt.datetime.now(dt.UTC)
FIRMWARE = Path(__file__).resolve().parents[2] / "docs" / "FIRMWARE.md"
UUID = "0b7c1f4e-2d3a-4c5b-8e6f-7a8b9c0d1e2f"  # every id a lock is sent is a UUID of this length
EMOJI = "\U0001f600"  # one character, 4 bytes of UTF-8 and 12 as a JSON escape: the most of any


def stated(what: str) -> int:
    """The bound docs/FIRMWARE.md's "Sizes" table gives the row beginning with ``what``."""
    table = FIRMWARE.read_text().split("## Sizes: the most a lock is sent", 1)[1].split("\n## ", 1)[0]
    (row,) = [line for line in table.splitlines() if line.startswith(f"| {what}")]
    return int(re.sub(r"[^0-9]", "", row.split("|")[2]))


def sent(body: object) -> int:
    """The bytes of ``body`` as the functions answer it."""
    return len(http.json_response(body).get_data())


def operators_ca(subject_bytes: int, curve: ec.EllipticCurve, *, extension_bytes: int = 0) -> str:
    """A CA an operator made elsewhere (certificate and PKCS#8 key in one PEM), its subject ``subject_bytes`` of DER
    (an organisation name of emoji, 4 bytes each, padded with ASCII), with an extension of ``extension_bytes``."""
    key = ec.generate_private_key(curve)

    def name(organisation: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "Acme lock CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            ]
        )

    fill = ""
    while len(name(fill + "x").public_bytes()) <= subject_bytes:
        fill += "\U0001f600" if len(name(fill + "\U0001f600").public_bytes()) <= subject_bytes else "x"
    subject = name(fill)
    assert len(subject.public_bytes()) == subject_bytes
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    if extension_bytes:
        oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x04" * extension_bytes), critical=False)
    cert = builder.sign(key, hashes.SHA512())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


def locks_certificate(ca: lock_certs.LockCa) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lockwise-lock")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return lock_certs.issue(ca, csr, UUID, 7 * 86_400, NOW).pem  # a broker identity is a UUID (``provisioning``)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_the_largest_ca_taken_keeps_what_a_lock_is_sent_within_its_stated_sizes(curve: ec.EllipticCurve) -> None:
    ca = lock_certs.LockCa.from_pem(operators_ca(lock_certs.MAX_CA_SUBJECT_BYTES, curve))
    assert len(ca.cert_pem()) <= lock_certs.MAX_CA_CERT_CHARS
    longest = max(len(locks_certificate(ca)) for _ in range(20))  # (an ECDSA signature's length varies)
    assert lock_certs.MAX_CERT_CHARS - 200 < longest <= lock_certs.MAX_CERT_CHARS
    ours = lock_certs.LockCa.from_pem(lock_certs.new_ca(project="acme-locks-prod"))  # infra.lock_ca's, for scale
    assert len(ours.cert_pem()) < 1000 and len(locks_certificate(ours)) < 1000


@pytest.mark.parametrize(
    ("subject_bytes", "extension_bytes", "why"),
    [(60_000, 0, "subject at most 1000 bytes"), (1000, 3000, "at most 4096 characters of PEM")],
    ids=["a long name", "a large extension"],
)
def test_a_lock_ca_too_large_for_what_a_lock_is_sent_stops_the_devices_function(
    subject_bytes: int, extension_bytes: int, why: str
) -> None:
    """Attack run 117: an operator's CA with a 60 KB name was taken, and every pairing's answer was 245 KB, the lock's
    certificate (which names its CA) 82 KB, past any buffer a lock's TLS stack has."""
    pem = operators_ca(subject_bytes, ec.SECP256R1(), extension_bytes=extension_bytes)
    with pytest.raises(ConfigError, match=f"LOCKWISE_LOCK_CA: .*{why}"):
        Settings.from_env(dict(PROD_OK, LOCKWISE_LOCK_CA=pem), component="devices")


def largest_command(nonce_chars: int = 64) -> str:
    seed = base64.b64encode(bytes(range(32))).decode()
    command = command_signing.Command(
        id=UUID, lock=UUID, action="unlock", nonce="n" * nonce_chars, issued_at=9_999_999_999, expires_at=9_999_999_999
    )
    return command_signing.sign(command, command_signing.private_key(seed))


def test_the_pairing_and_renewal_answers_with_the_largest_ca_and_host_taken_are_within_their_stated_sizes() -> None:
    ca = lock_certs.LockCa.from_pem(operators_ca(lock_certs.MAX_CA_SUBJECT_BYTES, ec.SECP521R1(), extension_bytes=500))
    assert len(ca.cert_pem()) > lock_certs.MAX_CA_CERT_CHARS - 200  # as large as the devices function takes
    host = ".".join(["h" * 63] * 4)[:253]
    Settings.from_env(dict(PROD_OK, LOCKWISE_MQTT_PUBLIC_HOST=host), component="devices")  # taken
    pem = max((locks_certificate(ca) for _ in range(20)), key=len)
    certificate = provisioning.Certificate(UUID, pem, ca.cert_pem(), NOW + dt.timedelta(days=7), NOW)
    paired = provisioning.Credentials(UUID, certificate).public(host, 65535, "A" * 43 + "=", 86_400)
    renewed = {"client_id": UUID, **certificate.public()}
    assert 7_000 < sent(paired) <= stated("`POST /devices/provision` answer")
    assert sent(renewed) <= stated("`POST /devices/lock/certificate` answer")


def test_the_config_answer_with_the_longest_name_is_within_its_stated_size() -> None:
    config = {
        "lock_id": UUID,
        "name": EMOJI * 100,
        "supports_open": False,
        "mqtt_identity": UUID,
        "certificate_expires_at": NOW.isoformat(),
        "server_public_key": "A" * 43 + "=",
        "command_ttl_s": 86_400,
        "topics": provisioning.lock_topics(UUID),
    }
    assert sent(config) <= stated("`GET /devices/lock/config` answer")


def test_the_verify_answer_and_commands_and_receipts_are_within_their_stated_sizes() -> None:
    grant = largest_command()
    accepted = Result("accepted", UUID, "accepted", member_uid=EMOJI * 128, command={"id": UUID}, grant=grant)
    assert sent(accepted.body()) <= stated("`POST /verify` answer")
    assert len(grant.encode()) <= stated("a command on")
    named = [receipts.digest(str(i).encode()) for i in range(100)]
    assert max(len(message) for message in receipts.messages(named)) <= stated("a receipt on")


def test_an_error_body_is_within_its_stated_size_and_names_its_code_first() -> None:
    err = errors.BadRequest(EMOJI * 5_000, code="unknown_field", details={"fields": [EMOJI * 40] * 20})
    body = http.json_response(errors.error_body(err, UUID)).get_data()
    assert body.startswith(b'{"error":{"code":"unknown_field"')
    assert 20_000 < len(body) <= stated("an error body")
    assert json.loads(body)["error"]["details"]["fields"] == [EMOJI * 40] * 20
