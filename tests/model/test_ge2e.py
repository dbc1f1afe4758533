"""The torch-free GE2E encoder against Resemblyzer itself, its export step, and its failure modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infra.local import services
from infra.model import ge2e_export
from lockwise.core.errors import InvalidAudio
from lockwise.voice.model import ge2e
from lockwise.voice.model.model_files import ModelError, file_sha256
from tests.voices import speech_like


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ge2e_export.ParityReport]:
    out = tmp_path_factory.mktemp("ge2e") / "model"
    return out, ge2e_export.export(out)


@pytest.fixture(scope="module")
def encoder(exported: tuple[Path, ge2e_export.ParityReport]) -> ge2e.Ge2eEncoder:
    return ge2e.Ge2eEncoder(exported[0])


def test_export_matches_resemblyzer_and_records_where_the_weights_came_from(
    exported: tuple[Path, ge2e_export.ParityReport],
) -> None:
    out, report = exported
    assert len(report.clips) == len(ge2e_export.PARITY_SECONDS)
    assert report.max_abs < 1e-5 and report.min_cosine > 0.99999 and report.mel_max_rel < 1e-5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_id"] == "ge2e-" + ge2e_export.PINNED_SHA256[:16]
    assert manifest["source"]["sha256"] == ge2e_export.PINNED_SHA256
    assert "Apache-2.0" in manifest["source"]["licence"]
    assert manifest["parity"]["max_abs"] == report.max_abs
    assert sorted(p.name for p in out.iterdir()) == ["ge2e.npz", "manifest.json"]


def test_resemblyzer_and_ours_agree_on_real_length_clips_the_export_did_not_use(
    exported: tuple[Path, ge2e_export.ParityReport],
) -> None:
    from resemblyzer import VoiceEncoder  # type: ignore[import-untyped]

    ours = ge2e.Ge2eEncoder(exported[0])
    theirs = VoiceEncoder(device="cpu", verbose=False)
    for seconds, seed in ((2.0, 11), (4.5, 12)):
        wav = ge2e.shorten_pauses(ge2e.raise_volume(speech_like(seconds, 16000, f0=120 + 30 * seed, seed=seed)))
        np.testing.assert_allclose(ours.embed_preprocessed(wav), theirs.embed_utterance(wav), atol=1e-5)


def test_the_mel_filterbank_comes_from_librosa_at_export_and_a_model_without_it_is_refused(
    tmp_path: Path, exported: tuple[Path, ge2e_export.ParityReport]
) -> None:
    import shutil

    import librosa

    with np.load(exported[0] / "ge2e.npz") as archive:
        stored = archive[ge2e.MEL_FILTERBANK]
    np.testing.assert_array_equal(stored, librosa.filters.mel(sr=16000, n_fft=400, n_mels=40).astype(np.float32))
    assert exported[1].mel_max_rel < 1e-5  # the served spectrogram (our STFT, that matrix) against librosa's
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    with np.load(copy / "ge2e.npz") as archive:
        arrays = {name: archive[name] for name in archive.files if name != ge2e.MEL_FILTERBANK}
    np.savez(copy / "ge2e.npz", **arrays)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "sha256": file_sha256(copy / "ge2e.npz")}))
    with pytest.raises(ModelError, match="lacks.*mel_filterbank"):
        ge2e.Ge2eEncoder(copy)


def test_a_broken_conversion_fails_the_export_and_leaves_nothing(tmp_path: Path) -> None:
    def tamper(weights: dict[str, np.ndarray]) -> None:
        weights["lstm.weight_hh_l1"][0, 0] += 0.05

    with pytest.raises(ge2e_export.ParityError, match="does not match Resemblyzer"):
        ge2e_export.export(tmp_path / "model", _tamper=tamper)
    assert not (tmp_path / "model").exists()
    assert list(tmp_path.iterdir()) == []


def test_changed_weights_or_missing_manifest_refuse_to_load(
    tmp_path: Path, exported: tuple[Path, ge2e_export.ParityReport]
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    data = bytearray((copy / "ge2e.npz").read_bytes())
    data[-100] ^= 0xFF
    (copy / "ge2e.npz").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"ge2e\.npz does not match manifest\.json"):
        ge2e.Ge2eEncoder(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest\.json is missing"):
        ge2e.Ge2eEncoder(copy)


def test_embeddings_are_unit_256_and_resampled_by_the_product_path(
    exported: tuple[Path, ge2e_export.ParityReport],
) -> None:
    from lockwise.voice.model.resample import resample

    encoder = ge2e.Ge2eEncoder(exported[0])
    clip = speech_like(3.0, 44100, seed=3)
    at_44k = encoder.embed(clip, 44100)
    assert at_44k.shape == (256,) and at_44k.dtype == np.float32
    assert abs(float(np.linalg.norm(at_44k)) - 1) < 1e-5
    np.testing.assert_allclose(at_44k, encoder.embed_16k(resample(clip, 44100, 16000)), atol=1e-6)
    assert float(at_44k @ encoder.embed(speech_like(3.0, 16000, seed=3), 16000)) > 0.9  # same voice, other rate
    assert encoder.model_id == "ge2e-" + ge2e_export.PINNED_SHA256[:16]


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(100, np.float32), "too short"),
        (np.full(16000, np.nan, np.float32), "NaN"),
        (np.zeros((2, 16000), np.float32), "mono"),
        (np.zeros(16000, np.int16), "float"),
    ],
)
def test_bad_audio_is_refused(samples: np.ndarray, message: str, encoder: ge2e.Ge2eEncoder) -> None:
    with pytest.raises(InvalidAudio, match=message):
        encoder.embed(samples, 16000)


def test_long_pauses_are_shortened_and_speech_kept() -> None:
    voice = speech_like(1.0, 16000, seed=5)
    silence = np.zeros(32000, np.float32)
    wav = np.concatenate([voice, silence, voice])
    trimmed = ge2e.shorten_pauses(wav)
    assert 2.0 * 16000 <= len(trimmed) <= 2.6 * 16000  # both seconds of speech kept, the 2 s pause cut to short gaps
    assert len(ge2e.shorten_pauses(voice)) >= 0.95 * len(voice)


def test_serving_imports_neither_torch_nor_librosa(exported: tuple[Path, ge2e_export.ParityReport]) -> None:
    probe = (
        "import sys, numpy as np\n"
        "from lockwise.voice.model.ge2e import Ge2eEncoder\n"
        f"e = Ge2eEncoder({str(exported[0])!r})\n"
        "e.embed(np.sin(np.arange(44100 * 2) * 0.03).astype(np.float32) * 0.2, 44100)\n"
        "print(sorted(m for m in ('torch', 'librosa', 'resemblyzer', 'speechbrain') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_staged_builds_create_missing_parents_and_leave_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh checkout has no functions/models: the builders (GE2E and ONNX exports, corpus, random ECAPA) all stage
    through staged_dir, which makes the parent, swaps the result in readable by all, and leaves nothing on failure."""
    from infra.staging import staged_dir

    monkeypatch.chdir(tmp_path)
    with staged_dir(Path("functions/models/ge2e")) as staging:
        (staging / "manifest.json").write_text("{}")
    built = tmp_path / "functions/models/ge2e"
    assert (built / "manifest.json").is_file() and built.stat().st_mode & 0o777 == 0o755
    with pytest.raises(RuntimeError), staged_dir(built) as staging:
        (staging / "manifest.json").write_text("half")
        raise RuntimeError("parity failed")
    assert (built / "manifest.json").read_text() == "{}"  # the previous build survives a failed one
    assert [p.name for p in (tmp_path / "functions/models").iterdir()] == ["ge2e"]  # no staging folder left


