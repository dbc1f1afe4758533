"""The calibration machinery on an ECAPA-TDNN deployment, as an operator runs it on their own recordings.

``calibrate --encoder ecapa --model-dir M --write-cohort M`` embeds the recordings through the ECAPA model, reports,
and ships a score cohort beside the model; the functions then normalise against it, but only with the operator's
threshold and margin on that scale (an ECAPA cohort has no calibrated default). The model is the tests' tiny
random-weight ECAPA (plumbing, not discrimination: that is measured with GE2E in ``test_real_voices``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from infra.voice import calibrate as cal
from lockwise.core.config import Settings
from lockwise.voice.model import cohort
from lockwise.voice.model.encoder import load_scorer, open_encoder
from lockwise.voice.model.model_files import ModelError

pytestmark = pytest.mark.model


def test_calibrate_writes_an_ecapa_cohort_the_functions_normalise_with(
    model_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed = tmp_path / "model"
    shutil.copytree(model_dir, deployed)
    out = tmp_path / "report"
    argv = [str(corpus), "--encoder", "ecapa", "--model-dir", str(deployed), "--out", str(out)]
    argv += ["--max-clips", "16", "--voiceprints", "1", "--cohort-per-voice", "4", "--write-cohort", str(deployed)]
    argv += ["--noisy-clips", "20", "--speech-per-voice", "3"]
    assert cal.main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote the score cohort" in printed and "LOCKWISE_VOICE_MARGIN" in printed

    encoder = open_encoder("ecapa", str(deployed))
    report = json.loads((out / "report.json").read_text())
    assert report["encoder"] == encoder.name and report["model_id"] == encoder.model_id
    assert report["clips_per_voiceprint"] == cal.ENROLL_CLIPS and "normalised" in report["disjoint"]

    manifest = json.loads((deployed / cohort.COHORT_MANIFEST).read_text())
    assert manifest["model_id"] == encoder.model_id and manifest["dim"] == encoder.dim
    # every speaker of the operator's recordings (nobody held out), each clip clean and with noise
    assert manifest["sources"]["held_out"] == [] and len(manifest["sources"]["speakers"]) == 7
    assert manifest["clips"] == 2 * sum(manifest["sources"]["speakers"].values())
    assert manifest["sources"]["noise_snr_db"] == [15.0, 35.0]
    vectors = np.load(deployed / cohort.COHORT_FILE)["embeddings"]
    assert vectors.shape == (manifest["clips"], encoder.dim)
    half = manifest["clips"] // 2
    assert not np.allclose(vectors[:half], vectors[half:])  # the noisy copies are not the clean clips again

    settings = Settings.from_env({"LOCKWISE_MODEL_DIR": str(deployed), "LOCKWISE_ENCODER": "ecapa"}, component="verify")
    with pytest.raises(ModelError, match="LOCKWISE_VOICE_THRESHOLD"):
        load_scorer(settings, encoder)  # a cohort, but no threshold on its scale: refuse to start
    settings = Settings.from_env(
        {"LOCKWISE_MODEL_DIR": str(deployed), "LOCKWISE_ENCODER": "ecapa", "LOCKWISE_VOICE_THRESHOLD": "3.0"},
        component="verify",
    )
    with pytest.raises(ModelError, match="LOCKWISE_VOICE_MARGIN"):
        load_scorer(settings, encoder)  # nor without a margin on it: the raw 0.05 there let a close voice in
    env = {"LOCKWISE_MODEL_DIR": str(deployed), "LOCKWISE_ENCODER": "ecapa", "LOCKWISE_VOICE_THRESHOLD": "3.0"}
    settings = Settings.from_env({**env, "LOCKWISE_VOICE_MARGIN": "1.0"}, component="verify")
    scorer = load_scorer(settings, encoder)
    assert scorer.normalised
    probe = vectors[0] / np.linalg.norm(vectors[0])
    raw, decided = scorer.scores(probe.astype(np.float32), vectors[1:4].astype(np.float32))
    assert raw.shape == decided.shape == (3,) and not np.allclose(raw, decided)
