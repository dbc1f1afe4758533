"""Real recorded speech (Debian's Asterisk prompts) with real weights (GE2E from the resemblyzer wheel).

The corpus is built by ``infra.voice.corpus`` (apt-get download + dpkg -x + sox; cached in ~/.cache/lockwise/corpus)
and ``infra.voice.calibrate`` runs on a deterministic subset of it. The bounds asserted are the ones the full
calibration recorded in ``lockwise.voice.model.encoder.CALIBRATIONS["ge2e"]``: a subset that falls outside them
means the encoder, the intake or the scoring changed how speakers are told apart.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.voice import bandwidth, unseen
from infra.voice import calibrate as cal
from infra.voice import corpus as corpus_builder
from lockwise.voice import audio
from lockwise.voice.model.encoder import CALIBRATIONS, Encoder, open_encoder
from tests.devices_world import World, bearer, build_world, verify_as_a_lock
from tests.voices import CORPUS_CACHE, pcm_json, wideband_dir

pytestmark = pytest.mark.model
GE2E = CALIBRATIONS["ge2e"]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return open_encoder("ge2e", None)


@pytest.fixture(scope="module")
def report(corpus: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("calibration")
    report = cal.calibrate(
        corpus,
        encoder,
        out,
        voiceprints=4,
        max_clips=60,
        seed=1,
        threshold=GE2E.threshold,
        norm_threshold=GE2E.norm_threshold,
        retry_band=GE2E.norm_retry_band,
        floor=GE2E.floor,
        noisy_clips=80,
        speech_per_voice=10,
    )
    return report | {"out": str(out)}


def test_corpus_records_its_sources_and_keeps_en_and_es_as_one_speaker(corpus: Path) -> None:
    sources = json.loads((corpus / "SOURCES.json").read_text())
    assert sources["speakers"]["allison"] == ["en_US_f_Allison", "es_MX_f_Allison"]
    assert {p["licence"] for p in sources["packages"].values()} <= {"CC-BY-SA-3.0", "CC-BY-3.0", "GPL-2+"}
    assert all(len(p["sha256"]) == 64 and p["version"] for p in sources["packages"].values())
    assert len(list((corpus / "licences").glob("*.copyright"))) == len(corpus_builder.PACKAGES) == 8
    assert len(sources["speakers"]) == 7
    for speaker in ("allison", "june", "carlo", "ivrvoice-ru", "es-co", "armelle", "menardi"):
        clips = sorted((corpus / speaker).glob("*.wav"))
        assert len(clips) > 120, speaker
        clip = audio.parse_wav(clips[0].read_bytes())
        assert clip.rate == 8000 and corpus_builder.MIN_CLIP_S <= clip.seconds <= corpus_builder.MAX_CLIP_S
    allison = {p.name.split("-")[0] for p in (corpus / "allison").glob("*.wav")}
    assert allison == {"en", "es"}


def test_calibrate_writes_its_table_and_plots(report: dict[str, Any]) -> None:
    out = Path(report["out"])
    for name in ("det.png", "scores.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    table = (out / "report.md").read_text()
    assert "| target FMR | threshold (measured FMR meets it) | measured FMR | FNMR |" in table and "EER" in table
    saved = json.loads((out / "report.json").read_text())
    assert saved["impostor_trials"] > 1000 and saved["genuine_trials"] > 300 and saved["encoder"] == "ge2e"
    scores = np.load(out / "scores.npz")  # every trial score, for operators to re-plot
    assert len(scores["impostor"]) == saved["impostor_trials"] and len(scores["genuine"]) == saved["genuine_trials"]
    assert sum(report["refused_at_intake"].values()) < 0.1 * sum(report["speakers"].values())


def _lower_99(rate: float, trials: int) -> float:
    """One-sided 99 % Clopper-Pearson lower bound of an error rate measured as ``rate`` over ``trials``."""
    from scipy.stats import beta  # type: ignore[import-untyped]

    errors = round(rate * trials)
    return 0.0 if errors == 0 else float(beta.ppf(0.01, errors, trials - errors + 1))


def test_impostors_are_rejected_and_speakers_accepted_within_the_calibrated_bounds(report: dict[str, Any]) -> None:
    """At the product's threshold the subset's error rates are consistent with the full calibration's bounds: the
    subset's own 99 % lower bounds must not exceed the 95 % upper bounds the calibration recorded."""
    assert GE2E.fmr_upper is not None and GE2E.fnmr_upper is not None
    fmr, fnmr = report["operating"]["fmr"], report["operating"]["fnmr"]
    assert _lower_99(fmr, report["impostor_trials"]) <= GE2E.fmr_upper, report["operating"]
    assert _lower_99(fnmr, report["genuine_trials"]) <= GE2E.fnmr_upper, report["operating"]
    assert report["eer"] < 0.10
    # with normalised scores (the product's, when the cohort ships), evaluated speaker-disjoint, every speaker is
    # accepted on their own voiceprints most of the time and none is a universal impostor (raw cosines reject some
    # speakers more often than not: es-co 46 %, menardi 49 % in the full calibration)
    for speaker, rates in report["disjoint"]["normalised"]["loso_0.001"]["per_speaker"].items():
        assert rates["fnmr"] <= 0.5, (speaker, rates)
        assert rates["fmr"] <= 0.01, (speaker, rates)
    genuine, impostor = report["genuine_scores"]["median"], report["impostor_scores"]["median"]
    assert genuine - impostor > 0.1


