"""The input boundary: what JSON and text from outside may hold before anything keeps it or hands it to SQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from lockwise.core import errors, inputs, shown_text
from lockwise.core.http import parse_json_object


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "json_too_deep"),  # json.loads alone raises RecursionError: a 500
        (b'{"a": ' + b"[" * 33 + b"]" * 33 + b"}", "json_too_deep"),
        (b'{"n": 1' + b"0" * 5000 + b"}", "number_too_large"),  # int() alone raises ValueError past 4300 digits
        (b'{"n": -123456789012345678901}', "number_too_large"),
        # past what a double holds: read as Infinity, which the boundary refuses when written so (attack run 119)
        (b'{"voice_threshold": 1e309}', "number_too_large"),
        (b"[-1.5E400]", "number_too_large"),
        (b'{"ts": 2' + b"0" * 308 + b".0}", "number_too_large"),  # 2e308 in full
        (b'{"name": "a\\u0000b"}', "invalid_text"),  # PostgreSQL refuses NUL in text
        (b'{"name": "\\ud800"}', "invalid_text"),  # a lone surrogate cannot be encoded as UTF-8
        (b'{"\\u0000": 1}', "invalid_text"),
        (b'{"access": {"expires_at": "2030-01-01T00:00:00Z"}, "access": null}', "duplicate_field"),
        (b'[{"a": {"b": 1, "c": 2, "b": 3}}]', "duplicate_field"),  # at any depth
        (b"[NaN]", "malformed_json"),
        (b'{"a": Infinity}', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        ('{"a": 1}'.encode("utf-16"), "malformed_json"),  # UTF-8 only: json.loads would take UTF-16 and -32 bytes
        ('{"a": 1}'.encode("utf-32-le"), "malformed_json"),
        (b'\xef\xbb\xbf{"a": 1}', "malformed_json"),  # a byte-order mark
        (b'{"a": 1', "malformed_json"),
    ],
)
def test_json_from_outside_is_refused_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        inputs.loads(raw)
    assert caught.value.code == code and caught.value.status == 400


def test_every_json_body_crosses_the_same_boundary() -> None:
    with pytest.raises(errors.BadRequest, match="deeper"):
        parse_json_object(b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", None)


def test_a_body_judged_item_by_item_leaves_the_text_check_to_its_items_but_not_the_others() -> None:
    body = b'{"events": [{"payload": "on\\u0000line"}, {"payload": "\\ud800"}]}'
    with pytest.raises(errors.BadRequest, match="NUL"):
        inputs.loads(body)
    events = inputs.loads(body, check_strings=False)["events"]
    assert [inputs.is_text(e["payload"]) for e in events] == [False, False]
    for refused in (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", b'{"n": 1' + b"0" * 30 + b"}", b'{"a": 1, "a": 2}'):
        with pytest.raises(errors.BadRequest):  # nesting, numbers and names twice still refused
            inputs.loads(refused, check_strings=False)


@pytest.mark.parametrize(
    "value",
    [
        {"name": 'brackets "[[[[{{{{" and escapes \\" inside strings do not count as nesting'},
        {"n": 12345678901234567890, "f": 1.5e300, "neg": -5},
        {"emoji": "🔒", "accents": "Fechadura da porta"},
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],  # exactly 32 deep
    ],
)
def test_ordinary_json_passes_unchanged(value: object) -> None:
    assert inputs.loads(json.dumps(value).encode()) == value
    assert inputs.loads(json.dumps(value, ensure_ascii=False)) == value


def test_canonical_uuid_takes_only_the_canonical_form() -> None:
    canonical = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert inputs.canonical_uuid(canonical) == canonical
    assert inputs.canonical_uuid(canonical.upper()) == canonical
    for other in (
        f"urn:uuid:{canonical}",
        f"{{{canonical}}}",
        canonical.replace("-", ""),
        "0f8fad5bd9cb-469f-a165-70867728950e-",
        None,
        7,
    ):
        assert inputs.canonical_uuid(other) is None, other


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1999-12-31T23:59:59Z", "2200-01-01T00:00:00Z",
     "2030-01-01T00:00:00", "not a time", 1893456000, "2030-01-01T00:00:00+00:00" + " " * 40],
)  # fmt: skip
def test_times_from_outside_are_bounded_and_need_an_offset(value: object) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        inputs.parse_time(value, "valid_from", code="invalid_access")
    assert caught.value.code == "invalid_access"


def test_a_time_with_an_offset_comes_back_in_utc() -> None:
    parsed = inputs.parse_time("2030-06-01T12:00:00+02:00", "valid_from", code="invalid_access")
    assert parsed.isoformat() == "2030-06-01T10:00:00+00:00"


@pytest.mark.parametrize("value", ["", "plain", "ünïcødé ✓", "a\x00b", "\ud800", "x\udfffy", "\U0001f512"])
def test_is_text_answers_as_check_text_does(value: str) -> None:
    try:
        inputs.check_text(value, "v")
        taken = True
    except errors.BadRequest:
        taken = False
    assert inputs.is_text(value) is taken


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "' + b'\\"' * 500_000,  # one open quote, then escaped ones: the old pre-scan's worst case
        b'"' + b'\\"' * 500_000 + b"\\",
        b'{"a": ' + b"[" * 500_000,  # deep and never closed
    ],
)
def test_json_is_refused_in_time_linear_in_its_size(raw: bytes) -> None:
    """Attack run: the regular expression that blanked strings out before counting brackets took time growing with
    the square of a body holding one open quote and many escaped ones (40 KB: 10 s with the GIL held, the 2 MB limit:
    hours). 1 MB of each, in a fresh process whose 60 s limit is a hang detector, not a speed measure."""
    code = (
        "import sys; from lockwise.core import errors, inputs\n"
        "try:\n    inputs.loads(sys.stdin.buffer.read())\nexcept errors.BadRequest as e:\n    print(e.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=raw, capture_output=True, timeout=60, env={**os.environ}, check=True
    )
    assert done.stdout.decode().strip() in ("malformed_json", "json_too_deep", "json_too_many_values")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("Friend@Example.COM", "friend@example.com"),
        # as Firebase Auth vouches for it: whitespace is no address's, around it too (attack run 103)
        ("  Friend@Example.COM ", None),
        ("friend@example.com\u3000", None),
        ("\x1ffriend@example.com", None),
        ("\u0130nci@example.com", "i\u0307nci@example.com"),  # Python's lower-casing, the one form compared
        ("a@" + "\u0130" * 150 + ".com", "a@" + "i\u0307" * 150 + ".com"),  # 306 characters lower-cased
        ("a@" + "\u0130" * 300 + ".com", None),  # 606 lower-cased: past the database's 320, not only as sent
        ("not-an-address", None),
        ("two@@example.com", None),
        ("a\u0000@example.com", None),
        ("\ud800@example.com", None),
        (["a@example.com"], None),
        (None, None),
    ],
)
def test_email_key_is_the_one_form_an_address_is_kept_and_compared_in(value: object, key: str | None) -> None:
    assert inputs.email_key(value) == key


def test_only_a_typed_address_is_trimmed() -> None:
    assert inputs.email_key("  Friend@Example.COM\t", typed=True) == "friend@example.com"
    assert inputs.email_key("friend @example.com", typed=True) is None
    for invisible in ("\u200b", "\u200d", "\u2066", "\x7f", "\u00ad"):  # shown as friend@example.com to the admins
        assert inputs.email_key(f"fri{invisible}end@example.com", typed=True) is None
        assert inputs.email_key(f"fri{invisible}end@example.com") == f"fri{invisible}end@example.com"  # an account's


def test_json_holding_more_values_than_a_request_may_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The audio routes take 3.8 to 19 MB of JSON: 3.8 MB of empty arrays took 0.68 s of CPU and 92 MB of memory to
    parse where a clip's base64 takes 11 MB, and 19 MB 3.3 s and 436 MB (attack run 125). Counted in the raw text
    first, so the parser never makes them."""
    parsed: list[object] = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(a))
    for raw in (b"[" + b"[]," * 10_000 + b"[]]", '{"a": [' + "{}," * 10_000 + "{}]}", b'["' + b"," * 10_001 + b'"]'):
        with pytest.raises(errors.BadRequest) as refused:
            inputs.loads(raw)
        assert refused.value.code == "json_too_many_values"
        assert "more than the 10000" in refused.value.message
    assert parsed == []


