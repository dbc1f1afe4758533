"""ECAPA-TDNN speaker embeddings, loaded offline through SpeechBrain's own loader.

The model directory has the layout of the Hub repo ``speechbrain/spkrec-ecapa-voxceleb`` (``hyperparams.yaml`` plus
the checkpoints its ``Pretrainer`` names). That ``hyperparams.yaml`` points ``pretrained_path`` at the Hub id, so the
loader overrides it with the directory; otherwise SpeechBrain would fetch every checkpoint from the Hub. The loader
also refuses the network (``HF_HUB_OFFLINE=1``, ``FetchConfig(allow_network=False)``) and collects into a fresh,
empty ``savedir`` (SpeechBrain reuses whatever an existing one holds, unchecked).

Create one ``EcapaEncoder`` per instance at start-up and reuse it: loading takes ~0.6 s for the full model plus ~2 s
to import SpeechBrain in a fresh process; an embedding of a 3 s clip then takes 130-200 ms on 2 CPU cores. This is
the reference (and the enrollment path); verify serves the same model from its ONNX export
(:mod:`lockwise.voice.model.onnx_ecapa`), which tests hold to this class's output within 1e-4.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torchaudio.functional  # type: ignore[import-untyped]

from lockwise.core import log as lwlog
from lockwise.voice.model import blas
from lockwise.voice.model.model_files import ModelError, file_identity
from lockwise.voice.model.samples import at_least_40ms, mono_float32
from lockwise.voice.model.samples import sample_rate as checked_rate

logger = logging.getLogger(__name__)

HYPERPARAMS = "hyperparams.yaml"
EMBEDDING_CKPT = "embedding_model.ckpt"
# What SpeechBrain's Pretrainer loads with torch.load; a missing one fails the load. (``label_encoder.txt`` is named
# there too, but SpeechBrain silently skips a missing or unreadable one, and embeddings never use it.)
CHECKPOINTS = (EMBEDDING_CKPT, "mean_var_norm_emb.ckpt", "classifier.ckpt")
_PROBE_SAMPLES_16K = 16_000  # the start-up probe: 1 s of silence


def model_identity(model_dir: Path) -> str:
    """``"ecapa-"`` + the first 16 hex digits of the SHA-256 of ``embedding_model.ckpt``: names the weights.

    Stored next to each enrolled embedding, so embeddings made by different weights are never compared.
    """
    try:
        return file_identity("ecapa", Path(model_dir) / EMBEDDING_CKPT)
    except ModelError as exc:
        raise ModelError(f"ECAPA model directory {model_dir}: {exc}") from exc


class EcapaEncoder:
    """Speaker embedding model: mono audio at any rate -> unit-length float32 vector of shape (192,).

    Arguments
    ---------
    model_dir : Path
        A directory laid out like ``speechbrain/spkrec-ecapa-voxceleb``.
    threads : int, optional
        If given, ``torch.set_num_threads(threads)`` (process-wide); otherwise torch's default is kept.

    Raises
    ------
    ModelError
        The directory or one of its files is missing, unreadable, or does not make a 192-dim ECAPA model.
    """

    name: str = "ecapa-tdnn"
    dim: int = 192
    sample_rate: int = 16_000

    def __init__(self, model_dir: Path, *, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir).absolute()
        blas.one_thread()  # numpy's products (the replay fingerprint's resampling) beside torch's threads
        _check_files(self.model_dir)
        self.model_id: str = model_identity(self.model_dir)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, not {threads}")
            torch.set_num_threads(threads)
        started = time.perf_counter()
        self._model = _load(self.model_dir)
        _check_complete(self.model_dir, self._model.mods.embedding_model)
        probe = self.embed_16k(np.zeros(_PROBE_SAMPLES_16K, dtype=np.float32))  # warm-up and output-shape check
        lwlog.event(
            logger,
            "ecapa model loaded",
            model_id=self.model_id,
            model_dir=str(self.model_dir),
            seconds=round(time.perf_counter() - started, 3),
            threads=torch.get_num_threads(),
            dim=int(probe.shape[0]),
        )

    def embed(self, samples: npt.NDArray[np.floating[Any]], sample_rate: int) -> npt.NDArray[np.float32]:
        """Embed one mono clip.

        Arguments
        ---------
        samples : np.ndarray, shape (n,), float
            Mono samples in [-1, 1] (float32 preferred; other float dtypes are converted).
        sample_rate : int
            Rate of ``samples`` in Hz; anything but 16 kHz is resampled with ``torchaudio.functional.resample``.

        Returns
        -------
        np.ndarray, shape (192,), float32, unit L2 norm.

        Raises
        ------
        InvalidAudio
            Not 1-D floats, non-finite values, or shorter than 40 ms.
        """
        rate = checked_rate(sample_rate)
        wave = _waveform(samples)
        if rate != self.sample_rate:
            wave = torchaudio.functional.resample(wave, rate, self.sample_rate)
        return self._embed(wave)

    def embed_16k(self, samples16k: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Embed one mono clip already at 16 kHz: shape (n,) float in [-1, 1] -> shape (192,) float32, unit norm."""
        return self._embed(_waveform(samples16k))

    def _embed(self, wave: torch.Tensor) -> npt.NDArray[np.float32]:
        """wave: shape (n,) float32 at 16 kHz -> shape (192,) float32, unit L2 norm."""
        at_least_40ms(wave.numpy())
        with torch.inference_mode():
            # encode_batch: (batch, time) -> (batch, 1, 192); normalize=False as SpeechBrain's own verification.
            embedding = self._model.encode_batch(wave.unsqueeze(0)).reshape(-1)
            norm = torch.linalg.vector_norm(embedding)
            if embedding.shape != (self.dim,) or not bool(torch.isfinite(norm)) or float(norm) == 0.0:
                raise ModelError(
                    f"ECAPA model {self.model_dir}: {EMBEDDING_CKPT} gave an embedding of shape "
                    f"{tuple(embedding.shape)} and norm {float(norm)}, expected a finite, non-zero ({self.dim},)"
                )
            unit = (embedding / norm).to(torch.float32)
        return np.array(unit.numpy(), dtype=np.float32)


def _waveform(samples: npt.NDArray[np.floating[Any]]) -> torch.Tensor:
    """Validate mono float samples, shape (n,), and return them as a float32 tensor of shape (n,)."""
    return torch.from_numpy(mono_float32(samples))


def _check_files(model_dir: Path) -> None:
    """Fail before SpeechBrain sees the directory: a path that is not a directory is taken for a Hub id."""
    if not model_dir.is_dir():
        raise ModelError(f"ECAPA model directory {model_dir} does not exist (or is not a directory)")
    for filename in (HYPERPARAMS, *CHECKPOINTS):
        if not (model_dir / filename).is_file():
            raise ModelError(f"ECAPA model directory {model_dir}: {filename} is missing")


def _load(model_dir: Path) -> Any:
    """SpeechBrain's ``EncoderClassifier`` from ``model_dir``, on the CPU, in eval mode, without the network."""
    # huggingface_hub reads this once, when first imported (normally by the import below); if something imported it
    # earlier, FetchConfig(allow_network=False) still keeps SpeechBrain off the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from speechbrain.inference.speaker import EncoderClassifier  # type: ignore[import-untyped]
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy  # type: ignore[import-untyped]

    try:
        # A fresh savedir every time: SpeechBrain would use files already in one without checking them. With
        # NO_LINK and a local source nothing is written to it, so it is removed once loading is done.
        with tempfile.TemporaryDirectory(prefix="lockwise-ecapa-") as savedir:
            model = EncoderClassifier.from_hparams(
                source=str(model_dir),
                savedir=savedir,
                overrides={"pretrained_path": str(model_dir)},
                local_strategy=LocalStrategy.NO_LINK,
                fetch_config=FetchConfig(allow_network=False),
                run_opts={"device": "cpu"},
            )
    except Exception as exc:
        raise ModelError(f"ECAPA model directory {model_dir}: {_diagnose(model_dir, exc)}") from exc
    model.eval()
    return model


def _diagnose(model_dir: Path, exc: Exception) -> str:
    """Name the file a failed load tripped on: the first checkpoint torch cannot read, else hyperparams.yaml."""
    for filename in CHECKPOINTS:
        try:
            torch.load(model_dir / filename, map_location="cpu", weights_only=True)
        except Exception as probe_exc:  # any failure to read it names this file
            return f"{filename} is not a readable checkpoint ({_brief(probe_exc)})"
    return f"loading {HYPERPARAMS} with its checkpoints failed ({_brief(exc)})"


def _brief(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, cut to ``limit`` characters (a state_dict size mismatch lists every layer)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_complete(model_dir: Path, embedding_model: torch.nn.Module) -> None:
    """Refuse a checkpoint that does not cover the model exactly.

    SpeechBrain's transfer hook loads ``nn.Module`` weights with ``strict=False`` and only logs missing or extra
    keys, which would leave randomly initialised layers in a "loaded" model.
    """
    from speechbrain.utils.checkpoints import hook_on_loading_state_dict_checkpoint  # type: ignore[import-untyped]

    saved = hook_on_loading_state_dict_checkpoint(
        dict(torch.load(model_dir / EMBEDDING_CKPT, map_location="cpu", weights_only=True))
    )
    expected = set(embedding_model.state_dict())
    missing, extra = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or extra:
        raise ModelError(
            f"ECAPA model directory {model_dir}: {EMBEDDING_CKPT} does not match {HYPERPARAMS} "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})"
        )
