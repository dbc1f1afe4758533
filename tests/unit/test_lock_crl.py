"""The lock CA's revocation list: every entry in it, built in one pass, and signed again only when it changes."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockwise.core import errors
from lockwise.devices import lock_certs

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_the_list_names_every_revoked_certificate_and_is_signed_by_the_ca() -> None:
    ca = lock_certs.LockCa.from_pem(lock_certs.new_ca())
    revoked = [(f"{i + 1:x}", NOW - dt.timedelta(seconds=i)) for i in range(20_000)]
    crl = x509.load_pem_x509_crl(lock_certs.crl(ca, revoked, NOW).encode())
    assert len(crl) == 20_000 and crl.is_signature_valid(ca.key.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(int("4e20", 16))
    assert entry is not None and entry.revocation_date_utc == NOW - dt.timedelta(seconds=19_999)


def test_a_list_is_signed_again_only_when_its_revocations_change_or_it_ages() -> None:
    cache, built = lock_certs.CrlCache(), []

    def build() -> str:
        built.append(1)
        return f"crl {len(built)}"

    assert cache.get((3, NOW), NOW, build) == "crl 1"
    assert cache.get((3, NOW), NOW + dt.timedelta(minutes=59), build) == "crl 1"  # the same revocations
    assert cache.get((4, NOW), NOW + dt.timedelta(minutes=59), build) == "crl 2"  # one more
    later = NOW + dt.timedelta(minutes=59) + lock_certs.CRL_REUSE
    assert cache.get((4, NOW), later, build) == "crl 3"  # aged
    assert cache.get((4, NOW), later - dt.timedelta(minutes=1), build) == "crl 4"  # a clock moved back
    assert len(built) == 4


def test_a_certificate_ends_no_later_than_its_ca_and_an_ended_ca_issues_none() -> None:
    """A certificate past its CA's end verifies nowhere, yet it told the lock it held until then (attack run 107)."""
    ca = lock_certs.LockCa.from_pem(lock_certs.new_ca(days=30))
    ca_end = ca.cert.not_valid_after_utc
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lock")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    early = ca_end - dt.timedelta(days=20)
    issued = lock_certs.issue(ca, csr, "lock-1", 365 * 86_400, early)
    cert = x509.load_pem_x509_certificate(issued.pem.encode())
    assert issued.not_after == cert.not_valid_after_utc == ca_end
    short = lock_certs.issue(ca, csr, "lock-1", 86_400, early)  # (a lifetime inside the CA's is kept)
    assert short.not_after == early + dt.timedelta(days=1)
    with pytest.raises(errors.Unavailable) as ended:
        lock_certs.issue(ca, csr, "lock-1", 86_400, ca_end)
    assert ended.value.code == "lock_ca_expired"
