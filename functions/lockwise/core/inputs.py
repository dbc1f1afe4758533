"""The input boundary: JSON and text from outside, parsed into values that are safe to keep and to hand to SQL.

JSON is parsed with a nesting limit (past the recursion limit the parser itself refuses), integers of at most 20
digits, no NaN or Infinity (written so, or as a number past what a double holds: ``1e309``), and every string free
of NUL (PostgreSQL refuses 0x00 in text) and of lone UTF-16 surrogates (not encodable as UTF-8). Each refusal is a
``BadRequest`` with a stable code.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Collection
from typing import Any, TypeVar

from lockwise.core import errors, shown_text

V = TypeVar("V")

MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 20
#: the most commas, ``[`` and ``{`` a body from outside holds, counted in its raw text before it is parsed (one or
#: more for each value past the first, within strings too: a body of base64 audio holds a handful). The audio routes
#: take 3.8 to 19 MB: a body of that size made of empty arrays took 3.3 s of CPU and 436 MB of memory to parse, where
#: a clip's base64 takes 54 MB and a few ms (attack run 125); at this count, ~5 ms and ~1 MB at most
MAX_JSON_VALUES = 10_000
#: the most of a field's name a refusal quotes, and of the path of names to a string it refuses (``_check_strings``)
FIELD_QUOTED = 40
PATH_QUOTED = 200
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def loads(
    raw: bytes | str,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    check_strings: bool = True,
    most_values: int | None = MAX_JSON_VALUES,
) -> Any:
    """Parse JSON from outside (400 ``malformed_json``, ``json_too_deep``, ``json_too_many_values``,
    ``number_too_large``, ``invalid_text``, ``duplicate_field``). ``check_strings=False`` leaves ``invalid_text`` to
    the caller, for a body that carries many items judged one by one (the relay's batch: one lock's NUL byte refused
    the whole batch, and every other lock's events with it, while the relay split it down to that event).
    ``most_values``: the most commas and opening brackets the raw text may hold (``MAX_JSON_VALUES``), None for the
    relay's batch, whose every lock's payload is one string the relay wrote and is judged on its own, and for a
    lock's payload, which its 16 KiB bound.

    Linear in the input: the parser refuses nesting past the interpreter's recursion limit with a RecursionError
    (its C scanner counts its depth), and the walk that checks every string checks the depth too. (A regular
    expression that blanked strings out before counting brackets took time growing with the square of a body
    holding one open quote and many escaped ones: 40 KB froze a function for 10 s. Attack run.)"""
    if most_values is not None:
        _count_values(raw, most_values)
    try:  # UTF-8 only (RFC 8259 8.1); json.loads would also take UTF-16 and UTF-32 bytes
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        value = json.loads(
            text, parse_int=_integer, parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=_object
        )
    except RecursionError as exc:
        raise _too_deep(max_depth) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.BadRequest(f"body is not valid JSON: {exc}"[:300], code="malformed_json") from exc
    _check_strings(value, max_depth, check=check_strings)
    return value


def _count_values(raw: bytes | str, most: int) -> None:
    """400 ``json_too_many_values`` when ``raw`` holds more than ``most`` commas and opening brackets (in C, before
    the parser makes an object of each value)."""
    text = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")  # a copy, for a lock's 16 KiB
    held = text.count(b",") + text.count(b"[") + text.count(b"{")
    if held > most:
        raise errors.BadRequest(
            f"JSON holds {held} commas and opening brackets, more than the {most} a request may hold",
            code="json_too_many_values",
        )


def only_fields(obj: dict[str, Any], fields: Collection[str], where: str = "the body") -> dict[str, Any]:
    """``obj`` unchanged, or 400 ``unknown_field`` naming every key it holds that ``fields`` does not: a misspelt or
    misplaced field (a member's ``expires_at`` beside ``access`` instead of in it) is refused, not silently ignored
    and the request carried out without it (as Google's JSON APIs answer "Unknown name")."""
    unknown = sorted(key for key in obj if key not in fields)
    if unknown:
        names = ", ".join(repr(k[:FIELD_QUOTED]) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise errors.BadRequest(
            f"unknown field{'s' if len(unknown) > 1 else ''} {names} in {where};"
            f" it takes {', '.join(sorted(fields)) or 'none'}",
            code="unknown_field",
            details={"fields": [k[:FIELD_QUOTED] for k in unknown[:20]]},
        )
    return obj


def _too_deep(max_depth: int) -> errors.BadRequest:
    return errors.BadRequest(f"JSON nested deeper than {max_depth} levels", code="json_too_deep")


def unique_fields(pairs: list[tuple[str, V]], where: str) -> dict[str, V]:
    """``pairs`` as a dict, or 400 ``duplicate_field`` naming the first name given twice (RFC 8259 4: with a name
    twice, what it means depends on which one a reader keeps: ``{"access": {...}, "access": null}`` kept the last
    here, a member without limits)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise errors.BadRequest(
                    f"field {name[:FIELD_QUOTED]!r} appears twice in {where}",
                    code="duplicate_field",
                    details={"fields": [name[:FIELD_QUOTED]]},
                )
            seen.add(name)
    return obj


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return unique_fields(pairs, "one object")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise errors.BadRequest(f"integers have at most {MAX_INT_DIGITS} digits", code="number_too_large")
    return int(text)


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent, refused past what a double holds: ``float`` reads ``1e309`` as
    Infinity, which the boundary refuses when it is written so, and which no column, Firestore value or answer takes
    (attack run 119: it came through as a float, each field's own range its only check)."""
    value = float(text)
    if not math.isfinite(value):
        raise errors.BadRequest("numbers must be within what a double holds (about 1.8e308)", code="number_too_large")
    return value


def _no_constant(name: str) -> Any:
    raise errors.BadRequest(f"{name} is not a JSON number", code="malformed_json")


def _check_strings(value: Any, max_depth: int, path: str = "$", depth: int = 0, *, check: bool = True) -> None:
    """Every string's text (``check``) and the nesting depth (always)."""
    if isinstance(value, str):
        if check:
            check_text(value, path)
        return
    if not isinstance(value, dict | list):
        return
    if depth >= max_depth:
        raise _too_deep(max_depth)
    if isinstance(value, dict):
        for key, item in value.items():
            if check:
                check_text(key, path)
            # each name as other refusals quote one, its first 40 characters: whole, one name of a body's length was
            # the path, quoted by the 400 and its log line (attack run 94: a 1.5 MB name to the unauthenticated
            # pairing route, a 1.5 MB answer and a 1.5 MB log line per request)
            step = f"{path}.{key[:FIELD_QUOTED]}" if len(path) < PATH_QUOTED else path
            _check_strings(item, max_depth, step, depth + 1, check=check)
    else:
        for item in value:
            _check_strings(item, max_depth, path, depth + 1, check=check)


def check_text(value: str, field: str) -> str:
    """``value`` unchanged, or 400 ``invalid_text`` when it holds NUL or a lone surrogate."""
    if is_text(value):
        return value
    what = "a NUL character" if "\x00" in value else "a lone UTF-16 surrogate"
    raise errors.BadRequest(f"{field} contains {what}", code="invalid_text")


def is_text(value: str) -> bool:
    """Text PostgreSQL keeps: no NUL, and encodable as UTF-8 (no lone surrogate). In C: audio's base64 runs to MBs."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
#: the longest address kept (the database's column)
MAX_EMAIL = 320


def email_key(value: object, *, typed: bool = False) -> str | None:
    """An address as the back-end keeps and compares it (an invitation's, a token's), or None when it is not one.

    Lower-cased by Python on every side: PostgreSQL's ``lower()`` differs on some letters (``İ``), so an invitation
    stored lower-cased here was missed by the same address lower-cased there. Checked after lowering, which can
    lengthen it (``İ`` is two code points lower-cased: 306 characters sent became 606, past the database's 320, a
    500). Lower-casing is all Firebase Auth does to an address (it keeps ``" bob@x.com"`` and ``"bob@x.com"`` two
    accounts), so an address Firebase Auth vouches for (a token's, a lookup's) is taken exactly: one with whitespace
    anywhere is none. Trimmed, its surrounding whitespace was dropped, and the verified account made with
    ``"bob@x.com\u3000"`` (or a tab, U+0085, U+001F before or after) listed and accepted the invitation sent to
    ``bob@x.com``, and recorded the address as its own (attack run 103). Only an address someone ``typed`` (an
    invitation's) is trimmed first: whom it goes to is then that exact address, so one with a control or format
    character in it (a zero-width space) is none: it went to another address than the one the admins saw listed."""
    if not isinstance(value, str) or len(value.strip() if typed else value) > MAX_EMAIL or not is_text(value):
        # before the checks that look at each character: lower-casing never shortens, so past 320 is none either way,
        # and a typed address of 1 MB had each of its characters' Unicode name read (1.1 s of CPU: attack run 125)
        return None
    if typed and not shown_text.plain_address(value.strip()):  # a filler or private-use character too (run 118)
        return None
    key = (value.strip() if typed else value).lower()
    return key if len(key) <= MAX_EMAIL and _EMAIL_RE.fullmatch(key) else None


def is_document_id(value: str) -> bool:
    """A string Firestore takes as one document id, naming that document and no other: not empty, no ``/`` (it
    would name a path below, and a trailing one was stripped into the id before it: a uid ``V/`` wrote ``users/V``),
    not ``.`` or ``..``, not ``__name__`` (reserved), at most 1,500 bytes."""
    return (
        0 < len(value.encode("utf-8", "surrogatepass")) <= 1500
        and "/" not in value
        and value not in (".", "..")
        and not (len(value) >= 4 and value.startswith("__") and value.endswith("__"))
    )


#: times from outside must fall in this range (year 1 or 9999 near an offset overflows, and PostgreSQL would store
#: a year-1 time as a BC date that later reads fail on)
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def parse_time(value: Any, field: str, *, code: str) -> dt.datetime:
    """An ISO 8601 time with a UTC offset, between 2000 and 2200, in UTC (400 ``code`` otherwise)."""
    if not isinstance(value, str) or len(value) > 40:
        raise errors.BadRequest(f"{field} must be an ISO 8601 time with offset", code=code)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise errors.BadRequest(f"{field} needs a UTC offset", code=code)
        utc = parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise errors.BadRequest(f"{field} must be an ISO 8601 time with offset", code=code) from exc
    if not EARLIEST <= utc < LATEST:
        raise errors.BadRequest(f"{field} must be between 2000 and 2200", code=code)
    return utc


def canonical_uuid(value: Any) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID given in that form, else None (``uuid.UUID`` also takes
    ``urn:uuid:``, braces and missing hyphens, which PostgreSQL's cast does not)."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    lowered = value.lower()
    return lowered if _UUID.fullmatch(lowered) else None