def test_normalised_scores_hold_the_shipped_bounds_and_beat_raw_speaker_disjoint(report: dict[str, Any]) -> None:
    """At the shipped AS-norm threshold the subset's rates are consistent with the recorded bounds, and evaluated
    speaker-disjoint (no threshold or cohort fitted on the speaker under test) AS-norm rejects fewer owners than raw
    cosines at the same false-match target."""
    assert GE2E.norm_threshold is not None and GE2E.norm_fmr_upper is not None and GE2E.norm_fnmr_upper is not None
    d = report["disjoint"]
    shipped = d["second_utterance_operating"]  # the product's procedure: threshold, and a second utterance
    assert (shipped["threshold"], shipped["band"]) == (GE2E.norm_threshold, GE2E.norm_retry_band)
    assert d["normalised"]["operating"]["fnmr"] > shipped["fnmr"], "the second utterance must pay for itself"
    genuine, impostor = report["genuine_trials"], report["impostor_trials"]
    assert _lower_99(shipped["fmr"], impostor) <= GE2E.norm_fmr_upper, shipped
    assert _lower_99(shipped["fnmr"], genuine) <= GE2E.norm_fnmr_upper, shipped
    # the raw floor (README "Wideband speech") only ever refuses more: fewer strangers, more owners on the telephone
    # band (the full calibration: FNMR 6.50 -> 10.17 % per attempt, FMR 0.063 -> 0.028 %; this subset ~2 -> ~8 %)
    assert shipped["floor"] == GE2E.floor and shipped["floored_fmr"] <= shipped["fmr"]
    assert shipped["fnmr"] <= shipped["floored_fnmr"] <= 0.12, shipped
    # and speaker-disjoint, each fold's floor fitted without the speaker: the same direction in every band
    for row in d["second_utterance"]:
        assert row["floors"][0] <= row["floors"][1] and abs(row["floors"][0] - GE2E.floor) < 0.05, row
        assert row["loso_floored_fmr"] <= row["loso_fmr"] and row["loso_floored_fnmr"] >= row["loso_fnmr"], row
    raw, normalised = d["raw"]["loso_0.001"], d["normalised"]["loso_0.001"]
    assert normalised["fnmr"] < raw["fnmr"], (raw, normalised)
    assert d["normalised"]["eer"] < d["raw"]["eer"]
    assert (Path(report["out"]) / "det-disjoint.png").read_bytes()[:4] == b"\x89PNG"


