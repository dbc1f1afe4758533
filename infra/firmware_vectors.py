"""The firmware vectors' command refusals (``docs/firmware/vectors.json`` ``command_refusals``), made from the file's
own unlock command and keys: each step of FIRMWARE.md "What the lock must check" refused once, the members' types,
two messages a lock must carry out though their bytes are not canonical, and a receipt.

    python -m infra.firmware_vectors            # check: exit 1 when the file's refusals differ from these
    python -m infra.firmware_vectors --write    # write them into the file (the rest of it unchanged)

Ed25519 signatures are deterministic (RFC 8032), so the same keys give the same bytes. A new case goes here, not
by hand into the JSON; tests/unit/test_firmware_vectors.py decides each one three ways.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

VECTORS = Path(__file__).resolve().parents[1] / "docs" / "firmware" / "vectors.json"
NOW_AFTER_ISSUE_S = 10  # the lock's clock in each case: 10 s after the command was issued, 20 s before it expires
#: the unlock issued the second before 2**31 s (``older_across_2038``)
OLDER_ID = "0e4b8c6d-2a7f-4e1b-9c3d-5f6a7b8c9d10"
OLDER_NONCE = "b2xkZXItYWNyb3NzLTIwMzg"


def _key(seed_hex: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))


def _canonical(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _message(cmd: str, key: Ed25519PrivateKey) -> str:
    return json.dumps({"cmd": cmd, "sig": base64.b64encode(key.sign(cmd.encode())).decode()}, separators=(",", ":"))


def refusals(vectors: dict[str, Any]) -> list[dict[str, Any]]:
    """The cases, in the file's order."""
    server = _key(vectors["server_key"]["seed_hex"])
    other = _key(bytes(range(0x40, 0x60)).hex())  # a valid Ed25519 key that is not the server's (nor the lock's)
    command = dict(vectors["commands"][0]["command"])
    fields = {**command, "v": 1}
    cmd = _canonical(fields)
    signed = _message(cmd, server)
    sig = json.loads(signed)["sig"]
    issued = int(command["issued_at"])

    def with_fields(**change: Any) -> str:
        return _message(_canonical({**fields, **change}), server)

    def without(name: str) -> str:
        return _message(_canonical({k: v for k, v in fields.items() if k != name}), server)

    # the same command, its outer JSON written otherwise: "\u0075" for the action's "u", a space around ":"
    escaped = json.dumps(cmd).replace('\\"unlock\\"', '\\"\\u0075nlock\\"')
    spaced = "{" + f'"cmd":{escaped},"sig" : {json.dumps(sig)}' + "}"
    # the same members, signed as sent: not sorted, indented (a lock verifies the bytes it got, never re-serialised)
    pretty = json.dumps({"v": 1, **command}, indent=1)
    cases: list[tuple[str, str, int, str, str]] = [
        ("sig_not_base64", signed.replace('=="}', '"}'), 0, "malformed", "step 1: sig is not padded standard base64"),
        ("sig_missing", json.dumps({"cmd": cmd}, separators=(",", ":")), 0, "malformed", "step 1: no sig member"),
        (
            "cmd_not_a_string",
            json.dumps({"cmd": json.loads(cmd), "sig": sig}, separators=(",", ":"), sort_keys=False),
            0,
            "malformed",
            "step 1: cmd is an object, not a JSON text in a string",
        ),
        ("not_json", "unlock", 0, "malformed", "step 1: the payload is not JSON"),
        (
            "signed_by_another_key",
            _message(cmd, other),
            0,
            "bad_signature",
            "step 2: a valid Ed25519 signature, by a key that is not the server's",
        ),
        ("version_2", with_fields(v=2), 0, "unsupported_version", "step 3: v is not 1 (signed by the server key)"),
        ("version_true", with_fields(v=True), 0, "unsupported_version", "step 3: v is true, not the integer 1"),
        ("version_float", with_fields(v=1.0), 0, "unsupported_version", "step 3: v is 1.0, not the integer 1"),
        ("extra_member", with_fields(door="front"), 0, "malformed", "step 3: a member the contract does not name"),
        ("missing_member", without("nonce"), 0, "malformed", "step 3: no nonce"),
        (
            "issued_at_a_string",
            with_fields(issued_at=str(issued)),
            0,
            "malformed",
            "step 3: issued_at must be an integer",
        ),
        (
            "expires_at_a_float",
            with_fields(expires_at=command["expires_at"] + 0.5),
            0,
            "malformed",
            "step 3: expires_at must be an integer",
        ),
        ("not_an_object", _message("[1]", server), 0, "malformed", "step 3: the signed text is not a JSON object"),
        (
            "superseded",
            signed,
            issued + 1,
            "superseded",
            "step 7: issued_at older than the last command carried out",
        ),
        ("same_second_as_the_last", signed, issued, "act", "step 7: an equal issued_at is carried out"),
        (
            "outer_json_escapes",
            spaced,
            0,
            "act",
            "the outer JSON escapes letters and spaces differently: verify the cmd string as decoded, not the raw"
            " payload",
        ),
        (
            "not_canonical",
            _message(pretty, server),
            0,
            "act",
            "the signed cmd text is not in the canonical form: verify the bytes received, never re-serialise",
        ),
        (
            "receipt",
            vectors["receipts"]["receipt"],
            0,
            "receipt",
            "step 0: a receipt, never acted on and never acknowledged",
        ),
    ]
    # across 2**31 s (2038-01-19T03:14:08Z), within a lock's life: a lock holding its times in 32 signed bits reads
    # the first second past it as 1901 (or as 2**31 - 1, as cJSON's valueint saturates), so the first command past it
    # is refused as superseded (or expired), and an unlock re-sent from the second before is newer than the last one
    # carried out: it is carried out (attack run 119)
    past = next(c["command"] for c in vectors["commands"] if c["name"] == "unlock_after_2038")
    edge = int(past["issued_at"])
    older = {**past, "v": 1, "id": OLDER_ID, "nonce": OLDER_NONCE, "issued_at": edge - 1, "expires_at": edge + 29}
    later: list[tuple[str, str, int, str, str, int]] = [
        (
            "issued_past_2038",
            _message(_canonical({**past, "v": 1}), server),
            edge - 1,
            "act",
            "steps 5 and 7 past 2**31 s (2038-01-19T03:14:08Z): held in 32 signed bits, its issued_at wraps to 1901,"
            " older than the last one carried out (or, saturated at 2**31 - 1, it has expired)",
            edge + NOW_AFTER_ISSUE_S,
        ),
        (
            "older_across_2038",
            _message(_canonical(older), server),
            edge,
            "superseded",
            "step 7 across 2**31 s: issued the second before the last one carried out; held in 32 signed bits, the"
            " last wraps below it and this older unlock is carried out",
            edge + 5,
        ),
    ]
    return [
        {
            "name": name,
            "message": message,
            "lock_id": command["lock"],
            "now": now,
            "nonces_seen": [],
            "last_issued_at": last,
            "expect": expect,
            "why": why,
        }
        for name, message, last, expect, why, now in [
            *((*case, issued + NOW_AFTER_ISSUE_S) for case in cases),
            *later,
        ]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the refusals into the vectors file")
    args = parser.parse_args(argv)
    vectors = json.loads(VECTORS.read_text())
    made = refusals(vectors)
    if args.write:
        vectors["command_refusals"] = made
        VECTORS.write_text(json.dumps(vectors, indent=2) + "\n")
        return 0
    if vectors["command_refusals"] != made:
        differ = [case["name"] for case, mine in zip(vectors["command_refusals"], made, strict=False) if case != mine]
        sys.stderr.write(f"infra.firmware_vectors: the file's refusals differ: {differ or 'their number'}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
