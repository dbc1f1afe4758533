"""Public keys a lock may pair with: points of the curve of large order (``lockwise.devices.ed25519_points``)."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockwise.core import errors
from lockwise.devices import ed25519_points, provisioning

#: libsodium's list of small-order encodings (ed25519_ref10.c, ``has_small_order``), plus their sign-bit twins
SMALL_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    b"\xec" + b"\xff" * 30 + b"\x7f",
    b"\xed" + b"\xff" * 30 + b"\x7f",
    b"\xee" + b"\xff" * 30 + b"\x7f",
]


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_generated_keys_are_usable() -> None:
    assert all(ed25519_points.usable_public_key(raw_public(Ed25519PrivateKey.generate())) for _ in range(50))


@pytest.mark.parametrize("raw", SMALL_ORDER + [k[:31] + bytes([k[31] | 0x80]) for k in SMALL_ORDER])
def test_small_order_encodings_are_refused(raw: bytes) -> None:
    assert not ed25519_points.usable_public_key(raw)
    with pytest.raises(errors.BadRequest) as refused:
        provisioning.parse_public_key(base64.b64encode(raw).decode())
    assert refused.value.code == "invalid_public_key"


def test_why_the_identity_is_refused_one_signature_verifies_every_message() -> None:
    identity = Ed25519PublicKey.from_public_bytes(SMALL_ORDER[1])
    for message in (b"unlock", b"open the door", bytes(100)):
        identity.verify(b"\x01" + bytes(63), message)  # R = identity, S = 0: no exception, for any message
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(raw_public(Ed25519PrivateKey.generate())).verify(b"\x01" + bytes(63), b"x")


def test_bytes_that_encode_no_point_are_refused() -> None:
    not_points = [raw for i in range(2, 60) if ed25519_points.decode(raw := i.to_bytes(32, "little")) is None]
    assert len(not_points) > 10  # about half of all y have no x
    for raw in not_points:
        assert not ed25519_points.usable_public_key(raw)


def test_a_second_encoding_of_a_point_is_refused() -> None:
    """Attack run 11: 32 bytes of 0xff paired (y = 2^255 - 1, which OpenSSL reads as y = 18). Every y of p or more
    is a second name of the point of y - p, and is refused whether or not that point is usable; the canonical
    names of those points are judged as before."""
    canonical = [y.to_bytes(32, "little") for y in range(19)]
    usable = [raw for raw in canonical if ed25519_points.usable_public_key(raw)]
    assert usable  # some of those points are of large order: their second names would have paired
    for y in range(19):
        for sign in (0, 1 << 255):
            second = (y + ed25519_points.P + sign).to_bytes(32, "little")
            assert ed25519_points.decode(second) is None and not ed25519_points.usable_public_key(second)
            with pytest.raises(errors.BadRequest):
                provisioning.parse_public_key(base64.b64encode(second).decode())
    assert not ed25519_points.usable_public_key(b"\xff" * 32)
