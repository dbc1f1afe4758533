"""Random-weight ECAPA-TDNN model directories, built once per machine and kept in ``~/.cache/lockwise/models``.

The tests and the benchmarks need the same few models (tiny and full size, a seed, with or without the ONNX export
in ``onnx/``); building a full-size one and exporting it takes torch, SpeechBrain and tens of seconds. A cached
directory is named after what made it: size, seed, export or not, and a key over the source of the builder and the
exporter and the installed torch, torchaudio, SpeechBrain and onnx versions, so a change to any of them builds a new
one instead of reusing a stale one. A directory appears whole (built beside it, then renamed) or not at all.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Literal

from infra.staging import staged_dir
from lockwise.voice.model import cpu_graph

MODELS_HOME = Path(os.environ.get("LOCKWISE_MODEL_CACHE", Path.home() / ".cache" / "lockwise" / "models"))
#: what a cached model is made by: a change to any of these files makes a new cache entry (cpu_graph.py: the CPU
#: graph's check clip, whose embedding the export records)
SOURCES = (
    Path(__file__).with_name("random_ecapa.py"),
    Path(__file__).with_name("export_onnx.py"),
    Path(__file__).with_name("ecapa_graph.py"),
    Path(__file__).with_name("clips.py"),
    Path(cpu_graph.__file__),
)
PACKAGES = ("torch", "torchaudio", "speechbrain", "onnx", "onnxruntime")


def key() -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    for package in PACKAGES:
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()[:12]


def random_model(size: Literal["tiny", "full"], seed: int, *, exported: bool) -> Path:
    """The cached model directory (built now if missing); ``exported``: with its ONNX export in ``onnx/``."""
    target = MODELS_HOME / f"random-{size}-seed{seed}{'-onnx' if exported else ''}-{key()}"
    if target.is_dir():
        return target
    from infra.model.export_onnx import export
    from infra.model.random_ecapa import build_model_dir

    with staged_dir(target) as staging:
        build_model_dir(staging, size=size, seed=seed)
        if exported:
            export(staging, staging / "onnx")
    return target