def test_noise_at_the_door_costs_owners_but_never_lets_strangers_in_more_often(report: dict[str, Any]) -> None:
    """White noise lowers every score; normalised against a clean-only cohort it also inflated impostors' scores
    (0.26 % false matches at 30 dB SNR against 0.067 % clean, measured): the shipped cohort holds noisy copies so
    that a noisy probe's cohort statistics move with it. Failing here means noise helps an impostor again."""
    assert GE2E.norm_fmr_upper is not None
    rows = {r["snr_db"]: r for r in report["noisy_probes"]}
    assert set(rows) == {None, *cal.NOISY_SNRS_DB}
    for snr, row in rows.items():
        assert _lower_99(row["fmr"], row["impostor_trials"]) <= GE2E.norm_fmr_upper, (snr, row)
        # false matches are too rare in a subset to compare, the top of the impostor distribution is not: with a
        # clean-only cohort it rose at 30 dB (p99 3.21 -> 3.70 here); with the noisy copies it falls (40 dB: about
        # level, 3.10 -> 3.11 in the full calibration)
        assert row["impostor_p99"] <= rows[None]["impostor_p99"] + 0.1, (snr, row, rows[None])
    assert rows[20.0]["fnmr"] > rows[None]["fnmr"] + 0.3  # the owner pays: noise is refused, never waved through


def test_allison_in_spanish_is_the_same_person_but_a_different_voice(report: dict[str, Any]) -> None:
    """en and es are one speaker: enrolled from English only, her Spanish scores well above strangers but below her
    English voice; enrolled per language (as calibrate does) she is accepted like the others."""
    cross = report["cross_voice"]["allison: enrolled en, tried es"]
    assert report["impostor_scores"]["median"] + 0.03 < cross["median"] < report["genuine_scores"]["median"]
    assert report["per_speaker"]["allison"]["fnmr"] <= 0.5


def test_enrollment_floors_hold_on_the_subset(report: dict[str, Any]) -> None:
    agreement = report["agreement"]
    assert agreement["honest_p1"] >= GE2E.agreement - 0.05  # the product floor refuses few honest enrollments
    assert agreement["mixed_median"] < agreement["honest_median"]
    rows = {r["cut_s"]: r for r in report["speech"]["rows"]}
    assert rows[1.0]["fnmr"] > rows[5.0]["fnmr"]  # less speech, more false rejections: the floor's reason


# ------------------------------------------------------------------------------------------------ over HTTP


def _samples(path: Path) -> tuple[Any, int]:
    clip = audio.parse_wav(path.read_bytes())
    return clip.samples, clip.rate


def _wav_json(path: Path) -> dict[str, str]:
    return {"wav_base64": base64.b64encode(path.read_bytes()).decode()}


def test_a_real_voice_opens_the_door_and_other_real_voices_do_not(
    ge2e_env: dict[str, str], make_client: Any, sign_up: Any, corpus: Path
) -> None:
    clients = {name: make_client(name) for name in ("devices", "embed", "verify")}
    trusted = {"X-LockWise-Service-Token": ge2e_env["LOCKWISE_SERVICE_TOKEN"]}
    health = clients["verify"].get("/verify/health", headers=trusted).get_json()
    assert health["checks"]["model"]["encoder"] == "ge2e"
    world: World = build_world(clients["devices"], sign_up)
    allison = sorted((corpus / "allison").glob("en-*.wav"))
    speech = {p: audio.speech_seconds(*_samples(p)) for p in allison[:80]}
    short = next(p for p, s in speech.items() if 1.2 < s < GE2E.enroll_min_speech_s)
    ample = [p for p, s in speech.items() if s >= 3.0]
    enroll = ample[:2] + [short] + ample[2:4]  # enrollment demands more speech than an attempt: the short one is named
    resp = clients["embed"].put(
        "/embed/enrollment", json={"samples": [_wav_json(p) for p in enroll]}, headers=bearer(world.accounts["member"])
    )
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "too_little_speech"
    assert resp.get_json()["error"]["details"]["sample"] == 2
    resp = clients["embed"].put(
        "/embed/enrollment",
        json={"samples": [_wav_json(p) for p in ample[:5]]},
        headers=bearer(world.accounts["member"]),
    )
    assert resp.status_code == 201, resp.get_json()

    def verify(path: Path, again: Path) -> dict[str, Any]:
        return verify_as_a_lock(clients["verify"], world, path, again)

    own = [verify(p, again) for p, again in zip(ample[10:15], ample[15:20], strict=True)]
    assert sum(r["decision"] == "accepted" for r in own) >= 4, [r.get("score") for r in own]
    assert all(r.get("member_uid") == world.uid("member") for r in own if r["decision"] == "accepted")
    for stranger in ("june", "carlo", "ivrvoice-ru"):
        clips = sorted((corpus / stranger).glob("*.wav"))
        for path, again in zip(clips[40:42], clips[42:44], strict=True):
            result = verify(path, again)
            assert result["decision"] == "rejected", (stranger, result)
            assert "score" not in result  # the lock learns the decision only


