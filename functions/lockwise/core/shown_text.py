"""Text one person (or a lock) writes and others read as written: a lock's name, the firmware a lock reports, an
address Firebase Auth vouches for and the members' listing shows. The one rule for all of it, at the input boundary.

Such text is kept NFC (two spellings of "Café" are one name), without surrounding whitespace and with a run of
spaces inside made one, and it must be plain text a reader sees all of:

* no control character (C0, DEL, C1: a newline or a tab fakes a line or a column) and no line or paragraph separator;
* no invisible character: format characters (bidi overrides and isolates, zero-width spaces, tags) and the other
  default-ignorable code points a font draws as nothing (Hangul fillers, the combining grapheme joiner, Mongolian
  and Khmer invisible letters, musical formatting), but the marks writing needs: the joiners of emoji sequences and
  scripts (ZWNJ, ZWJ), the marks of mixed right-to-left text (LRM, RLM, ALM) and variation selectors (an emoji's
  colour, a kanji's variant, a Mongolian letter's form), each after a visible character, and the tags of the
  flags of England, Scotland and Wales;
* no private-use character (a platform's logo or an icon font's glyph, drawn on some devices and not on others)
  and no noncharacter;
* at most ``MAX_MARKS`` combining marks and joiners in a row (a flood of them stacks over the lines around it);
* at least one visible character: a name of marks, joiners, fillers or the blank Braille pattern looks empty.

A refusal is a ``BadRequest`` (400) with the caller's code, its message naming what the text holds.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from lockwise.core import errors

#: the most combining marks, joiners and variation selectors one visible character carries (Vietnamese, pointed
#: and cantillated Hebrew, Tibetan stacks and emoji sequences stay within it; "Zalgo" text stacks dozens)
MAX_MARKS = 6
#: the format characters writing needs, taken when they follow a visible character (the direction marks anywhere)
JOINERS = frozenset("\u200c\u200d")
DIRECTION_MARKS = frozenset("\u200e\u200f\u061c")
#: Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt) outside the format characters (Cf, refused by
#: category) and the variation selectors: drawn as nothing, each a way to make one name look like another or empty
_IGNORABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180e\u2065\u3164\uffa0\ufff0-\ufff8\U000e0000-\U000e00ff\U000e01f0-\U000e0fff]"
)
#: variation selectors: the emoji and ideographic ones, and Mongolian's free variation selectors (a letter's form
#: in the traditional script, which its writers type: refused as invisible, a Mongolian name was, attack run 122)
_VARIATION = re.compile("[\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
#: the emoji tag sequences Unicode recommends (UTS #51's RGI set): the flags of England, Scotland and Wales, a black
#: flag and the tags spelling gbeng, gbsct or gbwls, then the cancel tag. Each is taken as the black flag it is
#: drawn on; any other tag is invisible text and refused (the three flags were, attack run 122)
_FLAG_TAGS = re.compile(
    "\U0001f3f4\U000e0067\U000e0062(?:\U000e0065\U000e006e\U000e0067|\U000e0073\U000e0063\U000e0074"
    "|\U000e0077\U000e006c\U000e0073)\U000e007f"
)
#: drawn blank though not a space: the Braille pattern without dots
_BLANK = frozenset("\u2800")
_SPACES = re.compile(r"[^\S\n\r\t\v\f\x1c-\x1f\x85\u2028\u2029]{2,}")
#: the most characters sent for each one kept that text is normalized from: NFC takes three for one at most (a
#: Hangul syllable typed as jamo, a Vietnamese letter with two accents decomposed), and a space or two around it.
#: Longer text is refused (``parse``) or cut (``kept``) before NFC: Python's NFC puts a run of combining marks in
#: order by moving each back past the ones before it, time growing with the square of the run, and a lock's name of
#: "a" and 50,000 pairs of two marks of other classes took 7.8 s of CPU, 300,000 (1.2 MB, within the body's limit)
#: 279 s (attack run 125)
SENT_PER_KEPT = 4


def parse(value: Any, field: str, *, most: int, code: str) -> str:
    """``value`` as text others will read: NFC, trimmed, runs of spaces made one; or 400 ``code`` naming why not."""
    if not isinstance(value, str):
        raise errors.BadRequest(f"{field} must be a string", code=code)
    if len(value) > most * SENT_PER_KEPT:  # before NFC, whose time grows with the square of a run of marks
        raise errors.BadRequest(
            f"{field} must be 1 to {most} characters (at most {most * SENT_PER_KEPT} as sent)", code=code
        )
    text = spelled(value)
    if not 1 <= len(text) <= most:
        raise errors.BadRequest(f"{field} must be 1 to {most} characters", code=code)
    problem = problem_in(text)
    if problem:
        raise errors.BadRequest(f"{field} {problem}", code=code)
    return text


def kept(value: str, most: int) -> str | None:
    """``value`` as text others read, cut to its first ``most`` characters, or None when the rule refuses it: for
    text that cannot be refused without losing what came with it (a lock's reason beside its ack's outcome). What
    is past ``most * SENT_PER_KEPT`` characters as sent is dropped before it is normalized."""
    text = spelled(value[: most * SENT_PER_KEPT])[:most]  # cut before NFC, as ``parse`` refuses (attack run 125)
    return text if problem_in(text) is None else None


def spelled(value: str) -> str:
    """``value`` in the one spelling text others read is kept in: NFC, trimmed, each run of spaces inside made one."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", value).strip())


