"""Schemathesis attack on ``functions/openapi.yaml``: every operation of each function (devices, embed, verify), sent
by every kind of caller, against the real stack (PostgreSQL, Firestore and Auth emulators, broker, a tiny ECAPA).

Callers: ``anonymous`` (the generated credential headers are dropped), ``app_user`` (the lock owner's Auth emulator
ID token), ``service`` (the service token) and ``lock`` (every request signed by the paired lock: a WSGI middleware
signs exactly the method, path, query, content type, sample rate and body the function reads). A caller's credential
replaces the generated header of the same name; the others keep the fuzzer's junk values (a junk bearer token at
the relay, a junk service token at the app's endpoints...). Each test builds a world (a paired lock with a user per
role, a command, an invitation, a spare lock; for verify an enrolled owner) and attacks the function's operations in
the document's order, the destructive ones (re-pairing, member removal, transfer, delete) last so that the others
still meet live resources.

Per operation and caller: the explicit cases of ``EXPLICIT`` (valid requests on the world's real resources, so that
2xx answers are checked too, and regression cases of past findings), then ``MAX_EXAMPLES`` generated cases, positive
and negative (not those negating a credential: the anonymous caller covers that), whose path parameters are the
world's real ids about half the time (a ``flatmap_path_parameters`` hook). Audio bodies come from strategies for WAV
and raw PCM (random bytes, forged headers, speech-like clips).

Bounds: Hypothesis with a fixed seed, ``derandomize``, no example database, no shrinking, ``MAX_EXAMPLES`` (30)
generated cases per operation and caller: about 3,800 requests, 2.5 minutes on two cores with the services' start.

Checks on every response: no 5xx (``not_a_server_error``), a documented status (``status_code_conformance``),
content type (``content_type_conformance``) and headers (``response_headers_conformance``), and a body that matches
the documented schema (``response_schema_conformance``). Every violation is collected (one per operation, kind and
status, with a count) with its request and the server's logged traceback; the test fails with all of them at the end.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode, HookContext
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.wrappers import Request

from lockwise.core.headers import SERVICE_TOKEN_HEADER
from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth
from simlock.lock import new_tls_key
from tests.conftest import REPO
from tests.devices_world import World, bearer, build_world, create_lock, new_lock_key
from tests.voices import pcm16, pcm_json, speech_like, spoken, wav

#: Hypothesis scans sys.modules: SpeechBrain's lazy modules are set aside (tests/conftest.py)
pytestmark = [pytest.mark.usefixtures("no_lazy_speechbrain_modules"), pytest.mark.attack]

SPEC = REPO / "functions" / "openapi.yaml"
#: the CI bounds; a deeper hunt on a workstation: SCHEMA_ATTACK_EXAMPLES=300 SCHEMA_ATTACK_SEED=7 (not LOCKWISE_*:
#: the stack_env fixture clears those)
SEED = int(os.environ.get("SCHEMA_ATTACK_SEED", "20261130"))
MAX_EXAMPLES = int(os.environ.get("SCHEMA_ATTACK_EXAMPLES", "30"))
CALLERS = ("anonymous", "app_user", "service", "lock")
FUNCTIONS = ("devices", "embed", "verify")
#: what the security schemes send; ``anonymous`` drops whatever the fuzzer generated for them
CREDENTIAL_HEADERS = ("Authorization", SERVICE_TOKEN_HEADER, "X-LockWise-Signature")
#: run last, in this order: each takes away something the others use
DESTRUCTIVE = ("redeemProvisioningCode", "removeMember", "transferLock", "deleteLock")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
VOICE = speech_like(3.0, f0=140, seed=1)  # the door's bodies: loud enough for intake, and short
AnyCase = Case[Any]
Operation = APIOperation[Any, Any, Any, Any]


# --------------------------------------------------------------------------------------------- audio bodies


def _wav_header(fmt: int, channels: int, rate: int, bits: int, data_len: int) -> bytes:
    block = channels * bits // 8
    chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_len) & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<I", len(chunk))
        + chunk
        + b"data"
        + struct.pack("<I", data_len)
    )


@st.composite
def _forged_wav(draw: st.DrawFn) -> bytes:
    """A WAV header with odd fields (format, channels, rate, bits, claimed length) before random data."""
    data = draw(st.binary(max_size=4096))
    header = _wav_header(
        draw(st.sampled_from([1, 3, 0xFFFE, 0])),
        draw(st.sampled_from([0, 1, 2, 3])),
        draw(st.sampled_from([0, 8000, 16000, 44100, 48000, 12345, 2**32 - 1])),
        draw(st.sampled_from([0, 8, 16, 24])),
        draw(st.sampled_from([len(data), 0, len(data) + 1000, 2**32 - 1])),
    )
    cut = draw(st.integers(0, len(header)))
    return header[: len(header) - cut] if draw(st.booleans()) else header + data


SPEECH_WAV = wav(VOICE)
OTHER_WAV = wav(speech_like(3.0, f0=220, seed=5))
#: what verify takes as WAV, matched case-insensitively, parameters ignored
WAV_TYPES = ("AUDIO/WAV", "audio/x-wav; codecs=1", "audio/wave", "audio/vnd.wave")
SPEECH_PCM = pcm16(VOICE)
WAV_BODIES = st.one_of(
    st.binary(max_size=2048),
    _forged_wav(),
    st.sampled_from([SPEECH_WAV, wav(VOICE[:4410]), wav(VOICE * 0.0), SPEECH_WAV[:2000], b"RIFF"]),
)
PCM_BODIES = st.one_of(st.binary(max_size=4096), st.sampled_from([SPEECH_PCM, SPEECH_PCM[:-1], b"\x00\x00" * 90000]))
schemathesis.openapi.media_type("audio/wav", WAV_BODIES, aliases=["audio/x-wav", "audio/wave", "audio/vnd.wave"])
schemathesis.openapi.media_type("application/octet-stream", PCM_BODIES, aliases=["audio/pcm"])


def wav_json(samples: Any) -> dict[str, object]:
    return {"wav_base64": base64.b64encode(wav(samples)).decode()}


# ------------------------------------------------------------------------------------------------- the world


class LockSigner:
    """WSGI middleware: signs each request as the lock, over the bytes, target and headers the function reads."""

    def __init__(self, app: Callable[..., Iterable[bytes]], key: Ed25519PrivateKey, lock_id: str) -> None:
        self.app = app
        self.key = key
        self.lock_id = lock_id

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        environ["wsgi.input"] = io.BytesIO(body)
        query = environ.get("QUERY_STRING", "")
        target = Request(environ).path + (f"?{query}" if query else "")
        signed = lock_auth.sign_headers(
            self.key,
            self.lock_id,
            environ["REQUEST_METHOD"],
            target,
            body,
            content_type=environ.get("CONTENT_TYPE", ""),
            sample_rate=environ.get("HTTP_X_SAMPLE_RATE", ""),
        )
        for name in ("X-LockWise-Lock", "X-LockWise-Timestamp", "X-LockWise-Nonce", "X-LockWise-Signature"):
            environ["HTTP_" + name.upper().replace("-", "_")] = signed[name]
        return self.app(environ, start_response)


@dataclass
class Scene:
    """The world the attack meets, and what the explicit cases need from it."""

    world: World
    service_token: str
    command_id: str
    spare_lock_id: str
    invitation_id: str
    embedding: str | None = None

    @property
    def lock(self) -> dict[str, str]:
        return {"lock_id": self.world.lock_id}

    def real_path_parameters(self) -> dict[str, list[str]]:
        # not the admin: the explicit transfer hands it the lock, so the fuzzer does not remove it first
        uids = [self.world.uid(r) for r in ("owner", "member", "guest_in", "guest_out", "stranger", "revoked")]
        return {
            "lock_id": [self.world.lock_id],
            "uid": uids,
            "command_id": [self.command_id],
            "invitation_id": [self.invitation_id],
        }

    def offer_to_admin(self) -> None:
        """The owner offers the lock to the admin (``transferLock``'s explicit case, made before the others)."""
        resp = self.world.devices.post(
            f"/devices/locks/{self.world.lock_id}/transfer",
            json={"uid": self.world.uid("admin")},
            headers=self.world.headers("owner"),
        )
        assert resp.status_code == 202, resp.get_json()

    def invitation(self, inviter: str, invitee: str, lock_id: str | None = None) -> str:
        """A new invitation from ``inviter`` (a role of the world) at the lock or another, to ``invitee``: a role of
        the world (by uid), or else an email address."""
        who = {"uid": self.world.uid(invitee)} if invitee in self.world.accounts else {"email": invitee}
        resp = self.world.devices.post(
            f"/devices/locks/{lock_id or self.world.lock_id}/members",
            json={**who, "role": "member"},
            headers=self.world.headers(inviter),
        )
        assert resp.status_code == 202, resp.get_json()
        return str(resp.get_json()["invitation"]["id"])

    def set_threshold(self, value: float) -> None:
        resp = self.world.devices.patch(
            f"/devices/locks/{self.world.lock_id}", json={"voice_threshold": value}, headers=self.world.headers("owner")
        )
        assert resp.status_code == 200, resp.get_json()

    def invitation_to_owner(self) -> str:
        """An invitation the owner (the ``app_user``) can answer: to a lock of the stranger's."""
        lock_id = create_lock(self.world.devices, self.world.accounts["stranger"], name="Neighbour")["lock"]["id"]
        return self.invitation("stranger", "owner", lock_id)


def build_scene(function: str, make_client: Callable[[str], Any], sign_up: Any, env: dict[str, str]) -> Scene:
    devices = make_client("devices")
    world = build_world(devices, sign_up)
    owner = world.accounts["owner"]
    resp = devices.post(f"/devices/locks/{world.lock_id}/commands", json={"action": "lock"}, headers=bearer(owner))
    assert resp.status_code == 202, resp.get_json()
    spare = create_lock(devices, owner, name="Spare door")["lock"]["id"]
    scene = Scene(world, env["LOCKWISE_SERVICE_TOKEN"], resp.get_json()["command"]["id"], spare, "")
    scene.invitation_id = scene.invitation("owner", "stranger")
    if function == "verify":  # an enrolled owner, so that a clip gets a decision; an embedding for the candidates
        embed = make_client("embed")
        samples = [pcm_json(sample) for sample in spoken()]
        assert embed.put("/embed/enrollment", json={"samples": samples}, headers=bearer(owner)).status_code == 201
        resp = embed.post("/embed", json=pcm_json(VOICE), headers={SERVICE_TOKEN_HEADER: scene.service_token})
        assert resp.status_code == 200, resp.get_json()
        scene.embedding = resp.get_json()["embedding"]
    return scene


# -------------------------------------------------------------------------------------------- explicit cases

Explicit = Callable[[Scene], list[dict[str, Any]]]


def _later(days: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


def _redeem(s: Scene) -> list[dict[str, Any]]:
    """Re-pair the lock with a fresh code (issued now: the fuzzer's new codes expire the earlier ones). The codes the
    fuzzer had issued to the owner today, made a day older here, leave room under the owner's daily limit
    (``LOCKWISE_PAIRINGS_PER_DAY``, counted per account in ``pairing_issues``)."""
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "UPDATE pairing_issues SET created_at = created_at - interval '1 day', expires_at = now()"
            " WHERE user_uid = :u",
            u=s.world.uid("owner"),
        )
    resp = s.world.devices.post(f"/devices/locks/{s.world.lock_id}/provisioning", headers=s.world.headers("owner"))
    assert resp.status_code == 201, resp.get_json()
    _, public = new_lock_key()
    return [{"body": {"code": resp.get_json()["code"], "public_key": public, "csr": new_tls_key()[1]}}]


def _relay_events(s: Scene) -> list[dict[str, Any]]:
    topics = s.world.credentials["mqtt"]["topics"]
    state = {"state": "unlocked", "battery_pct": 77, "firmware": "1.2.3", "ts": int(time.time())}
    ack = {"id": s.command_id, "nonce": "not-the-nonce", "result": "ok"}
    events = [
        {"topic": topics["state"], "payload": json.dumps(state)},
        {"topic": topics["status"], "payload": "online"},
        {"topic": topics["acks"], "payload": json.dumps(ack)},
        {"topic": topics["state"], "payload": json.dumps(state)},
        {"topic": "lockwise/nobody/state", "payload": "{}"},
        ["not", "an", "event"],
    ]
    return [{"body": {"events": events}}]


def _verify_voice(s: Scene) -> list[dict[str, Any]]:
    """Accepted in each encoding; the content type's case and parameters; an undocumented one (415); then, with the
    lock's threshold out of reach, rejections until the lockout (429), which the generated cases then meet too."""
    wav_as = [{"body": SPEECH_WAV, "media_type": "audio/wav", "headers": {"Content-Type": t}} for t in WAV_TYPES]
    return [
        {"body": SPEECH_WAV, "media_type": "audio/wav"},
        {"body": SPEECH_PCM, "media_type": "application/octet-stream", "headers": {"X-Sample-Rate": "44100"}},
        {"body": SPEECH_PCM, "media_type": "application/octet-stream", "query": {"sample_rate": 44100}},
        {"body": pcm_json(VOICE), "media_type": "application/json"},
        *wav_as,
        {"body": SPEECH_PCM, "media_type": "application/octet-stream", "headers": {"Content-Type": "audio/L16"}},
        {"before": lambda: s.set_threshold(1.0), "body": OTHER_WAV, "media_type": "audio/wav"},
        *[{"body": OTHER_WAV, "media_type": "audio/wav"}] * 5,
    ]


EXPLICIT: dict[str, Explicit] = {
    "createLock": lambda s: [{"body": {"name": "  Back door ", "supports_open": True}}],
    "getLock": lambda s: [{"path_parameters": s.lock}],
    "updateLock": lambda s: [
        {"path_parameters": s.lock, "body": {"name": "Renamed door", "voice_threshold": 0.42}},
        {"path_parameters": s.lock, "body": {"voice_threshold": None}},
        {"path_parameters": s.lock, "body": {"voice_threshold": 5e-324}},  # found: under float4's range (a 500)
    ],
    "deleteLock": lambda s: [{"path_parameters": {"lock_id": s.spare_lock_id}}],
    "transferLock": lambda s: [{"path_parameters": s.lock, "body": {"uid": s.world.uid("admin")}}],
    # an offer stands before each (the owner's, to the admin): read, withdrawn; accepting is the admin's, so the
    # caller here (the owner, or no one) is refused and the lock keeps its owner for the operations after
    "getTransfer": lambda s: [{"before": s.offer_to_admin, "path_parameters": s.lock}],
    "withdrawTransfer": lambda s: [{"before": s.offer_to_admin, "path_parameters": s.lock}],
    "acceptTransfer": lambda s: [{"before": s.offer_to_admin, "path_parameters": s.lock}],
    "newProvisioningCode": lambda s: [{"path_parameters": s.lock}],
    "listMembers": lambda s: [{"path_parameters": s.lock}],
    "listLockInvitations": lambda s: [
        {"path_parameters": s.lock},
        {"path_parameters": s.lock, "query": {"limit": "1"}},
    ],
    "addMember": lambda s: [
        {
            "path_parameters": s.lock,
            "body": {
                "uid": s.world.uid("stranger"),
                "role": "guest",
                "access": {
                    "weekdays": ["mon", "fri"],
                    "day_start_minute": 1320,
                    "day_end_minute": 360,
                    "timezone": "Europe/Paris",
                    "expires_at": _later(60),
                },
            },
        },
        {"path_parameters": s.lock, "body": {"email": " Invitee@Example.com", "role": "member"}},
    ],
    "updateMember": lambda s: [
        {
            "path_parameters": {**s.lock, "uid": s.world.uid("member")},
            "body": {"role": "guest", "access": {"valid_from": _later(0), "valid_until": _later(30)}},
        }
    ],
    "removeMember": lambda s: [{"path_parameters": {**s.lock, "uid": s.world.uid("guest_out")}}],
    "withdrawInvitation": lambda s: [
        {"path_parameters": {**s.lock, "invitation_id": s.invitation("owner", "withdrawn@example.com")}},
        {"path_parameters": {**s.lock, "invitation_id": s.invitation_to_owner()}},
    ],
    "listMyInvitations": lambda s: [{"before": s.invitation_to_owner}],
    "acceptInvitation": lambda s: [{"path_parameters": {"invitation_id": s.invitation_to_owner()}}],
    "declineInvitation": lambda s: [{"path_parameters": {"invitation_id": s.invitation_to_owner()}}],
    "resetVoiceLockout": lambda s: [{"path_parameters": s.lock}],
    # an operator's (the ``lockwise_operator`` claim): none of the scene's callers is one
    "listOwnerlessLocks": lambda s: [{}],
    "handOverOwnerlessLock": lambda s: [{"path_parameters": s.lock, "body": {"uid": s.world.uid("admin")}}],
    "deleteOwnerlessLock": lambda s: [{"path_parameters": {"lock_id": s.spare_lock_id}}],
    "createCommand": lambda s: [
        {"path_parameters": s.lock, "headers": {"Idempotency-Key": "attack-1"}, "body": {"action": "unlock"}},
        {"path_parameters": s.lock, "headers": {"Idempotency-Key": "attack-1"}, "body": {"action": "unlock"}},
        {"path_parameters": s.lock, "body": {"action": "lock", "idempotency_key": "attack-1"}},
    ],
    "getCommand": lambda s: [{"path_parameters": {**s.lock, "command_id": s.command_id}}],
    "redeemProvisioningCode": _redeem,
    "renewLockCertificate": lambda s: [{"body": {"csr": new_tls_key()[1]}}],
    "relayEvents": _relay_events,
    "enrollVoice": lambda s: [
        {
            "body": {
                "samples": [pcm_json(spoken()[0]), wav_json(spoken()[1]), pcm_json(spoken()[2], rate=44100)]
                + [pcm_json(spoken()[3]), wav_json(spoken()[4])]
            }
        }
    ],
    "embedClip": lambda s: [{"body": pcm_json(VOICE)}, {"body": wav_json(VOICE)}],
    "verifyVoice": _verify_voice,
    "scoreCandidates": lambda s: [{"body": {**pcm_json(VOICE), "candidates": [s.embedding or "", s.embedding or ""]}}],
}


# ---------------------------------------------------------------------------------------------------- attack


@dataclass
class Finding:
    count: int
    caller: str
    operation: str
    status: int
    problems: str
    request: str
    response: str
    server_log: str

    def report(self) -> str:
        text = (
            f"--- {self.operation} as {self.caller}: {self.status} ({self.count}x)\n{self.problems}\n"
            f"request: {self.request}\nresponse: {self.response}"
        )
        return text + (f"\nserver log:\n{self.server_log}" if self.server_log else "")


class ErrorLog(logging.Handler):
    """The functions' ERROR records (an unhandled exception is logged with its traceback before the 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append(text)

    def take(self) -> str:
        text = "\n".join(self.lines)
        self.lines.clear()
        return text


@dataclass
class Attack:
    app: Any
    caller: str
    caller_headers: dict[str, str]
    log: ErrorLog
    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)

    def send(self, case: AnyCase) -> None:
        label = case.operation.label
        self.cases[label] = self.cases.get(label, 0) + 1
        if self.caller == "anonymous" and case.headers:
            for name in CREDENTIAL_HEADERS:
                case.headers.pop(name, None)
        self.log.take()
        try:
            response = case.call(app=self.app, headers=self.caller_headers)
            tally = self.statuses.setdefault(label, {})
            tally[response.status_code] = tally.get(response.status_code, 0) + 1
        except Exception as exc:  # noqa: BLE001 - an exception out of the app is a finding like a 500
            self._record(case, None, type(exc).__name__, f"{exc!r}\n{traceback.format_exc()}")
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            titles = sorted({f.title for f in group.exceptions})
            details = "\n".join(f"  {f.title}: {f.message.strip()[:600]}" for f in group.exceptions)
            self._record(case, response, ", ".join(titles), details)
            return
        if self.log.lines:  # an answer as documented, but the function logged an error (an exception behind a 4xx)
            self._record(case, response, "error logged", "  the function logged an ERROR record for this request")

    def _record(self, case: AnyCase, response: Response | None, kind: str, details: str) -> None:
        status = response.status_code if response is not None else 0
        key = (case.operation.label, kind, str(status))
        if key in self.findings:
            self.findings[key].count += 1
            self.log.take()
            return
        self.findings[key] = Finding(
            1,
            self.caller,
            case.operation.label,
            status,
            details,
            _describe(case, self.caller_headers),
            _excerpt(response),
            self.log.take(),
        )


def _describe(case: AnyCase, caller_headers: dict[str, str]) -> str:
    """The request as generated; the caller's credentials (not shown) replace generated headers of the same name."""
    body = "" if case.body is None or type(case.body).__name__ == "NotSet" else repr(case.body)
    hidden = {"x-schemathesis-testcaseid", *(name.lower() for name in caller_headers)}
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in hidden}
    return (
        f"{case.method} {case.formatted_path} query={case.query or {}} headers={headers}"
        f" media_type={case.media_type} body={body[:400]}{'...' if len(body) > 400 else ''}"
    )


