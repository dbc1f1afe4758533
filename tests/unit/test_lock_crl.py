"""The lock CA's revocation list: every entry in it, built in one pass, and signed again only when it changes."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

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