def problem_in(text: str) -> str | None:
    """What makes ``text`` (as kept: NFC, trimmed) unfit to be shown to others as written, or None."""
    text = _FLAG_TAGS.sub("\U0001f3f4", text)
    marks = 0  # combining marks and joiners since the last character drawn on its own
    base = False  # that character is drawn (not a space, not blank)
    visible = False
    for c in text:
        category = unicodedata.category(c)
        if category == "Cc":
            return "contains control characters (a newline, a tab)"
        if category in ("Zl", "Zp"):
            return "contains line or paragraph separators"
        if category in ("Co", "Cs") or _noncharacter(c):
            return "contains private-use characters or noncharacters"
        if c in DIRECTION_MARKS:
            continue
        if (category == "Cf" and c not in JOINERS) or _IGNORABLE.match(c):
            return (
                "contains invisible characters (bidi overrides or isolates, zero-width spaces, fillers:"
                f" U+{ord(c):04X} {unicodedata.name(c, 'unnamed')})"
            )
        if c in JOINERS or _VARIATION.match(c) or category in ("Mn", "Me"):
            if not base:
                return f"contains a joiner or mark with no visible character before it (U+{ord(c):04X})"
            marks += 1
            if marks > MAX_MARKS:
                return f"contains more than {MAX_MARKS} combining marks or joiners on one character"
            continue
        marks = 0
        base = not category.startswith("Z") and c not in _BLANK
        visible = visible or base
    if not visible:
        return "has no visible character: it would look empty"
    return None


def _noncharacter(c: str) -> bool:
    point = ord(c)
    return 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE


def plain_address(address: str) -> bool:
    """Whether ``address`` may be shown to others as it is: the rule above, no format character at all (no address
    needs a joiner or a direction mark), and no part (the local part, each label of the domain) that mixes scripts
    the way a lookalike does (``mixed_scripts``). One that may not is no address where it is typed (an invitation's)
    and recorded as none where Firebase Auth vouches for it (``lockwise.core.users``), so no one is shown it."""
    return (
        problem_in(address) is None
        and not any(unicodedata.category(c) == "Cf" for c in address)
        and not any(mixed_scripts(part) for part in re.split("[@.]", address))
        and not latin_alike(address)
    )


#: the scripts one word may mix (as browsers allow in a domain's label, Unicode's "highly restrictive" level)
_MIXES = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


def mixed_scripts(word: str) -> bool:
    """Whether ``word``'s letters come from scripts no writing mixes in one word: ``mom@ex\u0430mple.com``, its
    ``a`` Cyrillic, is drawn as ``mom@example.com`` (a domain anyone may register and receive mail at, so Firebase
    Auth verifies it). A letter's script is read from its Unicode name (LATIN, CYRILLIC, GREEK, MATHEMATICAL,
    FULLWIDTH, ...); one script alone passes, whole-script lookalikes too."""
    scripts = {_script(c) for c in word if c.isalpha()}
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _MIXES)


#: Cyrillic and Greek small letters drawn as Latin ones (the Cyrillic: Chromium's IDN spoof checker's list, lowered)
_LATIN_ALIKE = frozenset(
    "\u0430\u0441\u0501\u0435\u04bb\u0456\u0458\u04cf\u043e\u0440\u051b\u0455\u051d\u0445"
    "\u0443\u044a\u044c\u04bd\u043f\u0433\u0475\u0461\u03b1\u03b9\u03ba\u03bd\u03bf\u03c1\u03c5\u03c7"
)


def latin_alike(address: str) -> bool:
    """Whether a part of ``address`` (its local part, a domain's label) is a word of one other script made only of
    letters drawn as Latin ones, in an address whose top-level domain is Latin: ``\u0430\u0440\u0435@example.com``
    is drawn as ``ape@example.com``. An address whose top-level domain is of that script (``.\u0440\u0444``) is read
    as that script's."""
    parts = re.split("[@.]", address)
    if not parts[-1].isascii():
        return False
    return any(any(c.isalpha() for c in part) and all(c in _LATIN_ALIKE for c in part if c.isalpha()) for part in parts)


def _script(letter: str) -> str:
    first = unicodedata.name(letter, "UNNAMED").split(" ", 1)[0]
    return "KATAKANA" if first.startswith("KATAKANA") else first
