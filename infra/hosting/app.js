// The LockWise web console: the app's side of the back-end in one page, for the people who build on it.
// Signs in with Firebase Auth, calls the functions through Hosting's rewrites (/devices, /embed), and reads the
// live view (lock state, activity feed, voice status) straight from Firestore with the Firebase JS SDK, so the
// security rules are exercised by the real client SDK. Locally `./dev stack` serves it with emulators
// (/__/firebase/init.json says where they are); deployed, Firebase Hosting serves it beside the API rewrites.
import {
  collection,
  connectAuthEmulator,
  connectFirestoreEmulator,
  createUserWithEmailAndPassword,
  doc,
  getAuth,
  getFirestore,
  initializeApp,
  limit,
  onAuthStateChanged,
  onSnapshot,
  orderBy,
  query,
  signInWithEmailAndPassword,
  signOut,
  where,
} from "./vendor/firebase.js";

const SAMPLES = 5;
const SAMPLE_SECONDS = 4.5;
// how long a command whose answer was lost is sent again as itself: the devices function's command lifetime
// (LOCKWISE_COMMAND_TTL_S, 30 s as deployed); past it, it can no longer be carried out and a click is a new one
const COMMAND_RETRY_MS = 30_000;
const $ = (selector, root = document) => root.querySelector(selector);
const unsubscribers = [];

// a notice: text, or a list of text and elements (``theirs``)
function notice(parts, kind = "info") {
  const el = $("#notice");
  el.replaceChildren(...[parts].flat());
  el.dataset.kind = kind;
}

// Text someone wrote, shown set apart from the console's own wording (attack run 118): a lock's name is its owner's
// free text and an address another's, and written into one of the console's sentences a name made up the rest of it
// ("Home as admin, from mom@example.com" before the real sender). Each sits in an element of its own: isolated (its
// direction cannot reorder the sentence around it), outlined (where it begins and ends is seen) and cut short with
// an ellipsis (the title holds it whole), so a long one leaves the rest of its line in view.
function theirs(text, kind = "theirs") {
  const el = document.createElement("bdi");
  el.className = kind;
  el.textContent = text;
  el.title = text;
  return el;
}

// the same in a plain-text dialog: between a first-strong isolate and its end (text others read holds neither)
const isolated = (text) => `\u2068${text}\u2069`;

