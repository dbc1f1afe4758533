"""Mosquitto password-file entries, written without the ``mosquitto_passwd`` binary.

Mosquitto 2.x stores ``user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>``; this module makes and checks
such entries so the devices function can provision lock accounts and the database keeps only the hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$...`` hash mosquitto accepts for ``password``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    candidate = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def render_password_file(entries: dict[str, str]) -> str:
    """Password-file text for ``{username: hash}``; usernames may not contain ``:`` or newlines."""
    lines = []
    for user, hashed in sorted(entries.items()):
        if not user or any(c in user for c in ":\n\r"):
            raise ValueError(f"invalid broker username {user!r}")
        lines.append(f"{user}:{hashed}")
    return "\n".join(lines) + "\n"
