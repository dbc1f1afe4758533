"""Lock client certificates: how a lock proves to the broker who it is.

At pairing the lock sends a certificate signing request (CSR) for an EC P-256 key it generated and never shares; the
devices function ignores the CSR's subject and signs a short-lived client certificate whose common name is the lock's
broker identity: the credential's ``mqtt_username``, new at every pairing. The broker takes that name as the MQTT
username and client id (Mosquitto: ``use_identity_as_username``, ``use_username_as_clientid``) and the per-lock ACL
allows its four topics under ``lockwise/<identity>/`` only (and its subscriptions its command topic only:
``infra/broker/lockwise_acl.c``), so the broker keeps nothing per lock.

Revocation, in three layers: re-pairing or deleting a lock revokes its credential, so the old identity's topics are
dead at once (commands go to the new identity, events from the old one are refused) and the old certificate cannot
renew; the lock CA's revocation list (``crl``, served at ``GET /devices/lock-ca/crl``) names every revoked certificate
that has not expired yet, and a broker that reloads it refuses the old certificate at the TLS handshake from its next
reload on (``infra/broker``: every minute); and a certificate lives ``LOCKWISE_LOCK_CERT_TTL_S`` (7 days) at most, so a
broker that never reloads still stops it then.

The CA (``LOCKWISE_LOCK_CA``: its certificate and key, PEM) is a deploy secret of the devices function only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lockwise.core import errors

MAX_CSR_CHARS = 4096
#: the hashes a CSR's self-signature may use
CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
#: what a lock is sent of its CA and its certificate at most (docs/FIRMWARE.md "Sizes"): the CA's certificate as
#: PEM, and its subject (DER), which every certificate it issues carries as its issuer; with a subject of at most
#: ``MAX_CA_SUBJECT_BYTES`` a lock's certificate is at most ``MAX_CERT_CHARS`` of PEM whatever the CA's EC curve
MAX_CA_CERT_CHARS = 4096
MAX_CA_SUBJECT_BYTES = 1000
MAX_CERT_CHARS = 2048
#: the certificate's validity starts this much before issuance, for locks whose clock runs a little behind
BACKDATE = dt.timedelta(minutes=5)


class CaError(ValueError):
    """The configured lock CA is unusable (raised at start-up)."""


@dataclass(frozen=True)
class LockCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_pem(cls, pem: str) -> LockCa:
        """The CA from one PEM text holding its certificate and its (unencrypted) EC private key."""
        data = pem.encode()
        try:
            cert = x509.load_pem_x509_certificate(data)
            key = serialization.load_pem_private_key(data[data.index(b"-----BEGIN PRIVATE KEY-----") :], None)
        except ValueError as exc:
            raise CaError("LOCKWISE_LOCK_CA must hold a PEM certificate and its PKCS#8 private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("the lock CA key must be an EC key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CaError("the lock CA certificate and key do not belong together")
        # every lock is sent the CA's certificate, and its own, which names the CA, into buffers sized by what
        # FIRMWARE.md states: an operator's CA with a 60 KB name was taken, and each pairing's answer was 245 KB, the
        # lock's certificate 82 KB, past any TLS buffer a lock has (attack run 117)
        pem_chars = len(cert.public_bytes(serialization.Encoding.PEM))
        subject_bytes = len(cert.subject.public_bytes())
        if pem_chars > MAX_CA_CERT_CHARS or subject_bytes > MAX_CA_SUBJECT_BYTES:
            raise CaError(
                f"the lock CA certificate must be at most {MAX_CA_CERT_CHARS} characters of PEM (it is {pem_chars})"
                f" and its subject at most {MAX_CA_SUBJECT_BYTES} bytes (it is {subject_bytes}): locks are sent it,"
                " and their own certificates name it (docs/FIRMWARE.md, Sizes)"
            )
        return cls(cert, key)

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def deployment(self) -> str | None:
        """The Firebase project the CA was made for (``new_ca``'s ``project``); None for a CA that names none."""
        for attribute in self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode()
            if value.startswith(DEPLOYMENT_PREFIX):
                return value.removeprefix(DEPLOYMENT_PREFIX)
        return None


def parse_csr(value: Any) -> x509.CertificateSigningRequest:
    """A well-formed, self-signed CSR for an EC P-256 key (400 ``invalid_csr`` otherwise)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CSR_CHARS:
        raise errors.BadRequest("csr must be a PEM certificate signing request", code="invalid_csr")
    try:
        csr = x509.load_pem_x509_csr(value.encode())
    except ValueError as exc:
        raise errors.BadRequest("csr is not a PEM certificate signing request", code="invalid_csr") from exc
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:  # a curve or key type the library does not know: was a 500,
        # before any code was looked up (attack run 58)
        raise errors.BadRequest("csr must be for an EC P-256 key", code="invalid_csr") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise errors.BadRequest("csr must be for an EC P-256 key", code="invalid_csr")
    try:
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signed = False
    if not signed:
        raise errors.BadRequest("csr is not signed by its own key", code="invalid_csr")
    # the CSR is the lock's proof that it holds its key: SHA-224 and SHA-3 were taken (attack run 115's
    # leftover); FIRMWARE.md names ECDSA with SHA-256
    if not isinstance(csr.signature_hash_algorithm, CSR_HASHES):
        raise errors.BadRequest(
            "csr must be signed with ECDSA and SHA-256 (SHA-384 and SHA-512 are taken too)", code="invalid_csr"
        )
    return csr


def key_sha256(csr: x509.CertificateSigningRequest) -> bytes:
    """SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo): which TLS key a pairing certified."""
    der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


@dataclass(frozen=True)
class Issuing:
    """What a deployment issues lock certificates with: its CA, their lifetime (``ttl_s``), and how many one
    credential may be issued in any 24 hours, pairing's included (``per_day``, ``LOCKWISE_LOCK_RENEWALS_PER_DAY``)."""

    ca: LockCa
    ttl_s: int
    per_day: int