def test_json_within_the_count_of_values_is_parsed_and_the_relays_batch_is_not_counted() -> None:
    assert len(inputs.loads(b"[" + b"[]," * 4_999 + b"[]]")) == 5_000  # 9,999 commas and brackets: taken
    audio = {"pcm_base64": "QUJD" * 250_000, "sample_rate": 16000}  # base64 holds none
    assert inputs.loads(json.dumps({"samples": [audio] * 5})) == {"samples": [audio] * 5}
    batch = json.dumps({"events": [{"topic": "t", "payload": '{"a": 1, "b": 2}'}] * 5_000})
    assert len(inputs.loads(batch, check_strings=False, most_values=None)["events"]) == 5_000


def test_a_typed_address_past_what_is_kept_is_none_before_its_characters_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of a typed address's characters has its Unicode name read for the lookalike check: an address of a
    megabyte, which no column keeps, took 1.1 s of CPU an invitation (attack run 125)."""
    read: list[int] = []

    def plain_address(address: str) -> bool:
        read.append(len(address))
        return True

    monkeypatch.setattr(shown_text, "plain_address", plain_address)
    assert inputs.email_key("a" * 1_000_000 + "@example.com", typed=True) is None
    longest = "a" * 64 + "@" + "b" * 251 + ".com"  # 320: kept, surrounding spaces trimmed first
    assert inputs.email_key(" " * 100 + longest + " " * 100, typed=True) == longest
    assert read == [320]


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("uid-123", True),
        ("a.b", True),
        ("__x", True),
        ("__", True),
        ("%2F", True),
        ("x" * 1500, True),
        ("", False),
        ("V/", False),
        ("/V", False),
        ("org/team/carol", False),
        (".", False),
        ("..", False),
        ("__name__", False),
        ("\u00e9" * 751, False),  # 1,502 bytes
    ],
)
def test_is_document_id_takes_only_what_names_one_document(value: str, taken: bool) -> None:
    assert inputs.is_document_id(value) is taken


def test_a_mirror_write_to_a_path_that_is_not_one_of_ids_is_left_out_and_holds_up_nothing() -> None:
    """A uid ``V/`` made ``users/V/``, which the Firestore client stripped into ``users/V``: another user's document;
    ``org/team/carol`` made a deeper document, each part an id. Such a write (a uid recorded before they were
    checked) is left out; raising made every membership change at a lock with such a member a 500 (attack run)."""
    from lockwise.core import mirror

    assert mirror.user_doc("org/team/carol") == mirror.access_doc("l", "V/") == mirror.user_doc("__name__") == ""
    assert mirror.access_doc("l", "carol") == "locks/l/access/carol"
    queued: list[list[str]] = []

    class Recording:
        def run(self, sql: str, **params: Any) -> list[list[Any]]:
            queued.append(params["p"])
            return []

    paths = ("users/V/", "users//x", "locks/l/access/..", "", "users/ok")
    writes: list[mirror.Write] = [(path, "set", {}) for path in paths]
    mirror.enqueue_many(Recording(), writes)  # type: ignore[arg-type]
    assert queued == [["users/ok"]]


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 room",  # an emoji sequence: zero-width joiners
        "\u062f\u0631\u200c\u0647\u0627",  # Persian: a zero-width non-joiner
        "\u05d3\u05dc\u05ea\u200f 2",  # Hebrew and a digit: a right-to-left mark
        "Caf\u00e9 door",
    ],
)
def test_lock_names_keep_the_format_characters_writing_needs(name: str) -> None:
    from lockwise.devices import locks

    assert locks.parse_name(name) == name


@pytest.mark.parametrize(
    "mark", ["\u202e", "\u202a", "\u2066", "\u2069", "\u200b", "\u2060", "\ufeff", "\U000e0041", "\u2028", "\u2029"]
)
def test_lock_names_refuse_invisible_format_characters(mark: str) -> None:
    from lockwise.devices import locks

    with pytest.raises(errors.BadRequest) as refused:
        locks.parse_name(f"Front{mark}door")
    assert refused.value.code == "invalid_name"


@pytest.mark.parametrize(
    "body",
    [
        {"A" * 100_000: {"x": "\u0000"}},  # the path to the string refused: its names
        {"a": {"B" * 100_000: {"c": "\ud800"}}},
        {"C" * 100_000: 1, "D" * 100_000: 2},  # unknown fields: their names
    ],
)
def test_a_refusal_quotes_the_first_characters_of_a_name_not_the_name(body: dict[str, Any]) -> None:
    """A name of a body's length, quoted whole in the path to a string refused: the unauthenticated pairing route's
    400 and its log line were as long as the body (attack run 94)."""
    with pytest.raises(errors.BadRequest) as caught:
        parse_json_object(json.dumps(body).encode(), ("a",))
    assert caught.value.code in ("invalid_text", "unknown_field")
    assert len(caught.value.message) < 400
    assert len(json.dumps(errors.error_body(caught.value, "r"))) < 2000


def test_no_error_carries_a_message_longer_than_its_bound() -> None:
    err = errors.BadRequest("x" * 100_000, code="c")
    assert len(err.message) == errors.MESSAGE_MAX and err.message.endswith("...") and str(err) == err.message
    assert errors.LockwiseError("short").message == "short"
