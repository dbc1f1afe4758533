"""HTTP entry point of the verify function: a lock posts what it heard; the server decides.

The speaker model is loaded here, at instance start (module scope), so the platform's startup boost pays for it. It
is served without torch: ECAPA-TDNN from its ONNX export (``infra.model.export_onnx``), GE2E with numpy
(``LOCKWISE_VERIFY_RUNTIME=speechbrain`` serves ECAPA through SpeechBrain instead, for comparison; it needs torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import flask
import functions_framework

import lockwise.core.loading
from lockwise.core import auth, errors, health, inputs
from lockwise.core.http import Api, Ctx, JsonBody, Result
from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth
from lockwise.voice import audio, scoring, sent_again, verification
from lockwise.voice.model.encoder import describe, load_encoder, load_scorer

rt = get_runtime("verify")
api = Api("verify")
encoder = load_encoder(rt.settings, exported=rt.settings.verify_runtime == "onnx")
scorer = load_scorer(rt.settings, encoder)
limits = audio.Limits.from_settings(rt.settings)
doors = verification.Doors(rt.db, encoder, scorer, rt.settings)


def attempt_from(ctx: Ctx, body: bytes) -> tuple[audio.Clip, str | None]:
    """The clip a lock sent and the ``follow_up`` it names (400, 415 or 422 naming what is wrong; the query is
    checked first, so the answer does not depend on whether the rate came in a header)."""
    query = ctx.query(("sample_rate", "follow_up"))
    rate = audio.rate_named(ctx.request.headers.get("X-Sample-Rate"), query.get("sample_rate"))
    follow_up = query.get("follow_up")
    if follow_up is not None and inputs.canonical_uuid(follow_up) is None:
        raise errors.BadRequest("follow_up must be the attempt id of a say_again answer", code="invalid_follow_up")
    return audio.validate(audio.from_body(body, ctx.request.content_type, rate), limits), follow_up


@api.route("GET", "/verify/health", query=None, body=True)  # a checker's: anything goes
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    report = rt.health.check({**rt.probes(), "model": describe(encoder)}, "verify", rt.settings.release)
    return health.shown(report, detailed=ctx.is_service(rt.settings.service_token))


@api.route("POST", "/verify", query=None)  # a lock's: attempt_from reads it
def verify_at_lock(ctx: Ctx) -> Result:
    body = ctx.body(audio.max_body_bytes(limits))
    body_sha256 = hashlib.sha256(body).hexdigest()  # once: the signature covers it, and a clip sent again is it
    headers = ctx.request.headers
    signer = lock_auth.signed_by(rt.db, headers, "POST", ctx.target, body, rt.settings, body_sha256=body_sha256)
    try:
        clip, follow_up = attempt_from(ctx, body)
    except errors.BadRequest as exc:  # InvalidAudio, malformed input: logged as an invalid attempt
        verification.record_invalid(rt.db, signer, exc.code)
        raise
    sent_as = sent_again.identity(body_sha256, headers.get("Content-Type", ""), clip.rate)
    result = doors.decide(signer, clip, sent_as=sent_as, follow_up=follow_up)
    rt.flush_mirror_soon()  # the person at the door does not wait for the app's activity feed
    if result.refusal is not None:
        raise result.refusal.error(result.retry_after_s)
    if result.decision == "rejected" and rt.settings.debug_rejected_dir:
        save_rejected(clip, result.attempt_id)
    return result.body()


def save_rejected(clip: audio.Clip, attempt_id: str) -> None:
    """Development only (refused in production by the settings): keep rejected audio for listening."""
    folder = Path(rt.settings.debug_rejected_dir or ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rejected-{attempt_id}.wav").write_bytes(audio.to_wav(clip))


@api.route("POST", "/verify/candidates", query=None)  # the original design's
def verify_candidates(ctx: Ctx) -> JsonBody:
    """The original contract, for trusted service callers: audio and candidate embeddings in, best match out."""
    auth.check_service_token(ctx.service_token(), rt.settings.service_token)
    obj = ctx.json(None, audio.max_body_bytes(limits) + 1_500_000)  # + 1000 base64 candidates
    clip = audio.validate(audio.from_json(obj, fields=None), limits)
    raw = obj.get("candidates")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 1000:
        raise errors.BadRequest("candidates must be a list of 1 to 1000 base64 embeddings", code="invalid_candidates")
    decoded = [audio.b64_field(c, f"candidates[{i}]") for i, c in enumerate(raw)]
    if any(len(d) != 4 * encoder.dim for d in decoded):
        raise errors.BadRequest(f"each candidate must be {encoder.dim} float32 values", code="invalid_candidates")
    prints = scoring.from_bytes(b"".join(decoded), encoder.dim)
    unusable = scoring.unusable_rows(prints)
    if unusable:
        raise errors.BadRequest(
            f"candidates[{unusable[0]}] is not a voiceprint: its values must be finite and not all zero",
            code="invalid_candidates",
            details={"candidates": unusable[:20]},
        )
    scores = scoring.cosine_scores(encoder.embed(clip.samples, clip.rate), prints)
    best = int(scores.argmax())
    return {"best_index": best, "score": float(scores[best]), "model_id": encoder.model_id}


@functions_framework.http
def verify(request: flask.Request) -> flask.Response:
    return api(request)


lockwise.core.loading.loaded()  # last: what loaded above is kept out of every later collection