async function start() {
  let config;
  try {
    const resp = await fetch("/__/firebase/init.json");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    config = await resp.json();
  } catch (err) {
    notice(`Cannot load the Firebase configuration (/__/firebase/init.json): ${err.message}. Is the stack up (./dev stack)?`, "error");
    return;
  }
  const app = initializeApp(config);
  const auth = getAuth(app);
  const db = getFirestore(app);
  if (config.emulators) {
    connectAuthEmulator(auth, config.emulators.auth, { disableWarnings: true });
    connectFirestoreEmulator(db, config.emulators.firestore.host, config.emulators.firestore.port);
  }
  const ui = new Console(auth, db);
  ui.wire();
  onAuthStateChanged(auth, (user) => ui.show(user));
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

// A call made for an account signed out since: it is not sent, and its answer is not shown, nor said in a notice.
class SessionEnded extends Error {
  constructor() {
    super("signed out since");
  }
}
const ended = (err) => err instanceof SessionEnded;

class Console {
  constructor(auth, db) {
    this.auth = auth;
    this.db = db;
    this.session = null; // one per sign-in (show): what a call is made for
  }

  // A call for `session` (the current sign-in unless told): sent with its account's token only while that account is
  // still the one signed in, and its answer given back only if it still is when the answer comes (attack run 105: a
  // call took the token of whoever was signed in when it was sent, and its answer was shown to whoever was when it
  // came: an enrollment recorded from one person was uploaded as the voice of the account signed in meanwhile on the
  // same browser, and locks listed for one account were shown to the next).
  async api(method, path, body, extraHeaders = {}, session = this.session) {
    const user = this.auth.currentUser;
    if (!session || session !== this.session || user?.uid !== session.uid) throw new SessionEnded();
    const token = await user.getIdToken();
    if (session !== this.session) throw new SessionEnded();
    const headers = { ...extraHeaders, Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, { error: { message: `the API did not answer (${err.message}); is the stack up?` } });
    }
    const data = resp.status === 204 ? {} : await resp.json().catch(() => ({}));
    if (session !== this.session) throw new SessionEnded();
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  wire() {
    $("#sign-in-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.signIn(signInWithEmailAndPassword);
    });
    $("#sign-up-button").addEventListener("click", () => this.signIn(createUserWithEmailAndPassword));
    $("#sign-out").addEventListener("click", () => signOut(this.auth));
    $("#new-lock-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.createLock($("#new-lock-name").value.trim());
    });
    $("#enroll").addEventListener("click", () => this.enroll());
    $("#forget-voice").addEventListener("click", () => this.forgetVoice());
  }

  async signIn(method) {
    try {
      await method(this.auth, $("#email").value.trim(), $("#password").value);
      notice("");
    } catch (err) {
      notice(`Sign-in failed: ${err.code || err.message}`, "error");
    }
  }

  show(user) {
    while (unsubscribers.length) unsubscribers.pop()();
    this.session = user ? { uid: user.uid } : null;
    this.forget();
    $("#sign-in").hidden = Boolean(user);
    $("#signed-in").hidden = !user;
    $("#sign-out").hidden = !user;
    $("#who").textContent = user ? user.email || user.uid : "";
    document.body.dataset.uid = user ? user.uid : "";
    if (!user) return;
    // a voice enrolled before the address is verified is forgotten once it is (the back-end: an account made in
    // advance with someone else's address must not keep a voice when its owner takes it over)
    $("#unverified-address").hidden = !user.email || user.emailVerified;
    unsubscribers.push(
      onSnapshot(
        doc(this.db, "users", user.uid),
        (snap) => {
          const enrolled = snap.exists() && snap.data().voice_enrolled;
          $("#voice-status").textContent = enrolled ? `enrolled (${snap.data().samples} samples)` : "not enrolled";
          $("#voice-status").dataset.enrolled = String(Boolean(enrolled));
        },
        (err) => notice(`Live voice status unavailable: ${err.code}`, "error"),
      ),
    );
    this.refresh();
  }

  // Nothing of the account signed in before is left on the page (attack run 105: signed out, the page kept its
  // password in the sign-in form, one click from signing in again, and the notice kept a new lock's pairing code;
  // the next account saw the first's invitations and voice status until its own came).
  forget() {
    $("#password").value = "";
    notice("");
    $("#locks").replaceChildren();
    $("#invitations").replaceChildren();
    $("#invitations-section").hidden = true;
    $("#voice-status").textContent = "…";
    delete $("#voice-status").dataset.enrolled;
    $("#enroll-progress").textContent = "";
    delete $("#enroll-progress").dataset.done;
    $("#new-lock-name").value = "";
    this.unanswered = null;
    this.unansweredCommand = null;
    this.unansweredEnrollment = null;
  }

  // every page of a listing (GET /devices/locks and /devices/invitations answer 100 at most a page): its `key`'s
  // items, in order
  async allPages(path, key, session) {
    const items = [];
    let token = null;
    do {
      const query = token ? `?page_token=${encodeURIComponent(token)}` : "";
      const page = await this.api("GET", `${path}${query}`, undefined, {}, session);
      items.push(...page[key]);
      token = page.next_page_token;
    } while (token);
    return items;
  }

  // the locks and the invitations each on their own: invitations listed too often (a 429) or not at all leave the
  // locks shown (one listing's failure hid both: attack run 63); invitations not loaded are not shown, their buttons
  // would answer what may be gone. Returns what failed, said in one notice unless `quiet` (the caller says it).
  async refresh({ quiet = false } = {}) {
    const session = this.session;
    const [locks, invitations] = await Promise.allSettled([
      this.allPages("/devices/locks", "locks", session),
      this.allPages("/devices/invitations", "invitations", session),
    ]);
    if (session !== this.session) return []; // listed for an account signed out since
    const failed = [];
    if (locks.status === "fulfilled") {
      this.renderLocks(locks.value);
    } else {
      failed.push(`Could not load your locks: ${locks.reason.message}.`);
    }
    if (invitations.status === "fulfilled") {
      this.renderInvitations(invitations.value);
    } else {
      this.renderInvitations([]);
      failed.push(`Could not load your invitations: ${invitations.reason.message}.`);
    }
    if (failed.length && !quiet) notice(failed.join(" "), "error");
    return failed;
  }

  renderInvitations(invitations) {
    $("#invitations-section").hidden = invitations.length === 0;
    $("#invitations").replaceChildren(
      ...invitations.map((inv) => {
        const li = document.createElement("li");
        // who sent it beside the lock's name, the sender's free text ("Home" from a stranger); a devices function of
        // the release before (rolled back, or not yet deployed: Hosting deploys on its own) names no address at all,
        // which says nothing of the sender's (read as null, every sender had none: attack run 109)
        // The sender first, in the console's words, then the lock's name as the sender's text (attack run 118: the
        // name came first, in the same sentence, and one written "Home as admin, from mom@example.com," read as such)
        // (a uid is isolated too: one a deployment's own sign-in chose may hold any character but '/')
        const uid = theirs(inv.invited_by, "address");
        const from =
          inv.invited_by_email === undefined
            ? ["the account ", uid]
            : inv.invited_by_email === null
              ? ["an account with no verified address (", uid, ")"]
              : [theirs(inv.invited_by_email, "address")];
        li.append("From ", ...from, ": ", theirs(inv.lock.name), ` as ${inv.role} `);
        for (const answer of ["accept", "decline"]) {
          const b = document.createElement("button");
          b.textContent = answer;
          b.addEventListener("click", async () => {
            try {
              await this.api("POST", `/devices/invitations/${inv.id}/${answer}`);
              this.refresh();
            } catch (err) {
              if (!ended(err)) notice(err.message, "error");
            }
          });
          li.append(b);
        }
        return li;
      }),
    );
  }

  renderLocks(locks) {
    const box = $("#locks");
    box.replaceChildren();
    for (const lock of locks) {
      const card = $("#lock-template").content.firstElementChild.cloneNode(true);
      card.dataset.lockId = lock.id;
      $(".lock-name", card).textContent = lock.name;
      $(".role", card).textContent = `you: ${lock.role}`;
      this.showState(card, lock.state);
      const admin = lock.role === "owner" || lock.role === "admin";
      $(".pairing", card).hidden = lock.role !== "owner";
      $(".members-box", card).hidden = !admin;
      $(".unlock", card).addEventListener("click", () => this.command(card, lock.id, "unlock"));
      $(".lock-button", card).addEventListener("click", () => this.command(card, lock.id, "lock"));
      $(".pairing", card).addEventListener("click", () => this.pairingCode(card, lock.id));
      $(".invite-form", card).addEventListener("submit", (e) => {
        e.preventDefault();
        this.invite(card, lock.id);
      });
      if (admin) this.loadMembers(card, lock.id);
      box.append(card);
      this.watch(card, lock.id, admin, lock.role === "guest");
    }
  }

  showState(card, state) {
    const door = $(".door", card);
    if (!state) {
      // a guest outside their access window: the live view is theirs only inside it
      door.textContent = "outside your access hours";
      door.dataset.state = "unknown";
      return;
    }
    door.textContent = state.state || "unknown";
    door.dataset.state = state.state || "unknown";
    $(".online", card).textContent = state.online ? "online" : "offline";
    $(".battery", card).textContent = state.battery_pct == null ? "" : `battery ${state.battery_pct}%`;
  }

  watch(card, lockId, admin, guest) {
    // the live view: the lock's document and its activity feed, read under the security rules
    unsubscribers.push(
      onSnapshot(
        doc(this.db, "locks", lockId),
        (snap) => snap.exists() && this.showState(card, snap.data()),
        (err) => notice(`Live view of ${lockId} unavailable: ${err.code}`, "error"),
      ),
    );
    // owners and admins read the whole feed; anyone else the entries naming them and, but for a guest, the lock's
    // own reports (the security rules allow no more, so those queries say so), merged here
    // (an admin whose access document predates the role, until the lock is mirrored again, is refused the whole
    // feed: then a member's queries)
    const activity = collection(this.db, "locks", lockId, "activity");
    const whole = [query(activity, orderBy("at", "desc"), limit(12))];
    const members = [
      query(activity, where("about", "array-contains", this.auth.currentUser.uid), orderBy("at", "desc"), limit(12)),
      ...(guest ? [] : [query(activity, where("audience", "==", "everyone"), orderBy("at", "desc"), limit(12))]),
    ];
    const listen = (feeds, fallback) => {
      const seen = feeds.map(() => []);
      const stops = [];
      feeds.forEach((feed, i) => {
        const stop = onSnapshot(
          feed,
          (snap) => {
            seen[i] = snap.docs.map((d) => d.data());
            this.showActivity(card, seen.flat());
          },
          (err) => {
            if (err.code === "permission-denied" && fallback) {
              stops.forEach((s) => s());
              listen(fallback, null);
            } else {
              notice(`Activity of ${lockId} unavailable: ${err.code}`, "error");
            }
          },
        );
        stops.push(stop);
        unsubscribers.push(stop);
      });
    };
    listen(admin ? whole : members, admin ? members : null);
  }

  showActivity(card, entries) {
    entries.sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));
    $(".activity", card).replaceChildren(...entries.slice(0, 12).map((e) => this.activityItem(e)));
  }

  // One entry of the feed as a line. Each its own: a field one kind of entry lacks (a late ack has no lock's time)
  // threw for the whole list, which then stayed as it was while the entry was among the newest (attack run 60).
  activityItem(e) {
    const li = document.createElement("li");
    li.dataset.kind = String(e.kind ?? "");
    try {
      const time = (value) => (typeof value === "string" ? value.slice(11, 19) : "");
      const detail = e.outcome ? `${e.outcome} (${e.reason})` : e.action || e.state || e.result || "";
      const unlisted = e.unlisted_before ? ` (${e.unlisted_before} earlier reports not listed)` : "";
      const late = !e.late ? "" : e.reported_at ? ` (late: the lock's time ${time(e.reported_at)})` : " (late)";
      li.textContent = `${time(e.at)} ${String(e.kind ?? "").replaceAll("_", " ")} ${detail}${unlisted}${late}`;
    } catch (err) {
      li.textContent = `${e.kind ?? "entry"} (not shown: ${err.message})`;
    }
    return li;
  }

  async createLock(name) {
    // A create whose answer never came (the network, a 503) may have made the lock: sent again for the same name it
    // carries the same idempotency key, and is answered with that lock instead of making a second one.
    if (this.unanswered?.name !== name) this.unanswered = { name, key: crypto.randomUUID() };
    try {
      // a header: a devices instance of the release before ignores it (a body field would be 400 unknown_field)
      const created = await this.api("POST", "/devices/locks", { name }, { "Idempotency-Key": this.unanswered.key });
      this.unanswered = null;
      // none for a lock paired since its first sending, or past the day's pairing codes (ask for one on its card later)
      const code = created.provisioning?.code;
      $("#new-lock-name").value = "";
      const kept = theirs(created.lock.name); // as the server keeps it (NFC, one space), not as typed
      const made = code
        ? ["Created ", kept, `. Pairing code for the lock: ${code}`]
        : created.lock.provisioned
          ? [kept, " was created and is paired."]
          : [kept, " was created; no pairing code today (the day's are given): ask for one later."];
      notice(made); // at once: the listings may take a while
      const failed = await this.refresh({ quiet: true });
      if (failed.length) notice([...made, " ", failed.join(" ")], "error"); // said with the code, which nothing hides
      const card = document.querySelector(`[data-lock-id="${created.lock.id}"]`);
      if (card && code) $(".pairing-code", card).textContent = code;
    } catch (err) {
      if (ended(err)) return;
      const unknown = err.status === 0 || err.status >= 500;
      if (!unknown) this.unanswered = null;
      const again = unknown ? " (create it again: if it was made, you get that lock, not a second one)" : "";
      notice(`Could not create the lock: ${err.message}${again}`, "error");
    }
  }

  async pairingCode(card, lockId) {
    try {
      const { code } = await this.api("POST", `/devices/locks/${lockId}/provisioning`);
      $(".pairing-code", card).textContent = code;
    } catch (err) {
      if (!ended(err)) notice(err.message, "error");
    }
  }

  async command(card, lockId, action) {
    // the door opened from afar is said by its name and confirmed first: Unlock sits beside Lock, one click from it
    // (attack run 105: a slip of the pointer opened the door, nobody told which)
    const name = $(".lock-name", card).textContent;
    const asked = `Unlock ${isolated(name)} now? Anyone at the door can then open it.`;
    if (action === "unlock" && !window.confirm(asked)) return;
    // A command whose answer never came (the network, a 503) may have been made: sent again to the same lock while
    // it could still be carried out (COMMAND_RETRY_MS), it carries the same idempotency key and is answered with that
    // command, not made twice (attack run 108: each click had a key of its own, and the retry was a second unlock);
    // later, it is a new command, as the person clicking means it.
    const last = this.unansweredCommand;
    const again = last?.lockId === lockId && last.action === action && Date.now() - last.at < COMMAND_RETRY_MS;
    const sending = again ? last : { lockId, action, key: crypto.randomUUID(), at: Date.now() };
    this.unansweredCommand = sending;
    try {
      await this.api("POST", `/devices/locks/${lockId}/commands`, { action, idempotency_key: sending.key });
      if (this.unansweredCommand === sending) this.unansweredCommand = null;
      notice([`${action} sent to `, theirs(name)]);
    } catch (err) {
      if (ended(err)) return;
      const unknown = err.status === 0 || err.status >= 500;
      if (!unknown && this.unansweredCommand === sending) this.unansweredCommand = null;
      const retry = unknown ? " (send it again: if it was made, it is that command, not a second)" : "";
      notice(`${action} refused: ${err.message}${retry}`, "error");
    }
  }

  async loadMembers(card, lockId) {
    try {
      const { members, invitations } = await this.api("GET", `/devices/locks/${lockId}/members`);
      $(".members", card).replaceChildren(
        ...members.map((m) => {
          const li = document.createElement("li");
          // by the address they are known by, beside the uid (a devices function of the release before gives none)
          const uid = theirs(m.uid, "address");
          const who = m.email ? [theirs(m.email, "address"), " (", uid, ")"] : [uid];
          li.append(...who, ` ${m.role} ${describeAccess(m.access)}`);
          return li;
        }),
        ...invitations.map((i) => {
          const li = document.createElement("li");
          // the address an admin typed, read by the others
          li.append("invited: ", theirs(i.email || i.uid, "address"));
          li.append(` ${i.role} (until ${i.expires_at.slice(0, 10)})`);
          return li;
        }),
      );
    } catch (err) {
      if (!ended(err)) notice(err.message, "error");
    }
  }

  async invite(card, lockId) {
    try {
      await this.api("POST", `/devices/locks/${lockId}/members`, {
        email: $(".invite-email", card).value.trim(),
        role: $(".invite-role", card).value,
      });
      this.loadMembers(card, lockId);
    } catch (err) {
      if (!ended(err)) notice(`Invitation refused: ${err.message}`, "error");
    }
  }

  async enroll() {
    const session = this.session; // the samples are this account's voice, uploaded for it or for nobody
    const progress = $("#enroll-progress");
    const button = $("#enroll");
    button.disabled = true;
    // Samples whose upload was never answered (the network, a 503) may have been stored: the next click sends the
    // same samples again, answered with the voiceprint they made and counted nowhere again. A new recording was a
    // second enrollment: compared with co-members' voices again (of a few a day), counted, and the voice's place at
    // each lock begun again (attack run 108).
    const kept = this.unansweredEnrollment?.session === session ? this.unansweredEnrollment : null;
    try {
      const samples = kept ? kept.samples : await this.record(session, progress);
      if (!samples) return;
      if (session !== this.session) throw new SessionEnded();
      progress.textContent = kept ? "Uploading the same samples again…" : "Uploading…";
      this.unansweredEnrollment = { session, samples };
      const result = await this.api("PUT", "/embed/enrollment", { samples }, {}, session);
      this.unansweredEnrollment = null;
      progress.textContent = `Enrolled from ${result.samples} samples.`;
      progress.dataset.done = "true";
    } catch (err) {
      if (ended(err)) return; // the samples go with it (forget)
      const unknown = err.status === 0 || err.status >= 500;
      if (!unknown) this.unansweredEnrollment = null;
      const again = unknown ? " (enroll again: the same samples are sent, not a new recording)" : "";
      progress.textContent = `Enrollment refused: ${err.message}${again}`;
      progress.dataset.done = "error";
    } finally {
      button.disabled = false;
    }
  }

  // SAMPLES samples from the microphone for `session`, or null when the microphone is refused (the notice says so)
  async record(session, progress) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (err) {
      notice(`Microphone refused (${err.name}): allow this site to use the microphone and try again.`, "error");
      return null;
    }
    try {
      const samples = [];
      for (let i = 1; i <= SAMPLES; i++) {
        if (session !== this.session) throw new SessionEnded();
        progress.textContent = `Sample ${i} of ${SAMPLES}: say your sentence now…`;
        samples.push({ wav_base64: await recordWav(stream, SAMPLE_SECONDS) });
      }
      return samples;
    } finally {
      stream.getTracks().forEach((t) => t.stop());
    }
  }

  async forgetVoice() {
    try {
      await this.api("DELETE", "/embed/enrollment");
      notice("Your voice data is deleted.");
    } catch (err) {
      if (!ended(err)) notice(err.message, "error");
    }
  }
}

