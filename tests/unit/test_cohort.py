"""AS-norm against a cohort: the formula, what it does to a voice that sits close to everyone, and the checks on the
cohort files (another model's cohort, or altered files, stop the function at start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lockwise.voice import scoring
from lockwise.voice.model import cohort
from lockwise.voice.model.model_files import ModelError


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return out


def test_as_norm_is_the_mean_of_the_two_z_scores_over_the_top_k() -> None:
    rng = np.random.default_rng(3)
    members = unit(rng.standard_normal((40, 16)))
    probe, prints = unit(rng.standard_normal(16)), unit(rng.standard_normal((3, 16)))
    raw = scoring.cosine_scores(probe, prints)
    got = cohort.Cohort(members, top_k=5, model_id="m").normalise(raw, probe, prints)

    def top(v: np.ndarray) -> np.ndarray:
        best: np.ndarray = np.sort(members @ v)[-5:]
        return best

    expected = [
        ((r - top(p).mean()) / top(p).std() + (r - top(probe).mean()) / top(probe).std()) / 2
        for r, p in zip(raw, prints, strict=True)
    ]
    assert np.allclose(got, expected, atol=1e-4)


def test_a_voiceprint_close_to_everyone_is_discounted() -> None:
    """Two voiceprints with the same raw score against a probe: the one that also scores high against the cohort
    (a voice close to many) gets the lower normalised score."""
    rng = np.random.default_rng(4)
    hub = unit(rng.standard_normal(32))
    members = unit(hub + 0.6 * rng.standard_normal((60, 32)))  # the cohort crowds around ``hub``
    probe = unit(rng.standard_normal(32))
    lonely = unit(rng.standard_normal(32))
    lonely = unit(lonely - (lonely @ hub) * hub)  # far from the crowd
    crowded = unit(0.1 * probe + hub)
    target = float(crowded @ probe)  # give ``lonely`` the same cosine with the probe
    lonely = unit(target * probe + np.sqrt(1 - target**2) * unit(lonely - (lonely @ probe) * probe))
    prints = np.stack([crowded, lonely])
    raw = scoring.cosine_scores(probe, prints)
    assert raw[0] == pytest.approx(raw[1], abs=1e-5)
    normalised = cohort.Cohort(members, top_k=10, model_id="m").normalise(raw, probe, prints)
    assert normalised[0] < normalised[1] - 0.5


def test_cohort_files_are_checked_against_the_model(tmp_path: Path) -> None:
    members = unit(np.random.default_rng(5).standard_normal((20, 8)))
    assert cohort.load(tmp_path, "ge2e-x", 8) is None  # no cohort: raw scores
    cohort.save(tmp_path, members, 7, "ge2e-x", {"corpus": "test"})
    loaded = cohort.load(tmp_path, "ge2e-x", 8)
    assert loaded is not None and loaded.top_k == 7 and np.allclose(loaded.embeddings, members, atol=1e-6)
    with pytest.raises(ModelError, match="cohort is for ge2e-x"):
        cohort.load(tmp_path, "ge2e-other", 8)
    with pytest.raises(ModelError, match="expected"):
        cohort.load(tmp_path, "ge2e-x", 16)
    (tmp_path / cohort.COHORT_FILE).write_bytes(b"altered")
    with pytest.raises(ModelError, match="sha256"):
        cohort.load(tmp_path, "ge2e-x", 8)


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"model_id": "ge2e-x", "top_k": "7"}', "top_k must be a positive integer"),
        ('{"model_id": "ge2e-x", "top_k": 0}', "top_k must be a positive integer"),
        ('{"model_id": "ge2e-x", "top_k": 1}', "top_k must be at least 2"),
    ],
)
def test_a_damaged_cohort_manifest_stops_the_start_by_name(tmp_path: Path, manifest: str, named: str) -> None:
    """It raised JSONDecodeError, AttributeError or KeyError at instance start, naming no file."""
    cohort.save(tmp_path, unit(np.random.default_rng(6).standard_normal((20, 8))), 7, "ge2e-x", {"corpus": "test"})
    (tmp_path / cohort.COHORT_MANIFEST).write_text(manifest)
    with pytest.raises(ModelError, match=named):
        cohort.load(tmp_path, "ge2e-x", 8)


def test_a_cohort_no_deviation_can_be_taken_over_stops_the_start(tmp_path: Path) -> None:
    """Over one top score (``top_k`` 1) every deviation is 0, taken as 1e-6: normalised scores of +-1e5, on which the
    calibrated threshold, margin and "say it again" band were millionths of a cosine (attack run 98). A cohort row
    that is not a finite unit vector (``save`` dividing a zero embedding by its norm) made every score NaN once the
    top scores took it in (no voice opened any door), the start none the wiser."""
    members = unit(np.random.default_rng(7).standard_normal((20, 8)))
    cohort.save(tmp_path, members, 1, "ge2e-x", {"corpus": "test"})
    with pytest.raises(ModelError, match="top_k must be at least 2"):
        cohort.load(tmp_path, "ge2e-x", 8)
    members[3] = 0.0
    with np.errstate(invalid="ignore"):
        cohort.save(tmp_path, members, 7, "ge2e-x", {"corpus": "test"})
    with pytest.raises(ModelError, match="finite unit vector"):
        cohort.load(tmp_path, "ge2e-x", 8)