def test_enrollment_refuses_a_voice_that_would_lose_the_user_a_door(
    ge2e_env: dict[str, str], make_client: Any, sign_up: Any, corpus: Path
) -> None:
    """A member enrolling another member's recordings: the door scores the first to come (``first_come``), so the
    copy is stored and set aside there, and its holder told (``not_scored_at``); but one whose own voice is scored
    at that door now is refused it (409, the lock named, nobody else), and keeps their own."""
    devices, embed = make_client("devices"), make_client("embed")
    world: World = build_world(devices, sign_up)

    def enroll(role: str, speaker: str, start: int) -> Any:
        clips = [p for p in sorted((corpus / speaker).glob("*.wav")) if audio.speech_seconds(*_samples(p)) >= 3.0]
        samples = [_wav_json(p) for p in clips[start : start + 5]]
        return embed.put("/embed/enrollment", json={"samples": samples}, headers=world.headers(role))

    assert enroll("member", "allison", 0).status_code == 201
    own = enroll("admin", "june", 0)  # their own, different voice: scored
    assert own.status_code == 201 and own.get_json()["not_scored_at"] == []
    stolen = enroll("admin", "allison", 5)  # other recordings of the member
    assert stolen.status_code == 409, stolen.get_json()
    error = stolen.get_json()["error"]
    assert (error["code"], error["details"]) == ("voice_matches_member", {"lock_ids": [world.lock_id]})
    assert "allison" not in json.dumps(error) and world.uid("member") not in json.dumps(error)
    assert embed.get("/embed/enrollment", headers=world.headers("admin")).get_json()["not_scored_at"] == []
    copied = enroll("guest_in", "allison", 5)  # nothing of theirs to lose: stored, and told
    assert copied.status_code == 201 and copied.get_json()["not_scored_at"] == [world.lock_id]
    # someone who shares no lock with her is not compared (enrollment is not a search of everyone's voice)
    alone = enroll("stranger", "allison", 5)
    assert alone.status_code == 201 and alone.get_json()["not_scored_at"] == []


