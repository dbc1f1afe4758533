"""The product's main job, narrated: ``./dev demo`` (``python -m infra.local.demo``).

Against the running local stack (``./dev stack``; started here, and stopped afterwards, when it is not up): an owner
signs up (Auth emulator), creates a lock, a simulated lock pairs and connects over MQTT/TLS, the owner enrolls five
clips of a real voice (Allison, from the Asterisk corpus), the lock hears another clip of her and opens (the grant
checked and acted on at once; the same command delivered over MQTT through the relay, acknowledged, and shown in the
app's Firestore live view, read with the owner's token through the security rules), a stranger is refused, strangers
in a row lock voice unlock out, and the owner opens the door from the app instead. Each step prints what happened and
how long it took; the exit code is non-zero when a step does not behave.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.local.services import poll
from infra.local.stack import background

REPO = Path(__file__).resolve().parents[2]
TOOLS_HOME = Path(os.environ.get("LOCKWISE_TOOLS_HOME", Path.home() / ".cache" / "lockwise"))


class StepFailed(RuntimeError):
    pass


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def request(url: str, body: Any = None, token: str | None = None, method: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else raw.decode(errors="replace")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    result = poll(check, timeout, interval=0.05)
    if not result:
        raise StepFailed(f"{what} did not happen within {timeout:g} s")
    return result


class Story:
    def __init__(self) -> None:
        self.number = 0
        self.started = time.monotonic()

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        """One narrated step: prints its title, what it found (appended to the yielded list) and its duration."""
        self.number += 1
        notes: list[str] = []
        began = time.monotonic()
        try:
            yield notes
        except StepFailed as exc:
            say(f"{self.number:>2}. {title}: FAILED ({time.monotonic() - began:.2f} s): {exc}")
            raise
        detail = f": {'; '.join(notes)}" if notes else ""
        say(f"{self.number:>2}. {title} ({(time.monotonic() - began) * 1000:.0f} ms){detail}")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def stack_is_up(env: dict[str, str]) -> bool:
    try:
        return request(env["LOCKWISE_DEVICES_URL"] + "/devices/health")[0] == 200
    except (OSError, KeyError):
        return False


@contextmanager
def running_stack(env_file: Path) -> Iterator[dict[str, str]]:
    """The stack's environment: the running one's, else a stack started now (and stopped at the end)."""
    if env_file.is_file() and stack_is_up(env := read_env(env_file)):
        yield env
        return
    say("the stack is not running: starting one for the demo (stopped at the end; ./dev stack keeps one up)")
    try:
        with background(timeout_s=600) as started:
            yield started
    except RuntimeError as exc:
        tail = str(exc).strip().splitlines()[-1:] or ["no output"]
        raise StepFailed(f"the stack could not start: {tail[0]} (run ./dev stack to see why)") from exc


def corpus_voices(corpus: Path) -> tuple[list[Path], list[Path]]:
    """Allison's clips with ample speech (she is held out of the score cohort, as a real user is) and strangers'."""
    from lockwise.voice import audio

    if not (corpus / "allison").is_dir():
        from infra.voice.corpus import CorpusError, build

        try:
            build(corpus, TOOLS_HOME / "corpus" / "debs")
        except CorpusError as exc:
            raise StepFailed(f"no speech corpus and it cannot be built: {exc} (./dev setup builds it)") from exc

    def ample(path: Path) -> bool:
        clip = audio.parse_wav(path.read_bytes())
        return audio.speech_seconds(clip.samples, clip.rate) >= 3.0

    allison = [p for p in sorted((corpus / "allison").glob("en-*.wav"))[:60] if ample(p)]
    strangers = [p for s in ("june", "carlo", "ivrvoice-ru") for p in sorted((corpus / s).glob("*.wav"))[40:43]]
    return allison, strangers


def sign_up(env: dict[str, str], email: str) -> dict[str, Any]:
    url = (
        f"http://{env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/accounts:signUp"
        "?key=demo-api-key"
    )
    status, account = request(url, {"email": email, "password": "open-sesame-9", "returnSecureToken": True})
    if status != 200:
        raise StepFailed(f"the Auth emulator refused the sign-up: {status} {account}")
    result: dict[str, Any] = account
    return result


def live_state(env: dict[str, str], lock_id: str, token: str) -> str | None:
    """The lock's state as the app reads it: Firestore, with the user's ID token (the security rules apply)."""
    url = (
        f"http://{env['FIRESTORE_EMULATOR_HOST']}/v1/projects/{env['LOCKWISE_PROJECT_ID']}/databases/(default)"
        f"/documents/locks/{lock_id}"
    )
    status, doc = request(url, token=token)
    if status != 200 or not isinstance(doc, dict):
        return None
    value = doc.get("fields", {}).get("state", {}).get("stringValue")
    return str(value) if value is not None else None


def run(env: dict[str, str], corpus: Path) -> None:
    from simlock.lock import SimulatedLock, provision

    story = Story()
    devices, embed, verify = env["LOCKWISE_DEVICES_URL"], env["LOCKWISE_EMBED_URL"], env["LOCKWISE_VERIFY_URL"]
    allison, strangers = corpus_voices(corpus)
    if len(allison) < 7 or len(strangers) < 6:
        raise StepFailed(f"the corpus in {corpus} has too few clips (./dev setup rebuilds it)")

    with story.step("An owner signs up (Auth emulator)") as notes:
        owner = sign_up(env, f"owner-{int(time.time() * 1000)}@example.com")
        token = owner["idToken"]
        status, me = request(devices + "/devices/me", token=token)
        if status != 200:
            raise StepFailed(f"/devices/me answered {status}: {me}")
        notes.append(f"uid {me['uid']}")
    with story.step("The owner creates a lock") as notes:
        status, created = request(devices + "/devices/locks", {"name": "Front door"}, token)
        if status != 201:
            raise StepFailed(f"creating the lock answered {status}: {created}")
        lock_id, code = created["lock"]["id"], created["provisioning"]["code"]
        notes.append(f"lock {lock_id}, pairing code {code[:4]}...")
    with story.step("The simulated lock pairs (CSR -> certificate) and connects over MQTT/TLS") as notes:
        config = provision(devices, code, env["MQTT_CA_FILE"], host=env.get("MQTT_HOST"))
        lock = SimulatedLock(config)
        lock.start()
        notes.append(f"broker identity {config.identity[:8]}..., state {lock.state}")
    try:
        with story.step("The owner enrolls five clips of her voice") as notes:
            import base64

            samples = [{"wav_base64": base64.b64encode(p.read_bytes()).decode()} for p in allison[:5]]
            status, enrolled = request(embed + "/embed/enrollment", {"samples": samples}, token, method="PUT")
            if status != 201:
                raise StepFailed(f"enrollment answered {status}: {enrolled}")
            notes.append(f"{enrolled['samples']} samples, agreement {enrolled['agreement']}")
        with story.step("The lock hears her at the door: the door opens") as notes:
            answer = lock.hear(verify, allison[5].read_bytes(), again=allison[6].read_bytes())
            if answer.get("decision") != "accepted":
                raise StepFailed(f"her voice was not accepted: {answer}")
            how = "its grant checked and acted on" if answer["acted_on_grant"] else "the command came over MQTT first"
            notes.append(f"accepted ({how}), state {lock.state}")
            command_id = answer["command_id"]
        with story.step("The unlock command arrives over MQTT through the relay and is acknowledged") as notes:
            path = f"{devices}/devices/locks/{lock_id}/commands/{command_id}"
            wait_until(lambda: request(path, token=token)[1]["command"]["status"] == "acked", 15, "the ack")
            notes.append("command acked in PostgreSQL")
        with story.step("The app's live view shows the door unlocked (Firestore, through the rules)") as notes:
            wait_until(lambda: live_state(env, lock_id, token) == "unlocked", 15, "the live view update")
            notes.append("locks/{id}.state = unlocked")
        with story.step("A stranger's voice is refused") as notes:
            answer = lock.hear(verify, strangers[0].read_bytes(), again=strangers[1].read_bytes())
            if answer.get("decision") != "rejected":
                raise StepFailed(f"a stranger was not rejected: {answer}")
            notes.append(f"rejected ({answer['reason']}), the lock learns no score")
        with story.step("Strangers in a row lock voice unlock out") as notes:
            attempts = 1
            for clip in strangers[2:] + strangers[:2]:
                answer = lock.hear(verify, clip.read_bytes())
                attempts += 1
                if answer["status"] == 429:
                    notes.append(f"after {attempts - 1} rejections: {answer['error']['code']}, retry in "
                                 f"{answer['error']['details']['retry_after_s']} s")  # fmt: skip
                    break
                if answer.get("decision") != "rejected":
                    raise StepFailed(f"a stranger was not rejected: {answer}")
            else:
                raise StepFailed(f"no lockout after {attempts} rejections")
        with story.step("The owner opens the door from the app instead") as notes:
            before = len(lock.executed)
            status, issued = request(f"{devices}/devices/locks/{lock_id}/commands", {"action": "unlock"}, token)
            if status != 202:
                raise StepFailed(f"the app's unlock answered {status}: {issued}")
            path = f"{devices}/devices/locks/{lock_id}/commands/{issued['command']['id']}"
            wait_until(lambda: len(lock.executed) > before, 15, "the lock executing the command")
            wait_until(lambda: request(path, token=token)[1]["command"]["status"] == "acked", 15, "the ack")
            notes.append("executed by the lock and acked; the voice lockout is over")
    finally:
        lock.stop()
    say(f"\nThe whole story took {time.monotonic() - story.started:.1f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", type=Path, default=REPO / ".local" / "stack.env")
    parser.add_argument("--corpus", type=Path, default=TOOLS_HOME / "corpus" / "asterisk")
    args = parser.parse_args(argv)
    try:
        with running_stack(args.env_file) as env:
            run(env, args.corpus)
    except StepFailed as exc:
        say(f"demo failed: {exc}")
        return 1
    except ConnectionError as exc:
        say(f"demo failed: the simulated lock could not connect to the broker ({exc}); is ./dev stack healthy?")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
