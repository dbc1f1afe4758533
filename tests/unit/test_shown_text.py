"""The rule for text one person writes and others read (``lockwise.core.shown_text``, attack run 118)."""

from __future__ import annotations

import unicodedata

import pytest

from lockwise.core import errors, inputs, shown_text
from lockwise.devices import locks

#: names writing needs, kept as they are
WRITTEN = [
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 room",  # an emoji sequence: zero-width joiners
    "\u2764\ufe0f\u200d\U0001f525 den",  # a variation selector and a joiner in a row
    "#\ufe0f\u20e3 keypad",  # a keycap: a selector and an enclosing mark
    "\U0001f3f3\ufe0f\u200d\U0001f308 flat",
    "\u062f\u0631\u200c\u0647\u0627",  # Persian: a zero-width non-joiner
    "\u200f\u05d3\u05dc\u05ea 2",  # Hebrew led by a right-to-left mark
    "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",  # pointed Hebrew
    "\u0f56\u0f66\u0f92\u0fb2\u0f74\u0f56\u0f66",  # a Tibetan stack
    "\u8449\U000e0100 house",  # a kanji's variant (an ideographic variation selector)
    "Ti\u1ebfng Vi\u1ec7t",
    "Caf\u00e9 door",
    # attack run 122: refused as invisible before
    "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f flat",  # England's flag: tags
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f\U0001f3f4\U000e0067\U000e0062"
    "\U000e0077\U000e006c\U000e0073\U000e007f",  # Scotland's and Wales's
    "\u182a\u1820\u1833\u1822\u180b \u1826\u1837",  # Mongolian with a free variation selector
]

#: (name, what the refusal names): each a way a name looked empty, like another, or spilt over the page
MISLEADING = [
    ("\u200d", "no visible character before it"),  # a joiner alone: looked empty
    ("\u200e\u200f", "no visible character"),  # direction marks alone
    ("\u0301", "no visible character before it"),  # a combining mark alone
    ("\ufe0f", "no visible character before it"),
    ("Front \u0301door", "no visible character before it"),  # a mark on a space
    ("\u3164", "U+3164 HANGUL FILLER"),  # a letter drawn as nothing: looked empty
    ("Home\u115f", "U+115F"),  # "Home" again, with a filler
    ("Gar\u034fage", "U+034F"),  # the combining grapheme joiner
    ("Gar\u2065age", "U+2065"),  # default-ignorable, though unassigned
    ("Door\U000e0041", "U+E0041"),  # a tag
    ("\U0001f3f4\U000e0075\U000e0073\U000e0074\U000e0078\U000e007f", "U+E0075"),  # a flag's tags Unicode does not
    ("\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f\U000e0061", "U+E0061"),  # tags after one
    ("Door\u180e", "U+180E"),  # the Mongolian vowel separator: a format character
    ("\u180b", "no visible character before it"),
    ("\u2800", "no visible character"),  # the blank Braille pattern
    ("\u2800 \u2800", "no visible character"),
    ("x" + "\u0300" * 7, "more than 6 combining marks"),  # a flood: stacked over the lines around it
    ("Z" + "\u0336\u0337\u0338" * 20, "more than 6 combining marks"),
    ("\uf8ff Official", "private-use"),  # a platform's logo on some devices, nothing on others
    ("Door\ufdd0", "noncharacters"),
    ("Home\nas admin, from owner@example.com", "control characters"),  # a line faked
    ("Home\tadmin", "control characters"),
    ("Home\u2028Owner", "line or paragraph separators"),
    ("Front \u202erood", "U+202E"),
    ("\u2066Garage\u2069", "U+2066"),
    ("Back\u200bdoor", "U+200B"),
]


@pytest.mark.parametrize("name", WRITTEN)
def test_names_writing_needs_are_kept(name: str) -> None:
    assert locks.parse_name(name) == name


@pytest.mark.parametrize(("name", "named"), MISLEADING)
def test_a_name_that_would_mislead_its_reader_is_refused_saying_why(name: str, named: str) -> None:
    with pytest.raises(errors.BadRequest) as refused:
        locks.parse_name(name)
    assert refused.value.code == "invalid_name"
    assert named in refused.value.message, refused.value.message


def test_a_name_is_kept_in_one_spelling_and_without_a_gap() -> None:
    """NFC: "Cafe" and a combining acute is the same name as "Café", kept as one; a run of spaces inside is one space
    (a gap of 90 pushed the rest out of view), and the spaces around are dropped."""
    assert locks.parse_name(" Cafe\u0301 \u3000\u00a0  door\u2003") == "Caf\u00e9 door"
    assert locks.parse_name("Front\u00a0door") == "Front\u00a0door"  # one space is as typed


