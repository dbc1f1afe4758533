"""functions/openapi.yaml promises only what the code serves: request content types that the handlers accept, and
for every path a local server URL on the port of the function that serves it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml

from lockwise.core import errors
from lockwise.voice import audio, verification

SPEC: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[2] / "functions" / "openapi.yaml").read_text())
METHODS = ("get", "put", "post", "patch", "delete")
PORTS = {"embed": 8081, "verify": 8082, "devices": 8083}  # infra/local/stack.py
OPERATIONS = [
    (path, method, item, item[method]) for path, item in SPEC["paths"].items() for method in METHODS if method in item
]

# a tiny clip of each kind /verify decodes: raw PCM16LE (not starting with RIFF), a WAV file, the JSON form
PCM = (np.sin(np.arange(64) / 3) * 8000).astype("<i2").tobytes()
WAV = audio.to_wav(audio.Clip((np.frombuffer(PCM, "<i2") / 32768).astype(np.float32), 16000))
JSON = json.dumps({"pcm_base64": base64.b64encode(PCM).decode(), "sample_rate": 16000}).encode()


def function_of(path: str) -> str:
    return path.strip("/").split("/")[0]


def effective_servers(item: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAPI: the operation's servers override the path item's, which override the document's."""
    servers: list[dict[str, Any]] = operation.get("servers") or item.get("servers") or SPEC.get("servers") or []
    return servers


def body_for(media_type: str, schema: dict[str, Any]) -> bytes:
    """A tiny valid body of the kind the spec advertises for ``media_type`` (by its schema, not by its name)."""
    if "$ref" in schema or media_type == "application/json":
        return JSON
    kind = schema.get("contentMediaType")
    if kind == "audio/wav":
        return WAV
    if kind == "application/octet-stream":
        return PCM
    raise AssertionError(f"/verify advertises {media_type} with a schema this test does not know: {schema}")


@pytest.mark.parametrize(
    ("path", "method"), [(p, m) for p, m, _, _ in OPERATIONS], ids=[f"{m.upper()} {p}" for p, m, _, _ in OPERATIONS]
)
def test_every_path_names_its_own_functions_local_server(path: str, method: str) -> None:
    item = SPEC["paths"][path]
    servers = effective_servers(item, item[method])
    assert servers, f"{method.upper()} {path} has no server"
    ports = {urlsplit(s["url"]).port for s in servers}
    assert ports == {PORTS[function_of(path)]}, f"{method.upper()} {path} points at {ports}"


def test_verify_advertises_only_content_types_it_decodes() -> None:
    content = SPEC["paths"]["/verify"]["post"]["requestBody"]["content"]
    assert content, "POST /verify advertises no request content type"
    for media_type, entry in content.items():
        body = body_for(media_type, entry.get("schema", {}))
        try:
            clip = audio.from_body(body, media_type, None)
        except errors.UnsupportedMediaType:
            pytest.fail(f"POST /verify advertises {media_type}, which audio.from_body refuses with 415")
        assert clip.rate in audio.SUPPORTED_RATES and len(clip.samples) > 0, media_type


def test_verify_advertises_every_content_type_it_serves() -> None:
    advertised = {m.lower() for m in SPEC["paths"]["/verify"]["post"]["requestBody"]["content"]}
    candidates = [
        "application/octet-stream",
        "application/json",
        "audio/pcm",
        "audio/L16",
        "audio/l16",
        "audio/x-pcm",
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/basic",
        "audio/ogg",
        "audio/mpeg",
        "audio/flac",
        "audio/webm",
        "text/plain",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ]
    served = set()
    for media_type in candidates:
        try:
            audio.from_body(PCM, media_type, None)  # not RIFF, so the type alone decides
        except errors.UnsupportedMediaType:
            continue
        except errors.BadRequest:  # e.g. PCM bytes sent as JSON: served, just not valid JSON
            pass
        served.add(media_type.lower())
    assert served == advertised


def test_verify_sample_rates_are_the_served_ones() -> None:
    assert SPEC["components"]["schemas"]["SampleRate"]["enum"] == list(audio.SUPPORTED_RATES)


@pytest.mark.parametrize(
    ("path", "method"),
    [(p, m) for p, m, _, op in OPERATIONS if "requestBody" in op and p != "/verify"],
    ids=[f"{m.upper()} {p}" for p, m, _, op in OPERATIONS if "requestBody" in op and p != "/verify"],
)
def test_every_other_request_body_is_json(path: str, method: str) -> None:
    """Every other handler reads its body with ``Ctx.json`` (JSON whatever the header says): advertise only JSON."""
    content = SPEC["paths"][path][method]["requestBody"]["content"]
    assert set(content) == {"application/json"}


def error_codes_in_the_code() -> dict[str, set[str]]:
    """Every error code the functions may answer, with where: ``code="..."`` literals, each error kind's default,
    the codes of what the server refuses before a handler runs, and the verify refusals' 429s."""
    from lockwise.core import server_errors

    functions = Path(__file__).resolve().parents[2] / "functions"
    found: dict[str, set[str]] = {}
    for source in functions.rglob("*.py"):
        text = source.read_text()
        for code in re.findall(r'\bcode="([a-z_]+)"', text) + re.findall(r'default_code = \d+, "([a-z_]+)"', text):
            found.setdefault(code, set()).add(str(source.relative_to(functions)))
    for code in server_errors.CODES.values():
        found.setdefault(code, set()).add("lockwise/core/server_errors.py")
    for refusal in vars(verification).values():
        if isinstance(refusal, verification.Refusal):
            found.setdefault(refusal.code, set()).add("lockwise/voice/verification.py")
    return found


def test_every_error_code_the_functions_answer_is_in_the_spec() -> None:
    """A client reads ``error.code``: 14 codes the functions answer (``lock_not_found`` among them, the 404 of
    nearly every lock operation), the server's own refusals and the error kinds' defaults were named nowhere in the
    spec (reviews). Named as a code: in backticks, or in an enum."""
    text = (Path(__file__).resolve().parents[2] / "functions" / "openapi.yaml").read_text()
    enums = " ".join(re.findall(r"enum: \[([^\]]*)\]", text))
    codes = error_codes_in_the_code()
    assert len(codes) > 100 and "voice_attempt_rate" in codes  # the scan finds them (111 when this was written)
    named = {code for code in codes if f"`{code}`" in text or re.search(rf"\b{code}\b", enums)}
    assert {code: sorted(where) for code, where in codes.items() if code not in named} == {}