function describeAccess(access) {
  const parts = [];
  if (access.weekdays) parts.push(access.weekdays.join(","));
  if (access.day_start_minute != null) {
    const hm = (m) => `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
    parts.push(`${hm(access.day_start_minute)}-${hm(access.day_end_minute)} ${access.timezone || ""}`);
  }
  if (access.valid_until) parts.push(`until ${access.valid_until.slice(0, 16)}`);
  if (access.expires_at) parts.push(`expires ${access.expires_at.slice(0, 16)}`);
  return parts.join(" ");
}

// Record `seconds` of the microphone as a mono PCM16 WAV (base64), at the audio context's own rate.
async function recordWav(stream, seconds) {
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/recorder.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "recorder");
  const chunks = [];
  node.port.onmessage = (e) => chunks.push(e.data);
  source.connect(node);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  source.disconnect();
  await ctx.close();
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const pcm = new Int16Array(length);
  let at = 0;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++) pcm[at++] = Math.max(-32768, Math.min(32767, Math.round(c[i] * 32767)));
  }
  return base64(wav(pcm, ctx.sampleRate));
}

function wav(pcm, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((ch, i) => header.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + pcm.byteLength, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);
  header.setUint16(22, 1, true);
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, pcm.byteLength, true);
  return new Blob([header, pcm]);
}

async function base64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

start();
