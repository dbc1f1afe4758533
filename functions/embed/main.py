"""HTTP entry point of the embed function: enroll a user's voice, report and delete it.

The speaker model is loaded here, at instance start (module scope), and served as verify serves it: ECAPA-TDNN from
its ONNX export, GE2E with numpy; no torch, no SpeechBrain (they stay at build time: the export and its parity gate).
"""

from __future__ import annotations

import base64
from typing import Any

import flask
import functions_framework

import lockwise.core.loading
from lockwise.core import audit, auth, erasure, errors, health, preconditions, quotas, users
from lockwise.core.http import Api, Ctx, JsonBody, Result
from lockwise.core.runtime import get_runtime
from lockwise.voice import audio, enrollment, first_come, scoring, voiceprints
from lockwise.voice.model.encoder import describe, load_encoder, load_scorer
from lockwise.voice.model.voice_activity import VoiceActivity

rt = get_runtime("embed")


def app_user(ctx: Ctx) -> auth.User:
    """The signed-in app user, their token checked once a request (first, by the router: ``api``'s caller)."""
    return ctx.once("app_user", lambda: rt.app_user(ctx.bearer_token()))


api = Api("embed", caller=app_user)  # every route is an app user's but those naming another caller
encoder = load_encoder(rt.settings, exported=True)
scorer = load_scorer(rt.settings, encoder)
voice = VoiceActivity()  # the bundle's models/vad: an enrollment sample must hold a voice, not only sound
limits = audio.Limits.from_settings(rt.settings, clips=rt.settings.enroll_max_samples)


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


@api.route("GET", "/embed/health", query=None, body=True, caller=None)  # a checker's: anything goes
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    report = rt.health.check(
        {**rt.probes(), "model": describe(encoder), "voice_activity": voice.describe}, "embed", rt.settings.release
    )
    return health.shown(report, detailed=ctx.is_service(rt.settings.service_token))


@api.route("PUT", "/embed/enrollment")
def enroll(ctx: Ctx) -> Result:
    user = app_user(ctx)
    users.require_recent_sign_in(user, rt.now(), "enrolling a voice")  # a voice opens every door of the account
    settings = rt.settings
    enrollment.take_a_request(rt.db, user, settings)  # before the body is read
    body = ctx.json(("samples",), audio.max_body_bytes(limits, settings.enroll_max_samples))
    samples = body.get("samples")
    if not isinstance(samples, list) or not settings.enroll_min_samples <= len(samples) <= settings.enroll_max_samples:
        raise errors.BadRequest(
            f"give {settings.enroll_min_samples} to {settings.enroll_max_samples} samples", code="wrong_sample_count"
        )
    clips = [sample_clip(i, s) for i, s in enumerate(samples)]  # every sample is checked before any model work
    enrolled = enrollment.enroll(rt.db, user, clips, encoder, scorer, voice, settings, rt.now)
    rt.flush_mirror()
    return enrolled.status, 201 if enrolled.stored_now else 200


#: an enrollment's standing read a minute a user on an instance, at most: each reads every co-member's voice at every
#: lock the user is in (attack run 93: 10,000 voiceprints, 7.7 MB, a call at 200 locks of 50 voices)
STATUS_READS_PER_MINUTE = 12
status_reads = quotas.InstancePace(
    STATUS_READS_PER_MINUTE,
    message="the enrollment is read too often; try again shortly",
    code="enrollment_read_too_often",
)


@api.route("GET", "/embed/enrollment")
def enrollment_status(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    status_reads.take(user.uid)
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # what it tells is the account's (attack run 81)
        status = voiceprints.status(con, user.uid, encoder.model_id)
        if status["enrolled"]:
            status["not_scored_at"] = first_come.standing(
                con, user.uid, encoder, scorer, rt.settings, rt.now()
            ).aside_at
        return status


@api.route("DELETE", "/embed/enrollment")
def delete_voice_data(ctx: Ctx) -> Result:
    user = app_user(ctx)
    since = ctx.unmodified_since()
    # as Firebase Auth asks before it deletes the account: a refresh token taken from her phone erased her voice,
    # every door of hers shut to her until she enrolled again
    users.require_recent_sign_in(user, rt.now(), "deleting voice data")
    with rt.db.transaction() as con:
        # as committed now (attack runs 79 and 81: the account's maker, a revoked session, erased the owner's voice);
        # after the account has left every lock too, which the app asks first
        users.refuse_caller(con, user, left_since=False)
        # a deletion sent again once she had enrolled again erases the new voice no more (attack run 108)
        if since is not None:
            enrolled_at = voiceprints.enrolled_at(con, user.uid)
            preconditions.refuse_if_changed(enrolled_at, since, "the enrollment", "enrollment_changed")
        # in the log with the session that asked, as its enrollment is (attack run 120); a deletion of nothing is
        # not (each enrollment's is one row at most: sent in a loop, it wrote a row a request)
        if removed := erasure.forget_voice(con, user.uid, "requested"):
            audit.record(con, audit.user_actor(user.uid), "voice.delete", "ok", details={"voiceprints": removed})
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("POST", "/embed", query=None, caller=None)  # the original design's contract
def embed_original(ctx: Ctx) -> JsonBody:
    """The original contract, fixed, for trusted service callers: ``{"pcm_base64"}`` -> ``{"embedding"}``."""
    auth.check_service_token(ctx.service_token(), rt.settings.service_token)
    clip = audio.validate(audio.from_json(ctx.json(None, audio.max_body_bytes(limits)), fields=None), limits)
    vector = encoder.embed(clip.samples, clip.rate)
    return {
        "embedding": base64.b64encode(scoring.to_bytes(vector)).decode(),
        "dim": encoder.dim,
        "model_id": encoder.model_id,
    }


@functions_framework.http
def embed(request: flask.Request) -> flask.Response:
    return api(request)


lockwise.core.loading.loaded()  # last: what loaded above is kept out of every later collection
