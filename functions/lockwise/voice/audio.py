"""Audio intake shared by enroll and verify: decode, then validate before any model work.

Accepted inputs (all 16-bit PCM, little-endian):

* raw PCM16LE (``application/octet-stream``), mono, rate from ``X-Sample-Rate`` or ``?sample_rate=`` (default 44100);
* WAV (RIFF ``WAVE_FORMAT_PCM`` or ``WAVE_FORMAT_EXTENSIBLE`` with PCM, 16-bit, mono or stereo mixed down);
* JSON ``{"pcm_base64": "...", "sample_rate": 44100}`` (the original contract) or ``{"wav_base64": "..."}``.

The result is a :class:`Clip`: ``samples`` float32 in [-1, 1], shape ``(n,)``, at ``rate`` Hz (not yet resampled;
the encoder resamples to 16 kHz). Each refusal is a 4xx with a stable code.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.core import errors, inputs, whole_requests
from lockwise.core.config import ConfigError, Settings
from lockwise.voice import order_statistics

SUPPORTED_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
DEFAULT_RATE = 44100
PCM_FORMAT, EXTENSIBLE_FORMAT = 1, 0xFFFE
_PCM_SUBFORMAT_GUID = bytes.fromhex("0100000000001000800000aa00389b71")

SILENCE_DBFS = -50.0  # whole-clip RMS below this is silence
CLIP_LEVEL = 32767 / 32768 - 1e-6
MAX_CLIPPED_FRACTION = 0.01  # more than 1 % of samples at full scale is heavy clipping
FRAME_S = 0.02
SPEECH_FLOOR_DBFS = -45.0  # a frame quieter than this is never speech
SPEECH_BELOW_PEAK_DB = 30.0  # ... nor one more than this below the loudest frames (the 95th percentile)

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Clip:
    samples: Samples  # float32, shape (n,), values in [-1, 1]
    rate: int  # Hz

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True)
class Limits:
    min_seconds: float = 2.0
    max_seconds: float = 15.0
    min_speech_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings, *, clips: int = 1) -> Limits:
        """The settings' limits for a function whose bodies carry at most ``clips`` clips (embed: its enrollment's
        samples); ``ConfigError`` when the largest honest such body (``max_body_bytes``) is one the web server
        refuses first (a review: ``LOCKWISE_ENROLL_MAX_SAMPLES`` of 7, or clips of 20 s, let embed start, and every
        such enrollment at 48 kHz stereo was a 413 naming no setting)."""
        limits = cls(settings.audio_min_s, settings.audio_max_s, settings.audio_min_speech_s)
        largest = max_body_bytes(limits, clips)
        if largest > whole_requests.MAX_BODY_BYTES:
            named = f"LOCKWISE_AUDIO_MAX_S={settings.audio_max_s:g}"
            if clips > 1:
                named += f" with LOCKWISE_ENROLL_MAX_SAMPLES={clips}"
            raise ConfigError(
                f"{named} allows bodies of {largest:,} bytes (48 kHz stereo, base64); the server takes at most"
                f" {whole_requests.MAX_BODY_BYTES:,}: lower it"
            )
        return limits


# --------------------------------------------------------------------------------------------------- decoding


def pcm16_to_float(pcm: bytes, channels: int = 1) -> Samples:
    """PCM16LE bytes -> float32 mono in [-1, 1] (stereo is averaged). Raises on an odd byte count."""
    if len(pcm) % (2 * channels):
        raise errors.BadRequest(
            "PCM16 audio must have a whole number of 16-bit samples per channel", code="odd_byte_count"
        )
    ints = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        ints = ints.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return ints


#: the most chunks a WAV file may hold before its data (fmt, fact, LIST, bext, id3, cue: a recorder writes a few). A
#: clip's body of 480,000 empty chunks, within a verification's 3.8 MB, took 0.26 s of CPU to walk where a clip's
#: header takes 0.2 ms (attack run 125)
MAX_WAV_CHUNKS = 64


def parse_wav(data: bytes) -> Clip:
    """Read a RIFF/WAVE file of 16-bit PCM (mono or stereo)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise errors.BadRequest("not a RIFF/WAVE file", code="malformed_wav")
    pos, fmt, pcm, chunks = 12, None, None, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_WAV_CHUNKS:
            raise errors.BadRequest(
                f"WAV file has more than {MAX_WAV_CHUNKS} chunks before its data", code="malformed_wav"
            )
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if len(body) < size and chunk_id != b"data":
            raise errors.BadRequest(f"WAV chunk {chunk_id!r} is truncated", code="malformed_wav")
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            pcm = body  # a streamed WAV may claim more than it has: take what is there
            break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16 or pcm is None:
        raise errors.BadRequest("WAV file lacks a fmt or data chunk", code="malformed_wav")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == EXTENSIBLE_FORMAT:
        if len(fmt) < 40 or fmt[24:40] != _PCM_SUBFORMAT_GUID:
            raise errors.BadRequest("only PCM WAV is accepted", code="unsupported_wav_format")
    elif tag != PCM_FORMAT:
        raise errors.BadRequest(
            "only PCM WAV is accepted (no compressed or float formats)", code="unsupported_wav_format"
        )
    if bits != 16 or channels not in (1, 2) or block_align != 2 * channels:
        raise errors.BadRequest("WAV must be 16-bit, mono or stereo", code="unsupported_wav_format")
    _check_rate(rate)
    usable = len(pcm) - len(pcm) % block_align
    return Clip(pcm16_to_float(pcm[:usable], channels), rate)


