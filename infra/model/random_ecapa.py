"""Write a stand-in for the Hub repo ``speechbrain/spkrec-ecapa-voxceleb`` with random weights:
``python -m infra.model.random_ecapa OUT --size full|tiny [--seed N]``.

The directory has the Hub's layout and file formats, so the production loader reads it exactly as it would read the
real model; only the numbers are random. Random weights give embeddings that score every pair of clips above 0.98:
they test plumbing (loading, shapes, resampling, offline behaviour), never whether speakers are told apart.

Files written (``C`` = ``channels``, ``A`` = ``attention_channels``, ``K`` = ``out_n_neurons``)::

    hyperparams.yaml        the Hub's file, sizes substituted; ``pretrained_path`` is the Hub id, as upstream
    embedding_model.ckpt    ECAPA_TDNN state_dict (torch.save zip), e.g.
                              blocks.0.conv.conv.weight  (C[0], 80, 5)   float32
                              asp.tdnn.conv.conv.weight  (A, 3 * C[4], 1)
                              fc.conv.weight             (192, 2 * C[4], 1)
    mean_var_norm_emb.ckpt  InputNormalization statistics (torch.save of a dict):
                              {"count": int, "glob_mean": (192,) float32, "glob_std": (192,) float32}
    classifier.ckpt         Classifier state_dict: {"weight": (K, 192) float32}
    label_encoder.txt       CategoricalEncoder literal text: ``'spk00000' => 0`` lines, a ``====`` line, extras

Each object is built from the written ``hyperparams.yaml`` itself and saved with SpeechBrain's own save hook for its
type (``speechbrain.utils.checkpoints.DEFAULT_SAVE_HOOKS``), i.e. what the ``Pretrainer`` load hooks expect. Weights
come from the modules' own initialisers under ``torch.manual_seed(seed)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from infra.staging import staged_dir

logger = logging.getLogger(__name__)

HUB_ID = "speechbrain/spkrec-ecapa-voxceleb"
EMBEDDING_DIM = 192
N_MELS = 80
LOADABLES = {  # Pretrainer loadable key -> file name in the model directory (as on the Hub)
    "embedding_model": "embedding_model.ckpt",
    "mean_var_norm_emb": "mean_var_norm_emb.ckpt",
    "classifier": "classifier.ckpt",
    "label_encoder": "label_encoder.txt",
}
_NORM_FIT_VECTORS = 64  # seeded standard-normal embeddings the global embedding normaliser is fitted on

Size = Literal["full", "tiny"]


@dataclass(frozen=True)
class EcapaSize:
    """Architecture numbers that differ between the Hub model and the tiny stand-in."""

    channels: tuple[int, int, int, int, int]
    attention_channels: int
    out_n_neurons: int


SIZES: dict[str, EcapaSize] = {
    # The Hub model: 20.8 M parameters in the embedding model, 7205 VoxCeleb speakers in the classifier.
    "full": EcapaSize(channels=(1024, 1024, 1024, 1024, 3072), attention_channels=128, out_n_neurons=7205),
    # Same graph, ~0.1 M parameters: channels stay divisible by res2net_scale (8).
    "tiny": EcapaSize(channels=(32, 32, 32, 32, 96), attention_channels=16, out_n_neurons=8),
}

_HYPERPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification
# ############################################################################

# Feature parameters
n_mels: {n_mels}

# Pretrain folder (HuggingFace)
pretrained_path: {hub_id}

# Output parameters
out_n_neurons: {out_n_neurons}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [{channels}]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {attention_channels}
    lin_neurons: {dim}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {dim}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder


pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def hyperparams_yaml(size: Size) -> str:
    """The ``hyperparams.yaml`` text for ``size``: the Hub's file with the architecture numbers substituted."""
    spec = SIZES[size]
    return _HYPERPARAMS.format(
        n_mels=N_MELS,
        hub_id=HUB_ID,
        out_n_neurons=spec.out_n_neurons,
        channels=", ".join(str(c) for c in spec.channels),
        attention_channels=spec.attention_channels,
        dim=EMBEDDING_DIM,
    )


def build_model_dir(out: Path, *, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised ``spkrec-ecapa-voxceleb`` look-alike into ``out`` (replaced if present).

    Returns ``out``. Nothing is downloaded; the global torch RNG state is left as it was.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    from hyperpyyaml import load_hyperpyyaml  # type: ignore[import-untyped]
    from speechbrain.utils.checkpoints import (  # type: ignore[import-untyped]
        DEFAULT_SAVE_HOOKS,
        get_default_hook,
    )

    text = hyperparams_yaml(size)
    with staged_dir(out) as staging:  # a crash never leaves a half-built model directory
        (staging / "hyperparams.yaml").write_text(text, encoding="utf-8")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Instantiating the yaml runs each module's own initialiser (kaiming for convolutions, xavier for the
            # classifier), in the yaml's order, so the objects are exactly what the loader will build.
            hparams: dict[str, Any] = load_hyperpyyaml(text, overrides={"pretrained_path": str(staging)})
            _fit_embedding_norm(hparams["mean_var_norm_emb"])
        _fill_label_encoder(hparams["label_encoder"], SIZES[size].out_n_neurons)
        for key, filename in LOADABLES.items():
            obj = hparams[key]
            hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hook is None:
                raise RuntimeError(f"SpeechBrain has no save hook for {type(obj).__name__}")
            hook(obj, staging / filename)
    logger.info("wrote random ECAPA model", extra={"fields": {"dir": str(out), "size": size, "seed": seed}})
    return out


def _fit_embedding_norm(norm: torch.nn.Module) -> None:
    """Give the global embedding normaliser real running statistics, as training would.

    A fresh ``InputNormalization(norm_type="global")`` holds empty statistics and fails on its first eval-mode call;
    here it runs its own update path on seeded standard-normal embeddings of shape (64, 1, 192).
    """
    vectors = torch.randn(_NORM_FIT_VECTORS, 1, EMBEDDING_DIM)
    norm.train()
    with torch.no_grad():
        norm(vectors, torch.ones(_NORM_FIT_VECTORS))
    norm.eval()


def _fill_label_encoder(encoder: Any, n_classes: int) -> None:
    """One made-up speaker label per classifier output (the Hub's holds VoxCeleb ids such as ``id10001``)."""
    encoder.update_from_iterable([f"spk{i:05d}" for i in range(n_classes)])
    encoder.expect_len(n_classes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="directory to write (replaced if it exists)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="architecture (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the weights (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = build_model_dir(args.out, size=args.size, seed=args.seed)
    logger.info("model directory ready: %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
