"""Signed commands: what a lock receives, and how it checks that the server sent it.

The message on ``lockwise/<lock>/cmd`` is ``{"cmd": "<canonical JSON>", "sig": "<base64 Ed25519 signature>"}``. The
lock verifies the signature over the exact bytes of ``cmd`` with the server public key it got at provisioning, then
checks ``lock`` is itself, ``expires_at`` is in the future and ``nonce`` is new. The server keeps only what it signed.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VERSION = 1


@dataclass(frozen=True)
class Command:
    """The signed part of a command."""

    id: str
    lock: str
    action: str
    nonce: str
    issued_at: int
    expires_at: int

    def canonical(self) -> str:
        body = {"v": VERSION, **self.__dict__}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


class BadCommand(ValueError):
    """A command message that must not be acted on; ``reason`` is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def private_key(seed_b64: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign(command: Command, key: Ed25519PrivateKey) -> str:
    """The message the relay publishes for ``command``."""
    canonical = command.canonical()
    signature = base64.b64encode(key.sign(canonical.encode())).decode()
    return json.dumps({"cmd": canonical, "sig": signature}, separators=(",", ":"))


def verify(message: bytes | str, server_public_key_b64: str) -> Command:
    """Check a received message's signature and shape; the caller checks lock, expiry and nonce."""
    try:
        outer = json.loads(message)
        canonical, signature = outer["cmd"], base64.b64decode(outer["sig"], validate=True)
        if not isinstance(canonical, str):
            raise TypeError("cmd is not a string")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadCommand("malformed") from exc
    try:
        signed = canonical.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate escaped in the outer JSON: no UTF-8 bytes to verify
        raise BadCommand("malformed") from exc
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(server_public_key_b64))
    try:
        public.verify(signature, signed)
    except InvalidSignature as exc:
        raise BadCommand("bad_signature") from exc
    fields = json.loads(canonical)
    if not isinstance(fields, dict):  # signed, but not a command (docs/FIRMWARE.md step 3)
        raise BadCommand("malformed")
    version = fields.pop("v", None)
    if type(version) is not int or version != VERSION:  # the integer 1: not true, not 1.0 (equal to 1 in Python)
        raise BadCommand("unsupported_version")
    if set(fields) != _TYPES.keys() or any(type(fields[name]) is not kind for name, kind in _TYPES.items()):
        raise BadCommand("malformed")  # the members and their types exactly (a bool is no integer, 1.0 neither)
    return Command(**fields)


#: each member of a command and its JSON type, as docs/FIRMWARE.md's table gives them
_TYPES: dict[str, type] = {
    "id": str,
    "lock": str,
    "action": str,
    "nonce": str,
    "issued_at": int,
    "expires_at": int,
}