def test_embedding_many_clips_at_once_gives_each_clips_own_embedding(encoder: ge2e.Ge2eEncoder) -> None:
    """Calibration embeds clips in batches (one network pass for many): row k must be clip k's ``embed``, for
    clips of different lengths (1 to 9 partial windows) and rates."""
    clips = [
        (speech_like(1.0 + 1.1 * k, rate=(8000, 16000, 44100)[k % 3], seed=k), (8000, 16000, 44100)[k % 3])
        for k in range(8)
    ]
    many = encoder.embed_many(clips)
    one = np.stack([encoder.embed(samples, rate) for samples, rate in clips])
    assert many.shape == (8, 256) and float(np.abs(many - one).max()) < 1e-5
    assert float(np.abs(many[0] - many[1]).max()) > 0.01  # distinct clips stay distinct rows


def test_a_clip_runs_on_one_blas_thread_and_a_large_batch_on_every_core(
    exported: tuple[Path, ge2e_export.ParityReport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder has numpy's BLAS on one thread (its small recurrent products, beside other work); only a batch of
    ``THREADED_BATCH`` partial windows (calibration's) spreads over every core, and the count is one again after.
    Every BLAS loaded counts (scipy's, loaded by the export, too): the list's order is not the order of loading."""
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    def blas_threads() -> set[int]:
        return {int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}

    encoder = ge2e.Ge2eEncoder(exported[0])
    seen: list[set[int]] = []
    monkeypatch.setattr(encoder._net, "_forward", lambda mels: seen.append(blas_threads()))
    mels = np.zeros((ge2e.THREADED_BATCH, 160, 40), np.float32)
    encoder._net(mels[:3])
    encoder._net(mels)
    assert seen == [{1}, {os.cpu_count()}]
    assert blas_threads() == {1}
