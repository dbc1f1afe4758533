"""Property tests of what crosses from outside: whatever the bytes, the input boundary and the audio parser answer
with a value or a 4xx ``LockwiseError``, never another exception (which the API would turn into a 500)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockwise.core import errors, inputs
from lockwise.voice import audio

#: Hypothesis scans sys.modules: SpeechBrain's lazy modules are set aside (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("no_lazy_speechbrain_modules")


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**19), 10**19)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _clean(value: Any) -> bool:
    """True when no string in ``value`` holds NUL or a lone surrogate (what the boundary refuses)."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(_clean(v) for v in value)
    if isinstance(value, dict):
        return all(_clean(k) and _clean(v) for k, v in value.items())
    return True


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_json_the_boundary_takes_comes_back_unchanged_or_is_refused_with_a_code(value: Any) -> None:
    text = json.dumps(value)
    try:
        assert inputs.loads(text.encode("utf-8", "surrogatepass")) == value
        assert _clean(value)
    except errors.BadRequest as exc:
        assert exc.status == 400 and exc.code in ("invalid_text", "json_too_deep", "number_too_large")
        assert exc.code != "invalid_text" or not _clean(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_json_or_a_400(raw: bytes) -> None:
    try:
        inputs.loads(raw)
    except errors.BadRequest as exc:
        assert exc.status == 400


CONTENT_TYPES = st.sampled_from(
    ["application/octet-stream", "audio/pcm", "audio/wav", "audio/x-wav", "application/json", "", "text/plain",
     "audio/L16", "application/octet-stream; rate=8000"]
)  # fmt: skip


def _wav_header(channels: int, rate: int, bits: int, data_len: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return (
        b"RIFF" + struct.pack("<I", (36 + data_len) % 2**32) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
    )


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda c, r, b, n, tail: _wav_header(c, r, b, n) + struct.pack("<I", n) + tail,
            st.integers(0, 8),
            st.integers(0, 200_000),
            st.sampled_from([0, 8, 16, 24, 32]),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=200),
        ),
    ),
    CONTENT_TYPES,
    st.one_of(st.none(), st.text(max_size=8)),
)
def test_the_audio_parser_answers_any_body_with_a_clip_or_a_4xx(
    body: bytes, content_type: str, rate: str | None
) -> None:
    try:
        clip = audio.from_body(body, content_type, rate)
    except errors.LockwiseError as exc:
        assert 400 <= exc.status < 500
        return
    assert clip.samples.ndim == 1 and clip.rate > 0