def _check_rate(rate: Any) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_RATES:
        raise errors.BadRequest(
            f"sample rate {rate!r} is not supported; use one of {', '.join(map(str, SUPPORTED_RATES))}",
            code="unsupported_sample_rate",
        )
    return rate


def b64_field(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise errors.BadRequest(f"{field} must be a base64 string", code="malformed_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.BadRequest(f"{field} is not valid base64", code="malformed_base64") from exc


#: what an audio object (a lock's JSON body, an enrollment sample) may hold
JSON_FIELDS = ("pcm_base64", "sample_rate", "wav_base64")


def from_json(obj: dict[str, Any], fields: Collection[str] | None = JSON_FIELDS, *, rate: int | None = None) -> Clip:
    """``{"pcm_base64", "sample_rate"?}`` or ``{"wav_base64"}``; a field outside ``fields`` is refused (400
    ``unknown_field``). ``None``: any other field is let be (the original contracts, whose bodies carry more).
    ``rate``: the PCM's rate when the object names none (a rate named beside the body), else 44100."""
    if fields is not None:
        inputs.only_fields(obj, fields, "the audio object")
    if "wav_base64" in obj and "pcm_base64" in obj:
        raise errors.BadRequest("give pcm_base64 or wav_base64, not both", code="conflicting_audio")
    if "wav_base64" in obj:
        clip = parse_wav(b64_field(obj["wav_base64"], "wav_base64"))
        if fields is not None and "sample_rate" in obj:  # the original contracts let it be, as their models did
            _agrees(clip, _check_rate(obj["sample_rate"]), "sample_rate")
        return clip
    if "pcm_base64" not in obj:
        raise errors.BadRequest("give pcm_base64 (PCM16LE) or wav_base64", code="missing_audio")
    named = _check_rate(obj.get("sample_rate", rate or DEFAULT_RATE))
    pcm = b64_field(obj["pcm_base64"], "pcm_base64")
    if not pcm:
        raise errors.BadRequest("audio is empty", code="empty_audio")
    return Clip(pcm16_to_float(pcm), named)


def rate_named(header: str | None, query: str | None) -> str | None:
    """The rate a request names beside its body: the ``X-Sample-Rate`` header or the ``sample_rate`` query parameter
    (``from_body``'s ``rate_hint``). A query parameter named but blank is 400 ``unsupported_sample_rate`` (not
    "absent", which would decode at 44.1 kHz); the two naming different rates is 400 ``conflicting_sample_rate`` (the
    query's was ignored without a word: a review of verify)."""
    if query == "":
        raise errors.BadRequest("sample_rate is empty", code="unsupported_sample_rate")
    if header and query is not None and header != query:
        raise errors.BadRequest(
            f"the X-Sample-Rate header says {header} but sample_rate says {query}; send one, or make them agree",
            code="conflicting_sample_rate",
            details={"header": header, "query": query},
        )
    return header or query


def from_body(body: bytes, content_type: str | None, rate_hint: str | None) -> Clip:
    """Decode a request body by its content type (WAV is also recognised by its RIFF header)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise errors.BadRequest("audio is empty", code="empty_audio")
    # digits only: int() also takes " 44100", "+44100" and "44_100"
    if rate_hint and not (rate_hint.isascii() and rate_hint.isdigit() and len(rate_hint) <= 6):
        raise errors.BadRequest("sample rate must be a decimal integer", code="unsupported_sample_rate")
    hinted = _check_rate(int(rate_hint)) if rate_hint else None
    if ctype == "application/json":
        obj = inputs.loads(body)  # the one JSON boundary: nesting, NaN, NUL and surrogates refused by name
        if not isinstance(obj, dict):
            raise errors.BadRequest("body must be a JSON object", code="expected_object")
        clip = from_json(obj, rate=hinted)  # PCM naming no rate: the one named beside it (a review of verify: it
        # was read as 44100 and refused as conflicting with it)
    elif ctype in ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave") or body[:4] == b"RIFF":
        clip = parse_wav(body)
    elif ctype in ("application/octet-stream", "audio/pcm", ""):
        return Clip(pcm16_to_float(body), hinted or DEFAULT_RATE)
    else:
        raise errors.UnsupportedMediaType(f"unsupported content type {ctype!r}", code="unsupported_media_type")
    if hinted is not None:  # a rate named beside audio that carries its own must be that rate
        _agrees(clip, hinted, "the X-Sample-Rate header or sample_rate parameter")
    return clip


def _agrees(clip: Clip, named: int, where: str) -> None:
    """400 ``conflicting_sample_rate`` when ``named`` (a rate given beside audio that states its own) is not the
    clip's rate: it was ignored, so a caller who meant one rate had the audio read at another without a word (attack
    run 20)."""
    if named != clip.rate:
        raise errors.BadRequest(
            f"{where} says {named} Hz but the audio is {clip.rate} Hz; leave it out or make it agree",
            code="conflicting_sample_rate",
            details={"named": named, "audio": clip.rate},
        )


# ------------------------------------------------------------------------------------------------- validation


def dbfs(x: Samples) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return float(20 * np.log10(max(rms, 1e-10)))


def frame_levels_db(x: Samples, frame: int) -> npt.NDArray[np.float64]:
    """RMS level of each whole ``frame``-sample frame in dBFS, shape ``(frames,)``."""
    n = max(1, frame)
    frames = x[: len(x) - len(x) % n].reshape(-1, n).astype(np.float64)
    if not len(frames):
        return np.array([-200.0])
    levels: npt.NDArray[np.float64] = 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-10))
    return levels


def speech_frames(x: Samples, frame: int) -> npt.NDArray[np.bool_]:
    """Which ``frame``-sample frames are loud enough to be speech: above -45 dBFS and within 30 dB of the loudest
    frames (their 95th percentile). An energy measure, not a voice detector: it tells speech from silence and
    hum-level noise, which is what the enrollment and pause rules need."""
    levels = frame_levels_db(x, frame)
    threshold = max(SPEECH_FLOOR_DBFS, order_statistics.percentile(levels, 95) - SPEECH_BELOW_PEAK_DB)
    flags: npt.NDArray[np.bool_] = levels > threshold
    return flags


def speech_seconds(x: Samples, rate: int) -> float:
    """Seconds of 20 ms frames that :func:`speech_frames` counts as speech."""
    frame = max(1, int(rate * FRAME_S))
    return float(np.count_nonzero(speech_frames(x, frame))) * frame / rate


def max_body_bytes(limits: Limits, clips: int = 1) -> int:
    """The largest honest body for ``clips`` clips: 48 kHz stereo PCM16 of the longest allowed length, base64."""
    return int(clips * (limits.max_seconds * 48000 * 2 * 2 * 4 / 3 + 4096))


def validate(clip: Clip, limits: Limits) -> Clip:
    """Refuse clips the model should never see: too short or long, silent, clipped, too little speech."""
    if len(clip.samples) == 0:
        raise errors.BadRequest("audio is empty", code="empty_audio")
    if clip.seconds < limits.min_seconds:
        raise errors.InvalidAudio(
            f"audio is {clip.seconds:.2f} s; at least {limits.min_seconds:g} s are needed", code="too_short"
        )
    if clip.seconds > limits.max_seconds:
        raise errors.InvalidAudio(f"audio is {clip.seconds:.2f} s; at most {limits.max_seconds:g} s", code="too_long")
    level = dbfs(clip.samples)
    if level < SILENCE_DBFS:
        raise errors.InvalidAudio(f"audio is silent ({level:.0f} dBFS)", code="silence")
    clipped = float(np.count_nonzero(np.abs(clip.samples) >= CLIP_LEVEL)) / len(clip.samples)
    if clipped > MAX_CLIPPED_FRACTION:
        raise errors.InvalidAudio(f"{clipped:.1%} of the samples are clipped; record more quietly", code="clipped")
    speech = speech_seconds(clip.samples, clip.rate)
    if speech < limits.min_speech_seconds:
        raise errors.InvalidAudio(
            f"only {speech:.2f} s of speech; at least {limits.min_speech_seconds:g} s are needed",
            code="too_little_speech",
        )
    return clip


def to_wav(clip: Clip) -> bytes:
    """A mono 16-bit WAV of ``clip`` (for the development-only rejected-sample dump and for tests)."""
    pcm = (np.clip(clip.samples, -1, 1) * 32767).astype("<i2").tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        PCM_FORMAT,
        1,
        clip.rate,
        clip.rate * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm
