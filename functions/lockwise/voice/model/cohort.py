"""Score normalisation against a cohort of other speakers: adaptive symmetric normalisation (AS-norm).

A raw cosine means different things for different voices: some voiceprints sit close to many voices, some probes
too. AS-norm (Matějka et al., Interspeech 2017) measures that against a cohort of other speakers' clips: the mean and
deviation of the top ``k`` cohort scores of the voiceprint, and of the probe, and averages the two z-scores::

    s' = ((s - mean_k(print, cohort)) / std_k(print, cohort) + (s - mean_k(probe, cohort)) / std_k(probe, cohort)) / 2

The cohort ships with the encoder's files (``cohort.npz`` and ``cohort.json`` beside the model, the same
``model_id``): GE2E's is built at build time from the corpus speakers (``python -m infra.voice.cohort``), an ECAPA
deployment's by ``calibrate --write-cohort`` from the operator's recordings. Without one the product scores raw
cosines. Voiceprints are unchanged: normalisation happens at scoring time, so nobody enrolls again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.voice.model.model_files import ModelError, file_sha256, read_manifest

COHORT_FILE = "cohort.npz"
COHORT_MANIFEST = "cohort.json"
#: the fewest top cohort scores a deviation is taken over: over one it is 0, and every normalised score was the
#: cosine's distance from the cohort's best over the floor of 1e-6, scores of +-1e5 on which the calibrated
#: threshold, margin and "say it again" band (4.775, 1.0 and 2.0 for GE2E) were millionths of a cosine (attack run 98)
MIN_TOP_K = 2
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Cohort:
    embeddings: F32  # (n, d), unit rows
    top_k: int
    model_id: str

    def stats(self, vectors: F32) -> tuple[F32, F32]:
        """Mean and deviation of each row's ``top_k`` highest cosines with the cohort: (m,) and (m,)."""
        scores = np.atleast_2d(vectors) @ self.embeddings.T
        k = min(self.top_k, scores.shape[1])
        top = -np.partition(-scores, k - 1, axis=1)[:, :k]
        return top.mean(axis=1).astype(np.float32), (top.std(axis=1) + 1e-6).astype(np.float32)

    def normalise(self, raw: F32, probe: F32, prints: F32) -> F32:
        """AS-norm of ``raw`` (k,), the cosines of ``probe`` (d,) with the voiceprints ``prints`` (k, d)."""
        if len(raw) == 0:
            return np.zeros(0, np.float32)
        probe_mean, probe_std = self.stats(probe)
        return _as_norm(raw, self.stats(prints), (probe_mean[0], probe_std[0]))

    def normalise_pairs(self, raw: F32, unit: F32) -> F32:
        """AS-norm of ``raw`` (k, k), the cosines of each of the unit rows ``unit`` (k, d) with each: row ``i`` is
        ``normalise`` of row ``i`` as the probe against all of them, each row's statistics taken once."""
        if len(raw) == 0:
            return np.zeros((0, 0), np.float32)
        mean, std = self.stats(unit)
        return _as_norm(raw, (mean[None, :], std[None, :]), (mean[:, None], std[:, None]))


def _as_norm(raw: F32, prints: tuple[Any, Any], probes: tuple[Any, Any]) -> F32:
    """The mean of ``raw`` standardised by the voiceprints' (mean, deviation) and by the probes' (broadcast)."""
    (print_mean, print_std), (probe_mean, probe_std) = prints, probes
    normalised: F32 = (((raw - print_mean) / print_std + (raw - probe_mean) / probe_std) / 2).astype(np.float32)
    return normalised


def save(folder: Path, embeddings: F32, top_k: int, model_id: str, sources: dict[str, Any]) -> Path:
    """Write ``cohort.npz`` and its manifest (model, size, checksum and where the clips came from) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.savez(folder / COHORT_FILE, embeddings=unit.astype(np.float32))
    manifest = {
        "model_id": model_id,
        "top_k": top_k,
        "clips": int(unit.shape[0]),
        "dim": int(unit.shape[1]),
        "sha256": file_sha256(folder / COHORT_FILE),
        "sources": sources,
    }
    (folder / COHORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load(folder: Path, model_id: str, dim: int) -> Cohort | None:
    """The cohort in ``folder``, or None when there is none; ``ModelError`` when it is there but not for this model
    or not intact (a cohort of another model would normalise against the wrong space)."""
    manifest_file = folder / COHORT_MANIFEST
    if not manifest_file.is_file():
        return None
    manifest = read_manifest(manifest_file, "the score cohort's manifest", "./dev setup makes it")
    data_file = folder / COHORT_FILE
    if manifest.get("model_id") != model_id:
        raise ModelError(f"{manifest_file}: the cohort is for {manifest.get('model_id')}, the encoder is {model_id}")
    top_k = manifest.get("top_k")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ModelError(f"{manifest_file}: top_k must be a positive integer, not {top_k!r}")
    if top_k < MIN_TOP_K:  # the deviation of one score is 0: every z-score taken over the floor of 1e-6
        raise ModelError(f"{manifest_file}: top_k must be at least {MIN_TOP_K} (the deviation of one score is 0)")
    if not data_file.is_file() or file_sha256(data_file) != manifest.get("sha256"):
        raise ModelError(f"{data_file} is missing or does not match {COHORT_MANIFEST} (sha256)")
    with np.load(data_file) as data:
        embeddings = np.asarray(data["embeddings"], dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or embeddings.shape[0] < 2:
        raise ModelError(f"{data_file}: expected (n >= 2, {dim}) embeddings, got {embeddings.shape}")
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    if not (np.isfinite(norms) & (np.abs(norms - 1) < 1e-3)).all():  # ``save`` divided a zero row by its norm: NaN
        raise ModelError(f"{data_file}: every embedding must be a finite unit vector (rebuild the cohort)")
    return Cohort(embeddings, top_k, model_id)
