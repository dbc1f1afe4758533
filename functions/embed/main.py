"""HTTP entry point of the embed function: enroll a user's voice, report and delete it.

The speaker model is loaded here, at instance start (module scope), and served as verify serves it: ECAPA-TDNN from
its ONNX export, GE2E with numpy; no torch, no SpeechBrain (they stay at build time: the export and its parity gate).
"""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
import numpy as np

from lockwise import audio, auth, errors, health, known_recordings, scoring, voiceprints
from lockwise.db import Connection
from lockwise.http import Api, Ctx, JsonBody, Result
from lockwise.runtime import get_runtime
from lockwise.voice import fingerprint
from lockwise.voice.encoder import describe, load_encoder, load_scorer, policy

rt = get_runtime("embed")
api = Api("embed")
encoder = load_encoder(rt.settings, exported=True)
scorer = load_scorer(rt.settings, encoder)
limits = audio.Limits.from_settings(rt.settings)


def app_user(ctx: Ctx) -> auth.User:
    return rt.app_user(ctx.bearer_token())


def sample_clip(index: int, value: Any) -> audio.Clip:
    """Decode and validate one enrollment sample; errors name the sample."""
    if not isinstance(value, dict):
        raise errors.BadRequest(
            f"sample {index}: must be an object with pcm_base64 or wav_base64", code="invalid_sample"
        )
    try:
        return audio.validate(audio.from_json(value), limits)
    except errors.LockwiseError as exc:
        exc.message = f"sample {index}: {exc.message}"
        exc.details = {**exc.details, "sample": index}
        raise


@api.route("GET", "/embed/health")
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    return health.check({**rt.probes(), "model": describe(encoder)}, "embed", rt.settings.release)


@api.route("PUT", "/embed/enrollment")
def enroll(ctx: Ctx) -> Result:
    user = app_user(ctx)
    settings = rt.settings
    body = ctx.json(audio.max_body_bytes(limits, settings.enroll_max_samples))
    samples = body.get("samples")
    if not isinstance(samples, list) or not settings.enroll_min_samples <= len(samples) <= settings.enroll_max_samples:
        raise errors.BadRequest(
            f"give {settings.enroll_min_samples} to {settings.enroll_max_samples} samples", code="wrong_sample_count"
        )
    clips = [sample_clip(i, s) for i, s in enumerate(samples)]  # every sample is checked before any model work
    rules = policy(settings, encoder)
    for i, clip in enumerate(clips):
        speech = audio.speech_seconds(clip.samples, clip.rate)
        if speech < rules.enroll_min_speech_s:
            raise errors.InvalidAudio(
                f"sample {i}: only {speech:.2f} s of speech; enrollment needs {rules.enroll_min_speech_s:g} s",
                code="too_little_speech",
                details={"sample": i, "speech_s": round(speech, 2), "required_s": rules.enroll_min_speech_s},
            )
    embeddings = np.stack([encoder.embed(c.samples, c.rate) for c in clips])
    lowest, outlier = scoring.agreement(embeddings)
    if lowest < rules.agreement:
        raise errors.InvalidAudio(
            f"sample {outlier} does not sound like the others; record it again",
            code="samples_disagree",
            details={"sample": outlier, "lowest_agreement": round(lowest, 4), "required": rules.agreement},
        )
    takes = [fingerprint.landmarks(c.samples, c.rate) for c in clips]  # to refuse their replay at the door
    with rt.db.transaction() as con:
        refuse_a_neighbours_voice(con, user.uid, scoring.voiceprint(embeddings))
        voiceprints.store(con, user.uid, encoder.model_id, embeddings)
        known_recordings.replace_enrollment(con, user.uid, takes)
        status = voiceprints.status(con, user.uid, encoder.model_id)
    rt.flush_mirror()
    return {**status, "agreement": round(lowest, 4)}, 201


def refuse_a_neighbours_voice(con: Connection, uid: str, voiceprint: scoring.Vector) -> None:
    """409 when the new voiceprint would pass as someone who shares a lock with ``uid``, at that lock's threshold:
    enrolling another member's recordings would otherwise make their own voice ambiguous (and lock them out)."""
    neighbours = voiceprints.co_members(con, uid, encoder.model_id, encoder.dim)
    raw, scores = scorer.scores(voiceprint, neighbours.prints)  # as verify would score this voice against them
    for cosine, score, lock_threshold in zip(raw, scores, neighbours.lock_thresholds, strict=True):
        rules = policy(rt.settings, encoder, lock_threshold, normalised=scorer.normalised)
        if score >= rules.threshold and (rules.raw_gate is None or cosine >= rules.raw_gate):
            raise errors.Conflict(
                "this voice already belongs to someone who shares a lock with you; enroll your own voice",
                code="voice_matches_member",
            )


@api.route("GET", "/embed/enrollment")
def enrollment_status(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    with rt.db.connection() as con:
        return voiceprints.status(con, user.uid, encoder.model_id)


@api.route("DELETE", "/embed/enrollment")
def delete_voice_data(ctx: Ctx) -> Result:
    user = app_user(ctx)
    with rt.db.transaction() as con:
        voiceprints.delete(con, user.uid)
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("POST", "/embed")
def embed_original(ctx: Ctx) -> JsonBody:
    """The original contract, fixed, for trusted service callers: ``{"pcm_base64"}`` -> ``{"embedding"}``."""
    auth.check_service_token(ctx.service_token(), rt.settings.service_token)
    clip = audio.validate(audio.from_json(ctx.json(audio.max_body_bytes(limits))), limits)
    vector = encoder.embed(clip.samples, clip.rate)
    import base64

    return {
        "embedding": base64.b64encode(scoring.to_bytes(vector)).decode(),
        "dim": encoder.dim,
        "model_id": encoder.model_id,
    }


@functions_framework.http
def embed(request: flask.Request) -> flask.Response:
    return api(request)
