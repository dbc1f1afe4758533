"""Audio intake: decoding PCM, WAV and JSON, and each refusal with its code (no model)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable

import numpy as np
import pytest

from lockwise.core import errors
from lockwise.voice import audio
from tests.voices import pcm16, speech_like, wav

LIMITS = audio.Limits()


def test_wav_pcm_and_json_decode_to_the_same_samples() -> None:
    x = speech_like(2.5)
    from_wav = audio.from_body(wav(x), "audio/wav", None)
    from_pcm = audio.from_body(pcm16(x), "application/octet-stream", "44100")
    body = json.dumps({"pcm_base64": base64.b64encode(pcm16(x)).decode(), "sample_rate": 44100}).encode()
    from_json = audio.from_body(body, "application/json", None)
    for clip in (from_wav, from_pcm, from_json):
        assert clip.rate == 44100 and clip.samples.dtype == np.float32
        np.testing.assert_allclose(clip.samples, from_wav.samples)
    assert abs(from_wav.seconds - 2.5) < 1e-3
    assert np.abs(from_wav.samples - x).max() < 1e-4


def test_a_rate_named_beside_audio_that_states_its_own_must_agree_with_it() -> None:
    """Attack run 20: ``sample_rate`` beside ``wav_base64`` (and a lock's ``X-Sample-Rate`` beside a WAV or JSON
    body) was ignored, so an 8,000 named beside a 44.1 kHz WAV was taken without a word. It is 400
    ``conflicting_sample_rate`` unless it agrees; the original design's contracts still let it be."""
    x = speech_like(2.5)
    wav_b64 = base64.b64encode(wav(x)).decode()
    pcm_json = json.dumps({"pcm_base64": base64.b64encode(pcm16(x)).decode(), "sample_rate": 16000}).encode()
    conflicting: dict[str, Callable[[], object]] = {
        "json": lambda: audio.from_json({"wav_base64": wav_b64, "sample_rate": 8000}),
        "wav + header": lambda: audio.from_body(wav(x), "audio/wav", "8000"),
        "json + header": lambda: audio.from_body(pcm_json, "application/json", "44100"),
    }
    for name, fn in conflicting.items():
        with pytest.raises(errors.BadRequest) as refused:
            fn()
        assert refused.value.code == "conflicting_sample_rate", name
    assert refusal(lambda: audio.from_body(wav(x), "audio/wav", "44_100")) == (400, "unsupported_sample_rate")
    assert audio.from_json({"wav_base64": wav_b64, "sample_rate": 44100}).rate == 44100
    assert audio.from_body(wav(x), "audio/wav", "44100").rate == 44100
    assert audio.from_body(pcm_json, "application/json", "16000").rate == 16000
    unnamed = json.dumps({"pcm_base64": base64.b64encode(pcm16(x)).decode()}).encode()
    assert audio.from_body(unnamed, "application/json", "16000").rate == 16000  # the rate named beside it
    assert audio.from_body(unnamed, "application/json", None).rate == 44100
    assert audio.from_body(wav(x), "application/octet-stream", None).rate == 44100  # a RIFF body is still a WAV
    assert audio.from_json({"wav_base64": wav_b64, "sample_rate": 8000}, fields=None).rate == 44100


def test_stereo_wav_is_mixed_down_and_rates_are_kept() -> None:
    x = speech_like(2.2, rate=16000)
    left = (x * 32767).astype("<i2")
    stereo = np.stack([left, np.zeros_like(left)], axis=1).tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(stereo),
        b"WAVE",
        b"fmt ",
        16,
        1,
        2,
        16000,
        16000 * 4,
        4,
        16,
        b"data",
        len(stereo),
    )
    clip = audio.parse_wav(header + stereo)
    assert clip.rate == 16000 and len(clip.samples) == len(x)
    assert np.abs(clip.samples - x / 2).max() < 1e-4


def _with_chunks_before_its_data(clip: bytes, count: int) -> bytes:
    """``clip`` (a WAV of fmt and data) with ``count`` empty ``junk`` chunks between its header and its fmt."""
    return clip[:12] + b"junk\0\0\0\0" * count + clip[12:]


def test_a_wav_with_more_chunks_before_its_data_than_a_recorder_writes_is_refused() -> None:
    """A verification's 3.8 MB held 480,000 empty chunks, and walking them took 0.26 s of CPU where a clip's header
    takes 0.2 ms (attack run 125). Refused at the 65th, whatever follows."""
    clip = wav(speech_like(2.2, rate=16000), rate=16000)
    assert len(audio.parse_wav(_with_chunks_before_its_data(clip, 62)).samples) > 0  # 62, fmt and data: 64
    with pytest.raises(errors.BadRequest) as refused:
        audio.parse_wav(_with_chunks_before_its_data(clip, 63))
    assert refused.value.code == "malformed_wav" and "more than 64 chunks" in refused.value.message
    with pytest.raises(errors.BadRequest) as refused:
        audio.parse_wav(_with_chunks_before_its_data(clip, 480_000))
    assert "more than 64 chunks" in refused.value.message


def test_a_valid_clip_passes_validation() -> None:
    clip = audio.Clip(speech_like(3.0), 44100)
    assert audio.validate(clip, LIMITS) is clip
    assert 2.0 < audio.speech_seconds(clip.samples, clip.rate) <= 3.0


def refusal(fn: object) -> tuple[int, str]:
    with pytest.raises(errors.LockwiseError) as info:
        fn()  # type: ignore[operator]
    return info.value.status, info.value.code


def test_each_bad_input_has_its_code() -> None:
    x = speech_like(3.0)
    rate = 44100
    cases = {
        ("empty", 400, "empty_audio"): lambda: audio.from_body(b"", "application/octet-stream", None),
        ("odd", 400, "odd_byte_count"): lambda: audio.from_body(pcm16(x) + b"\0", "application/octet-stream", None),
        ("rate", 400, "unsupported_sample_rate"): lambda: audio.from_body(
            pcm16(x), "application/octet-stream", "12345"
        ),
        ("rate text", 400, "unsupported_sample_rate"): lambda: audio.from_body(pcm16(x), None, "fast"),
        # digits only: int() took these (attack run)
        ("rate spaced", 400, "unsupported_sample_rate"): lambda: audio.from_body(pcm16(x), None, " 44100"),
        ("rate signed", 400, "unsupported_sample_rate"): lambda: audio.from_body(pcm16(x), None, "+44100"),
        ("rate underscore", 400, "unsupported_sample_rate"): lambda: audio.from_body(pcm16(x), None, "44_100"),
        ("short", 422, "too_short"): lambda: audio.validate(audio.Clip(x[:rate], rate), LIMITS),
        ("long", 422, "too_long"): lambda: audio.validate(audio.Clip(np.tile(x, 6), rate), LIMITS),
        ("silence", 422, "silence"): lambda: audio.validate(audio.Clip(np.zeros(3 * rate, np.float32), rate), LIMITS),
        ("hiss", 422, "silence"): lambda: audio.validate(
            audio.Clip((1e-4 * np.random.default_rng(0).standard_normal(3 * rate)).astype(np.float32), rate), LIMITS
        ),
        ("clipped", 422, "clipped"): lambda: audio.validate(audio.Clip(np.clip(x * 20, -1, 1), rate), LIMITS),
        ("click", 422, "too_little_speech"): lambda: audio.validate(
            audio.Clip(np.concatenate([x[: rate // 4], np.zeros(3 * rate, np.float32)]), rate), LIMITS
        ),
        ("base64", 400, "malformed_base64"): lambda: audio.from_json({"pcm_base64": "!!not base64!!"}),
        ("base64 type", 400, "malformed_base64"): lambda: audio.from_json({"pcm_base64": 42}),
        ("no audio", 400, "missing_audio"): lambda: audio.from_json({"sample_rate": 16000}),
        ("unknown field", 400, "unknown_field"): lambda: audio.from_json({"pcm_base64": "AAAA", "samplerate": 8000}),
        ("both audio", 400, "conflicting_audio"): lambda: audio.from_json({"pcm_base64": "AAAA", "wav_base64": "AAAA"}),
        ("wav header", 400, "malformed_wav"): lambda: audio.from_body(b"RIFF\x10\0\0\0WAVEjunk", "audio/wav", None),
        ("wav no fmt", 400, "malformed_wav"): lambda: audio.from_body(b"RIFF\x04\0\0\0WAVE", "audio/wav", None),
        ("wav float", 400, "unsupported_wav_format"): lambda: audio.parse_wav(
            wav(x)[:20] + struct.pack("<H", 3) + wav(x)[22:]
        ),
        ("wav 8-bit", 400, "unsupported_wav_format"): lambda: audio.parse_wav(
            wav(x)[:34] + struct.pack("<H", 8) + wav(x)[36:]
        ),
        ("media", 415, "unsupported_media_type"): lambda: audio.from_body(b"OggS....", "audio/ogg", None),
    }
    for (name, status, code), fn in cases.items():
        assert refusal(fn) == (status, code), name


def test_the_largest_enrollment_the_function_takes_fits_the_web_servers_limit() -> None:
    """Attack run 20: embed takes an enrollment of up to 19.2 MB at its default settings (five 15 s clips of 48 kHz
    stereo in base64), and the web server's event loop refused anything over 16 MiB first (413)."""
    from lockwise.core import whole_requests
    from lockwise.core.config import Settings

    settings = Settings.from_env({}, component="embed")
    limits = audio.Limits.from_settings(settings, clips=settings.enroll_max_samples)
    assert audio.max_body_bytes(limits, settings.enroll_max_samples) <= whole_requests.MAX_BODY_BYTES


@pytest.mark.parametrize(
    "env", [{"LOCKWISE_ENROLL_MAX_SAMPLES": "7"}, {"LOCKWISE_AUDIO_MAX_S": "20"}], ids=["samples", "seconds"]
)
def test_settings_whose_largest_enrollment_the_web_server_refuses_do_not_start(env: dict[str, str]) -> None:
    """A review: settings embed took (seven samples, or 20 s clips) made every such enrollment at 48 kHz stereo a
    413 from the web server, naming no setting. Embed now refuses to start, naming them; verify, whose bodies carry
    one clip, starts (it reads no enrollment setting: refusing it over one took voice unlock down)."""
    from lockwise.core.config import ConfigError, Settings

    embed = Settings.from_env(env, component="embed")
    with pytest.raises(ConfigError, match="LOCKWISE_AUDIO_MAX_S=.* with LOCKWISE_ENROLL_MAX_SAMPLES="):
        audio.Limits.from_settings(embed, clips=embed.enroll_max_samples)
    assert audio.Limits.from_settings(Settings.from_env(env, component="verify")).max_seconds == embed.audio_max_s
    with pytest.raises(ConfigError, match="LOCKWISE_AUDIO_MAX_S=120 allows"):  # one clip too long for the server
        audio.Limits.from_settings(Settings.from_env({"LOCKWISE_AUDIO_MAX_S": "120"}, component="verify"))