def _excerpt(response: Response | None) -> str:
    if response is None:
        return "(none)"
    content_type = response.headers.get("content-type", [""])[0]
    return f"{response.status_code} {content_type} {response.content[:400]!r}"


def _all_operations(schema: Any) -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document has an operation schemathesis cannot read: {result.err()}"
        operations.append(result.ok())
    return operations


def _operations(schema: Any, function: str) -> list[Operation]:
    prefix = f"/{function}"
    operations = [op for op in _all_operations(schema) if op.path == prefix or op.path.startswith(prefix + "/")]
    rank = {op_id: i + 1 for i, op_id in enumerate(DESTRUCTIVE)}
    return sorted(operations, key=lambda op: rank.get(op.definition.raw.get("operationId", ""), 0))


def _just_once(scene: Scene) -> list[dict[str, Any]]:
    return [{}]


def attack_operation(attack: Attack, operation: Operation, scene: Scene) -> None:
    op_id = operation.definition.raw.get("operationId", "")
    for kwargs in EXPLICIT.get(op_id, _just_once)(scene):
        before = kwargs.pop("before", None)
        if before is not None:
            before()
        attack.send(operation.Case(**kwargs))
    # negative cases need something to negate (a health check or the CRL has neither parameter nor body)
    negatable = any(True for _ in operation.iter_parameters()) or len(operation.body) > 0
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if negatable else [GenerationMode.POSITIVE]
    # a negated credential header would be dropped with the caller's credential: the anonymous caller covers that
    strategy = st.one_of([operation.as_strategy(generation_mode=mode) for mode in modes]).filter(
        lambda case: not operation.schema.is_security_param_negated(case)
    )

    @seed(SEED)
    @FUZZ_SETTINGS
    @given(case=strategy)
    def fuzz(case: AnyCase) -> None:
        attack.send(case)

    fuzz()


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("lockwise")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _params() -> list[Any]:
    return [
        pytest.param(
            function, caller, id=f"{function}-{caller}", marks=[pytest.mark.model] if function != "devices" else []
        )
        for function in FUNCTIONS
        for caller in CALLERS
    ]


