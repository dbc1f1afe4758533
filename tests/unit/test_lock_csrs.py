"""What a lock's certificate signing request must be signed with (``lock_certs.parse_csr``)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lockwise.core import errors
from lockwise.devices import lock_certs


def _csr(algorithm: hashes.HashAlgorithm) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lock")]))
        .sign(key, algorithm)  # type: ignore[arg-type]  # each one the library signs with
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_a_csr_signed_with_a_sha2_hash_of_256_bits_or_more_is_taken(algorithm: hashes.HashAlgorithm) -> None:
    assert isinstance(lock_certs.parse_csr(_csr(algorithm)).public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("algorithm", [hashes.SHA224(), hashes.SHA3_256(), hashes.SHA3_512()], ids=lambda a: a.name)
def test_a_csr_signed_with_any_other_hash_is_refused_by_name(algorithm: hashes.HashAlgorithm) -> None:
    # SHA-224 and SHA-3 were taken (attack run 115's leftover): FIRMWARE.md names ECDSA with SHA-256, and a CSR is
    # the lock's proof that it holds its key, so what proves it is what the document says
    with pytest.raises(errors.BadRequest) as raised:
        lock_certs.parse_csr(_csr(algorithm))
    assert raised.value.code == "invalid_csr"
    assert "SHA-256" in str(raised.value)
