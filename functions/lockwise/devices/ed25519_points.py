"""Which 32-byte strings are Ed25519 public keys a lock may pair with (RFC 8032 section 5.1.3, in plain integers).

``cryptography`` takes any 32 bytes as a public key and decodes them only when verifying. A key that is no point of
the curve verifies nothing; a point of small order (the identity, or one of the other seven points of the 8-torsion,
in any of their encodings) verifies one signature for many messages: a signature ``(R, 0)`` holds for every message
whose hash puts ``R + [k]A`` at the identity, one message in eight. Both are refused at pairing, as libsodium's
``crypto_sign_verify`` refuses small-order keys. An encoding of y that is p or more (RFC 8032's step 1) is refused
too: OpenSSL's verification reduces it mod p, so such a key is a second name for the point of y - p, which the
check that no two locks share a key (it compares bytes) would not see (attack run 11).
"""

from __future__ import annotations

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def decode(raw: bytes) -> tuple[int, int] | None:
    """The point ``raw`` encodes, or None when it encodes none or not in its one canonical form (y below p)."""
    if len(raw) != 32:
        return None
    encoded = int.from_bytes(raw, "little")
    y, sign = encoded & ((1 << 255) - 1), encoded >> 255
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The sum on -x^2 + y^2 = 1 + d x^2 y^2 (complete: no exceptional pairs, d is not a square)."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def has_small_order(point: tuple[int, int]) -> bool:
    """Whether [8] ``point`` is the identity (0, 1)."""
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


def usable_public_key(raw: bytes) -> bool:
    """A point of the curve whose order is not small."""
    point = decode(raw)
    return point is not None and not has_small_order(point)