@pytest.mark.parametrize(("function", "caller"), _params())
def test_schema_attack(
    function: str,
    caller: str,
    stack_env: dict[str, str],
    make_client: Callable[[str], Any],
    sign_up: Any,
    error_log: ErrorLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import functions_framework

    started = time.monotonic()
    scene = build_scene(function, make_client, sign_up, stack_env)
    source = str(REPO / "functions" / function / "main.py")
    app = functions_framework.create_app(target=function, source=source)  # type: ignore[no-untyped-call]
    if caller == "lock":
        app.wsgi_app = LockSigner(app.wsgi_app, scene.world.lock_key, scene.world.lock_id)
    caller_headers = {
        "anonymous": {},
        "app_user": scene.world.headers("owner"),
        "service": {SERVICE_TOKEN_HEADER: scene.service_token},
        "lock": {},
    }[caller]

    schema = schemathesis.openapi.from_path(SPEC)
    real = scene.real_path_parameters()

    @schema.hook
    def flatmap_path_parameters(context: HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
        """About half the time, a path parameter names the world's real resource (past the 404s)."""
        if not path_parameters:
            return st.just(path_parameters)
        return st.fixed_dictionaries(
            {
                name: st.one_of(st.just(value), st.sampled_from(real[name])) if name in real else st.just(value)
                for name, value in path_parameters.items()
            }
        )

    attack = Attack(app, caller, caller_headers, error_log)
    operations = _operations(schema, function)
    for operation in operations:
        attack_operation(attack, operation, scene)

    elapsed = time.monotonic() - started
    classes: dict[str, int] = {}
    for tally in attack.statuses.values():
        for status, n in tally.items():
            classes[f"{status // 100}xx"] = classes.get(f"{status // 100}xx", 0) + n
    lines = [
        f"{function}/{caller}: {len(operations)} operations, {sum(attack.cases.values())} cases"
        f" ({', '.join(f'{k} {v}' for k, v in sorted(classes.items()))}), {len(attack.findings)} findings,"
        f" {elapsed:.1f} s"
    ]
    if os.environ.get("SCHEMA_ATTACK_DETAIL"):  # the statuses each operation answered
        lines += [f"  {label}: {dict(sorted(tally.items()))}" for label, tally in attack.statuses.items()]
    with capsys.disabled():
        sys.stdout.write("\n" + "\n".join(lines) + "\n")
    findings = sorted(attack.findings.values(), key=lambda f: (f.operation, f.status))
    assert not findings, f"{len(findings)} findings:\n" + "\n".join(f.report() for f in findings)


def test_every_operation_belongs_to_a_function() -> None:
    """The attack splits operations by path prefix: none may be left out."""
    schema = schemathesis.openapi.from_path(SPEC)
    every = {op.label for op in _all_operations(schema)}
    attacked = {op.label for function in FUNCTIONS for op in _operations(schema, function)}
    assert every == attacked, every - attacked