def test_a_refused_name_in_an_update_is_held_until_compared_with_the_stored_one() -> None:
    """``PATCH /devices/locks/{id}``: a name the rule refuses is kept with its refusal, not raised while parsing, so a
    name stored before the rule can be sent back beside a new threshold (``changes_to_make`` compares it); the
    database half is ``test_a_name_stored_before_the_rule_sent_back_unchanged_lets_the_owner_change_the_rest``."""
    update = locks.parse_update({"name": "Home\u115f", "voice_threshold": 0.7})
    assert update.changes == {"voice_threshold": 0.7}
    assert update.name_sent == "Home\u115f" and update.refusal is not None and update.refusal.code == "invalid_name"
    assert locks.parse_update({"name": " Front door "}) == locks.Update({"name": "Front door"}, " Front door ")
    with pytest.raises(errors.BadRequest) as empty:
        locks.parse_update({})
    assert empty.value.code == "invalid_update"
    with pytest.raises(errors.BadRequest) as threshold:
        locks.parse_update({"name": "Home\u115f", "voice_threshold": 2})
    assert threshold.value.code == "invalid_threshold"


def test_the_length_is_counted_as_kept() -> None:
    assert locks.parse_name("e\u0301" * 100) == "\u00e9" * 100  # 200 sent, 100 kept
    with pytest.raises(errors.BadRequest):
        locks.parse_name("x" * 101)


@pytest.mark.parametrize("address", ["fri\u3164end@example.com", "fri\u115fend@example.com", "\uf8ff@example.com"])
def test_a_typed_address_with_a_filler_or_a_private_character_is_none(address: str) -> None:
    """An invitation's address is listed to the admins: one with a Hangul filler read as "friend" (run 103 refused
    control and format characters only)."""
    assert inputs.email_key(address, typed=True) is None


@pytest.mark.parametrize(
    "address", ["ops\u202emoc.evil@example.com", "owner\u200d@example.com", "a\u3164b@example.com", "a\u0301b@x.com"]
)
def test_an_address_others_would_be_shown_must_be_plain(address: str) -> None:
    assert shown_text.plain_address(address) is (address == "a\u0301b@x.com")


@pytest.mark.parametrize(
    ("address", "plain"),
    [
        ("mom@ex\u0430mple.com", False),  # a Cyrillic a in a Latin word: drawn as mom@example.com
        ("o\u03bfps@example.com", False),  # a Greek omicron
        ("\U0001d5c6om@example.com", False),  # a mathematical m
        ("m\uff4fm@example.com", False),  # a fullwidth o
        ("mom@example.com", True),
        ("\u0438\u0432\u0430\u043d@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", True),  # Cyrillic alone
        ("taro\u3084\u307e\u30fc@example.jp", True),  # Latin with kana, as Japanese writes
        ("\ud55c\uad6dkim@example.kr", True),  # Latin with Hangul
        ("jos\u00e9@caf\u00e9.fr", True),
        ("\u0430\u0440\u0435@example.com", False),  # Cyrillic alone, drawn as ape@example.com
        ("mom@\u0435\u0445\u0430\u0440\u0440\u0435.com", False),
        ("\u03bf\u03c1\u03b1@example.gr", False),  # Greek drawn as opa
        ("\u0440\u043e\u0441@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", True),  # read as Cyrillic
        ("\u0438\u0432\u0430\u043d@mail.com", True),  # not drawn as Latin
        ("123@example.com", True),
    ],
)
def test_an_address_mixing_scripts_as_a_lookalike_does_is_not_plain(address: str, plain: bool) -> None:
    assert shown_text.plain_address(address) is plain
    assert (inputs.email_key(address, typed=True) is not None) is plain


#: "a" and pairs of combining marks of two classes (230, 220) in the order NFC must swap: Python's NFC moves each
#: mark back past the ones before it, time growing with the square of the run (attack run 125: 50,000 pairs, 7.8 s)
MARKS_OUT_OF_ORDER = "a" + "\u0301\u0316" * 50_000


def _normalized_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the text ``shown_text`` hands NFC from now on (handed back as given: the test reads the
    lengths, and the quadratic order the real one puts a run of marks in is what it must never be asked for)."""
    lengths: list[int] = []

    def normalize(form: str, text: str) -> str:
        lengths.append(len(text))
        return text

    monkeypatch.setattr(unicodedata, "normalize", normalize)
    return lengths


def test_a_name_far_past_its_limit_is_refused_before_it_is_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = _normalized_lengths(monkeypatch)
    with pytest.raises(errors.BadRequest) as refused:
        locks.parse_name(MARKS_OUT_OF_ORDER)
    assert refused.value.code == "invalid_name"
    assert "at most 400 as sent" in refused.value.message
    assert lengths == []


def test_a_name_sent_decomposed_and_spaced_within_four_characters_a_kept_one_is_kept() -> None:
    """Hangul typed as jamo (three for a syllable) with spaces around: 400 sent, 100 kept."""
    assert locks.parse_name(" " * 50 + "\u1112\u1161\u11ab" * 100 + " " * 50) == "\ud55c" * 100


def test_a_locks_long_reason_is_cut_before_it_is_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = _normalized_lengths(monkeypatch)
    assert shown_text.kept(MARKS_OUT_OF_ORDER, 200) is None  # a flood of marks, refused by the rule
    assert lengths == [800]