@dataclass(frozen=True)
class Issued:
    pem: str
    serial: str  # hex
    not_after: dt.datetime


def issue(ca: LockCa, csr: x509.CertificateSigningRequest, identity: str, ttl_s: int, now: dt.datetime) -> Issued:
    """A client certificate for ``csr``'s key whose common name is ``identity`` (the CSR's subject is ignored).

    It ends when the CA does, if that is sooner: a certificate past its issuer's end verifies nowhere, yet the lock
    was told it held until its own ``not_after`` and renewed by that (attack run 107). Once the CA has ended nothing
    is issued: 503 ``lock_ca_expired``, for the operator to rotate it."""
    ca_end = ca.cert.not_valid_after_utc
    if ca_end <= now:
        raise errors.Unavailable(
            "the lock CA has expired: no certificate it signs verifies; the operator must rotate it",
            code="lock_ca_expired",
            retry_after_s=3600,
        )
    not_after = min(now + dt.timedelta(seconds=ttl_s), ca_end)
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise errors.BadRequest("csr must be for an EC P-256 key", code="invalid_csr")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_agreement=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), format(cert.serial_number, "x"), not_after)


#: a revocation list stays valid this long: a broker whose refresh stalls keeps admitting the certificates it knows
#: are good rather than refusing every lock (OpenSSL refuses all when the CRL it holds has passed its nextUpdate)
CRL_VALIDITY = dt.timedelta(days=30)


def crl_number(now: dt.datetime) -> int:
    """The CRL number of a list of the revocations as of ``now`` (when they were read, on the database's clock:
    ``provisioning.revoked_certificates``): that time in milliseconds, so a list read later (by any instance) has a
    greater one; the broker host installs no list whose number is not greater than the installed one's (an older
    list, replayed or from another instance's cache, took revocations back: attack run 57)."""
    return int(now.timestamp() * 1000)


def crl(ca: LockCa, revoked: list[tuple[str, dt.datetime]], now: dt.datetime) -> str:
    """The CA's revocation list (PEM) naming ``revoked`` certificates (hex serial, when revoked), numbered
    (``crl_number``; RFC 5280 asks every list for one). The entries go to the builder as one list: adding them one
    by one copied the list each time (100,000 entries: 18.7 s; attack run)."""
    entries = [
        x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(when).build()
        for serial, when in revoked
    ]
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(crl_number(now)), critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


#: how long an instance serves the revocation list it signed while the revocations stay the same (it is valid for
#: ``CRL_VALIDITY``; a newer one shows the same entries with a later thisUpdate)
CRL_REUSE = dt.timedelta(hours=1)


class CrlCache:
    """The last revocation list an instance signed, served again while the revocations it names are the same
    (``version``: anything that changes with them, such as their count and latest revocation) and it is younger than
    ``CRL_REUSE``: the list is public and fetched by every broker host every minute, and signing it anew for each
    request let anyone make the function sign 100,000 entries per request (attack run). One build at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[Any, dt.datetime, str] | None = None

    def get(self, version: Any, now: dt.datetime, build: Callable[[], str]) -> str:
        with self._lock:
            made = self._made
            if made is None or made[0] != version or not made[1] <= now < made[1] + CRL_REUSE:
                made = self._made = (version, now, build())
            return made[2]


#: how a lock CA's subject names the deployment it was made for (an organizational unit: ``LockCa.deployment``)
DEPLOYMENT_PREFIX = "LockWise deployment "


def new_ca(common_name: str = "LockWise lock CA", days: int = 3650, *, project: str | None = None) -> str:
    """A fresh lock CA as one PEM text (certificate + key): for ``infra.lock_ca`` and the local stack. Its name ends
    in a random tag: every CA was named alike, so a list or a certificate of another (a staging deployment's, one
    made again) was looked up as this one's, and only its signature told them apart (attack run 57). ``project``:
    the deployment's Firebase project, named in its subject; a devices function of another refuses it at start
    (attack run 116: production's CA copied into staging's secret let staging mint certificates production's broker
    took, for any lock's identity and the relays')."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {secrets.token_hex(4)}")]
    if project is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{DEPLOYMENT_PREFIX}{project}"))
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()