def test_an_enrollment_of_two_peoples_takes_is_refused_naming_the_others(
    ge2e_env: dict[str, str], make_client: Any, sign_up: Any, encoder: Encoder
) -> None:
    """Three takes of Allison and two of June, recorded at a phone's band and sent at 44.1 kHz: every pair agrees
    over the floor (two like voices), so the pairwise check took them, and the voiceprint let June in at the door as
    the account's user, where Allison's own let her in on none (attack run 123: 40 % of her attempts over the
    corpus's wideband enrollments so made). The samples split into two voices: 422 naming June's, nothing stored;
    Allison's five takes enroll."""
    from lockwise.core.config import Settings
    from lockwise.voice import scoring, verification
    from lockwise.voice.model.encoder import load_scorer, policy
    from lockwise.voice.model.resample import resample

    def takes(speaker: str) -> list[Any]:
        return [resample(x, r, audio.DEFAULT_RATE) for x, r in bandwidth.clips(wideband_dir(), speaker, 30)]

    allison, june = takes("allison"), takes("june")
    mixed = [allison[0], june[8], allison[1], june[9], allison[2]]
    embedded = np.stack([encoder.embed(x, audio.DEFAULT_RATE) for x in mixed])
    assert scoring.agreement(embedded)[0] >= GE2E.agreement  # what the pairwise check alone took
    settings = Settings.from_env({"LOCKWISE_MODE": "local"}, component="verify")
    scorer = load_scorer(settings, encoder)
    rules = policy(settings, encoder, normalised=scorer.normalised)
    shared = scoring.voiceprint(embedded)[np.newaxis, :]
    own = scoring.voiceprint(np.stack([encoder.embed(x, audio.DEFAULT_RATE) for x in allison[:5]]))[np.newaxis, :]

    def let_in(prints: Any) -> int:
        probes = [encoder.embed(x, audio.DEFAULT_RATE) for x in june[20:30]]
        return sum(verification.decide(*scorer.scores(p, prints), rules).accepted for p in probes)

    assert let_in(shared) >= 3 and let_in(own) == 0  # why it matters: June is let in as the account's user

    embed = make_client("embed")
    account = sign_up()
    resp = embed.put("/embed/enrollment", json={"samples": [pcm_json(x) for x in mixed]}, headers=bearer(account))
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    assert (error["code"], error["details"]["samples"]) == ("samples_of_two_voices", [1, 3])
    assert error["details"]["split_agreement"] < error["details"]["required"] == GE2E.split_agreement
    assert embed.get("/embed/enrollment", headers=bearer(account)).get_json()["enrolled"] is False
    honest = embed.put(
        "/embed/enrollment", json={"samples": [pcm_json(x) for x in allison[:5]]}, headers=bearer(account)
    )
    assert honest.status_code == 201, honest.get_json()


def test_wideband_speech_as_a_lock_records_it_passes_nobody_for_someone_else(encoder: Encoder, corpus: Path) -> None:
    """The normalised decision is calibrated on telephone-band speech (its cohort too); a lock records 44.1 kHz,
    and on wideband speech every normalised score rises. ``infra.voice.bandwidth`` (the door's ``decide`` with the
    product's policy) on Allison and June (held out of the cohort, as users are) recorded at 16 kHz and sent at
    44.1 kHz: without the raw gate strangers pass (June as Allison, Allison as June: README "Wideband speech"); with
    the shipped floor none does, and the owners still pass."""
    (row,) = bandwidth.measure(corpus, wideband_dir(), encoder, 5, ("wideband, sent at 44.1 kHz (a lock)",))
    assert (row.owners, row.strangers) == (400, 400)
    assert row.gates["none"][1] >= 20, row  # what the normalised scores alone let through
    refused, strangers = row.gates["floor"]
    assert strangers == 0 and refused <= 0.05, row


def test_voices_never_heard_sent_as_a_lock_sends_them_pass_as_nobody_else(encoder: Encoder) -> None:
    """``infra.voice.unseen``: voices the calibration, the cohort and every other test never heard (KLettres'
    speakers, Debian ``klettres-data``, 44.1 kHz), one utterance each, the door's ``decide`` with the product's
    policy. Normalised scores alone let strangers through here too (the cohort is telephone band): the floor is what
    stops them, within the 1 in 1,000 goal; owners are refused at most 10 % of the time, averaged over voices (the
    goal; one voice's recordings run low and pay most of it: README "Voices never heard")."""
    rng = np.random.default_rng(0)
    found = unseen.voices(corpus_builder.fetch(unseen.PACKAGE, CORPUS_CACHE / "debs"), encoder, rng)
    assert len(found) >= 12, [voice.name for voice in found]
    result = unseen.measure(found, encoder, 3, rng)
    assert result.strangers > 10_000, result.strangers
    assert result.gates["none"][1] >= 50, unseen.table(result)  # what the normalised scores alone let through
    assert result.gates["floor"][1] <= result.strangers / 1000, unseen.table(result)
    assert result.voice_mean() <= 0.10, unseen.table(result)
