"""The ECAPA export's second graph, pre-optimised for one kind of CPU: which CPUs it was made for, and the clip that
checks it computes the portable graph's numbers here before it serves.

onnxruntime runs 2-D convolutions fastest in its blocked channel layout (NCHWc), but rewriting a graph into that
layout costs a session ~130 ms of weight reordering at every start (full ECAPA-TDNN, 2 cores), so the export does it
once at build time (``infra.model.export_onnx``) and saves the result beside the portable graph. The saved graph is
only right for CPUs with the same NCHWc block size (16 floats with AVX-512, 8 with AVX/AVX2, as onnxruntime's MLAS
picks it), and the same onnxruntime. ``made_for()`` names what that choice depends on; a serving machine whose answer
differs, or where the saved graph does not reproduce ``check_clip``'s embedding, serves the portable graph instead.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.voice.model.onnx_runtime import ort

#: the x86 features onnxruntime's MLAS chooses its NCHWc block size and kernels by
NCHWC_FEATURES = frozenset({"avx", "avx2", "fma", "avx512f"})
#: the check's length at 16 kHz (0.25 s: every layer runs; 8-14 ms on 2 cores, a session's first run)
CHECK_SAMPLES = 4_000
#: the largest difference from the recorded unit embedding that still counts as the same computation (the export's
#: parity tolerance against SpeechBrain)
CHECK_TOLERANCE = 1e-4


def made_for(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any] | None:
    """What a graph pre-optimised on this machine depends on: ``{"machine", "features", "onnxruntime"}``; None where
    no such graph is made or served (not x86-64, no AVX, or ``cpuinfo`` unreadable)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break
    features = sorted(flags & NCHWC_FEATURES)
    if "avx" not in features:
        return None
    return {"machine": "x86_64", "features": features, "onnxruntime": ort.__version__}


def check_clip() -> npt.NDArray[np.float32]:
    """A fixed 0.25 s clip at 16 kHz (a rising chirp over a lower tone), the same on every machine to well within the
    check's tolerance."""
    t = np.arange(CHECK_SAMPLES, dtype=np.float64) / 16_000
    chirp = np.sin(2 * np.pi * (200 * t + 3_000 * t * t))
    tone = np.sin(2 * np.pi * 130 * t)
    return (0.3 * chirp + 0.2 * tone).astype(np.float32)
