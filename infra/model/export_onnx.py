"""Export a SpeechBrain ECAPA model directory to the torch-free ONNX artifact, and prove it embeds the same:
``python -m infra.model.export_onnx MODEL_DIR OUT_DIR [--tolerance T]``.

``torch.stft`` (complex-valued) does not export, so the graph re-implements SpeechBrain's ``Fbank`` with the numbers
read from the loaded modules: the STFT as a real 1-D convolution with the window-weighted cosine and sine DFT kernels
(stride = hop), then the power spectrum, the mel matrix, and ``amplitude_to_DB`` with its per-utterance top_db
clamp. Sentence mean normalisation and a copy of ``ECAPA_TDNN`` follow.

Parity is the gate: a fixed set of seeded clips (0.5-10 s, harmonic "speech" with noise, at 16 kHz and 44.1 kHz)
goes through ``EcapaEncoder.embed`` (SpeechBrain, torchaudio resampling) and ``OnnxEcapaEncoder.embed`` (onnxruntime,
numpy resampling). Everything is written in a staging directory next to ``OUT_DIR`` and renamed to ``OUT_DIR``
(replacing it) only when the largest difference is within the tolerance; otherwise the staging directory is removed,
``OUT_DIR`` is left as it was, ``ParityError`` is raised and the command exits 1.

On an x86-64 machine with AVX the artifact also holds a second graph, the first as onnxruntime optimises it for this
kind of CPU (``lockwise.voice.model.cpu_graph``: ~15 % faster a forward pass, without the ~130 ms its rewrite costs
each session), which must pass the same parity gate; machines of another kind serve the portable graph.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from infra.model.clips import speech_like_clip
from infra.model.ecapa_graph import build_export_module
from infra.staging import staged_dir
from lockwise.voice.model import cpu_graph
from lockwise.voice.model.ecapa import EcapaEncoder
from lockwise.voice.model.model_files import ModelError, file_sha256
from lockwise.voice.model.onnx_ecapa import (
    ARTIFACT_FORMAT,
    EMBEDDING_DIM,
    ENCODER_NAME,
    MANIFEST,
    SAMPLE_RATE,
    OnnxEcapaEncoder,
)

logger = logging.getLogger(__name__)

ONNX_FILE = "ecapa-tdnn.onnx"
WEIGHTS_FILE = "ecapa-tdnn.weights"  # the initializers, as ONNX external data (mapped, not parsed, at load)
CPU_ONNX_FILE = "ecapa-tdnn.cpu.onnx"  # the same graph optimised for the build machine's kind of CPU
CPU_WEIGHTS_FILE = "ecapa-tdnn.cpu.weights"
NCHWC_DOMAIN = "com.microsoft.nchwc"  # onnxruntime's blocked-layout operators
OPSET = 17
INPUT, OUTPUT = "wav", "embedding"
PARITY_SECONDS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
PARITY_RATES = (16_000, 44_100)
PARITY_SEED = 1_000  # clip i uses seed PARITY_SEED + i, at every rate
_EXAMPLE_SECONDS = 3.0  # length of the example input the graph is traced with (the time axis stays dynamic)


class ParityError(RuntimeError):
    """The exported graph does not embed like SpeechBrain within the tolerance; ``report`` says where."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(
            f"ONNX export ({report.graph} graph) differs from SpeechBrain by up to {report.max_abs_diff:.3g} "
            f"(tolerance {report.tolerance:g}; worst clip {report.worst.clip})"
        )
        self.report = report


# ------------------------------------------------------------------------------------------------- parity


@dataclass(frozen=True)
class ParityRow:
    """One clip through both paths: largest |difference| of the unit embeddings and their cosine."""

    clip: str
    sample_rate: int
    samples: int
    max_abs_diff: float
    cosine: float


@dataclass(frozen=True)
class ParityReport:
    """Served (ONNX) vs reference (SpeechBrain) embeddings for every parity clip."""

    rows: tuple[ParityRow, ...]
    tolerance: float
    graph: str = "portable"  # which of the artifact's graphs served (lockwise.voice.model.onnx_ecapa.Graph.name)

    @property
    def max_abs_diff(self) -> float:
        return max(row.max_abs_diff for row in self.rows)

    @property
    def min_cosine(self) -> float:
        return min(row.cosine for row in self.rows)

    @property
    def worst(self) -> ParityRow:
        return max(self.rows, key=lambda row: row.max_abs_diff)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def table(self) -> str:
        """The report as a fixed-width text table, one line per clip and an overall line."""
        lines = [f"{'clip':<16} {'rate':>6} {'samples':>8} {'max |diff|':>11} {'cosine':>12}"]
        lines += [
            f"{r.clip:<16} {r.sample_rate:>6} {r.samples:>8} {r.max_abs_diff:>11.3e} {r.cosine:>12.9f}"
            for r in self.rows
        ]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{'overall':<16} {'':>6} {'':>8} {self.max_abs_diff:>11.3e} {self.min_cosine:>12.9f}  "
            f"{verdict} (tolerance {self.tolerance:g}, {self.graph} graph)"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "tolerance": self.tolerance,
            "max_abs_diff": self.max_abs_diff,
            "min_cosine": self.min_cosine,
            "clips": [asdict(row) for row in self.rows],
        }


def measure_parity(
    reference: EcapaEncoder,
    served: OnnxEcapaEncoder,
    *,
    tolerance: float,
    seconds: Sequence[float] = PARITY_SECONDS,
    rates: Sequence[int] = PARITY_RATES,
    seed: int = PARITY_SEED,
) -> ParityReport:
    """Embed every (length, rate) clip through both encoders' public ``embed`` and compare."""
    (report,) = measure_parities(reference, [served], tolerance=tolerance, seconds=seconds, rates=rates, seed=seed)
    return report


def measure_parities(
    reference: EcapaEncoder,
    served: Sequence[OnnxEcapaEncoder],
    *,
    tolerance: float,
    seconds: Sequence[float] = PARITY_SECONDS,
    rates: Sequence[int] = PARITY_RATES,
    seed: int = PARITY_SEED,
) -> list[ParityReport]:
    """``measure_parity`` for each of ``served`` (each named by the graph it serves), SpeechBrain run once a clip."""
    rows: list[list[ParityRow]] = [[] for _ in served]
    for rate in rates:
        for i, length in enumerate(seconds):
            clip = speech_like_clip(rate, length, seed + i)
            want = reference.embed(clip, rate).astype(np.float64)
            for encoder, found in zip(served, rows, strict=True):
                got = encoder.embed(clip, rate).astype(np.float64)
                found.append(
                    ParityRow(
                        clip=f"{length:g} s #{seed + i}",
                        sample_rate=rate,
                        samples=int(clip.shape[0]),
                        max_abs_diff=float(np.abs(want - got).max()),
                        cosine=float(want @ got),
                    )
                )
    return [
        ParityReport(rows=tuple(found), tolerance=tolerance, graph=encoder.graph)
        for encoder, found in zip(served, rows, strict=True)
    ]


# ------------------------------------------------------------------------------------------------- export


def export(
    model_dir: Path,
    out_dir: Path,
    *,
    tolerance: float = 1e-4,
    with_cpu_graph: bool = True,
    _tamper: Callable[[nn.Module], None] | None = None,
) -> ParityReport:
    """Write the ONNX artifact of ``model_dir`` to ``out_dir`` (replaced) if it passes parity; return the report.

    ``with_cpu_graph``: also write the graph pre-optimised for this machine's kind of CPU, where it makes one
    (False: the portable graph alone, 84 MB less, for a build on a machine unlike the ones that serve). ``_tamper`` is
    for tests only: it is applied to the export module (an ``EcapaWaveformEncoder``) before export,
    to prove that a graph which drifts from SpeechBrain is refused.

    Raises
    ------
    ParityError
        Some clip differs by more than ``tolerance``; nothing is written to ``out_dir``.
    ModelError
        ``model_dir`` does not load, or its front end is not one this export reproduces.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    reference = EcapaEncoder(model_dir)
    try:
        module = build_export_module(reference._model)
    except ModelError as exc:
        raise ModelError(f"ECAPA model directory {model_dir}: {exc}") from exc
    if _tamper is not None:
        _tamper(module)
    with staged_dir(out_dir) as staging:
        onnx_path = staging / ONNX_FILE
        _export_graph(module, onnx_path)
        _move_weights_out(onnx_path, WEIGHTS_FILE)
        manifest = _manifest(reference.model_id, onnx_path, staging / WEIGHTS_FILE)
        # Loadable only inside the hidden staging directory, which is removed unless parity passes.
        _write_json(staging / MANIFEST, manifest)
        portable = OnnxEcapaEncoder(staging, use_cpu_graph=False)
        cpu = _write_cpu_graph(staging, portable) if with_cpu_graph else None
        if cpu is not None:
            _write_json(staging / MANIFEST, {**manifest, "cpu_graph": cpu})
        served = [portable] if cpu is None else [portable, OnnxEcapaEncoder(staging)]
        report, *cpu_report = measure_parities(reference, served, tolerance=tolerance)
        if cpu is not None and cpu_report[0].graph != "cpu":  # made here, it must serve here
            raise ModelError(f"the CPU graph exported to {staging} is not served on the machine that made it")
        for each in (report, *cpu_report):
            if not each.passed:
                raise ParityError(each)
        manifest["parity"] = report.to_json()
        if cpu is not None:
            manifest["cpu_graph"] = {**cpu, "parity": cpu_report[0].to_json()}
        _write_json(staging / MANIFEST, manifest)
    logger.info("wrote ONNX ECAPA artifact", extra={"fields": {"dir": str(out_dir), "max_abs": report.max_abs_diff}})
    return report


def _export_graph(module: nn.Module, path: Path) -> None:
    """TorchScript-based export with a dynamic batch and time axis: (batch, samples) -> (batch, 192)."""
    example = torch.from_numpy(speech_like_clip(SAMPLE_RATE, _EXAMPLE_SECONDS, seed=0))[None, :]
    with torch.inference_mode(), warnings.catch_warnings():
        # Known and harmless here: the legacy exporter is chosen on purpose (the dynamo one needs onnxscript), and
        # the tracer flags ECAPA's all-ones padding mask, whose shape follows the input (parity covers 0.5-10 s).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", 1: "samples"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _move_weights_out(onnx_path: Path, weights_file: str) -> None:
    """Rewrite the graph at ``onnx_path`` with its initializers in ``weights_file`` beside it (ONNX external data):
    onnxruntime maps that file instead of parsing them out of the protobuf (session creation ~0.2 -> ~0.07 s for
    the full model, measured on 2 cores). Both files readable by any user (the serving image's user is not root)."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.save_model(
        model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True, location=weights_file
    )
    _readable(onnx_path, onnx_path.with_name(weights_file))


def _readable(*paths: Path) -> None:
    """Readable by any user (the serving image's user is not root)."""
    for path in paths:
        path.chmod(0o644)


def _files_entry(onnx_path: Path, weights_path: Path) -> dict[str, str]:
    """A graph's two files in the manifest: their names and SHA-256."""
    return {
        "file": onnx_path.name,
        "sha256": file_sha256(onnx_path),
        "weights": weights_path.name,
        "weights_sha256": file_sha256(weights_path),
    }


def _write_cpu_graph(staging: Path, portable_encoder: OnnxEcapaEncoder) -> dict[str, Any] | None:
    """Save the portable graph as onnxruntime optimises it in full on this machine (its 2-D convolutions in the
    blocked NCHWc layout, ``lockwise.voice.model.cpu_graph``) beside it, weights apart as for the portable graph;
    return its ``cpu_graph`` manifest entry (parity still to measure), or None where this machine makes no such graph
    (not x86-64 with AVX, or onnxruntime rewrote nothing into that layout: the portable graph is all there is)."""
    import onnx

    from lockwise.voice.model.onnx_runtime import ort

    made_for = cpu_graph.made_for()
    if made_for is None:
        return None
    graph_path, weights_path = staging / CPU_ONNX_FILE, staging / CPU_WEIGHTS_FILE
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(graph_path)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights_path.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 3  # its warning that the result is for this kind of CPU only: that is the point
    ort.InferenceSession(
        str(portable_encoder.portable.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    nodes = onnx.load(str(graph_path), load_external_data=False).graph.node
    if not any(node.domain == NCHWC_DOMAIN for node in nodes) or not weights_path.is_file():
        graph_path.unlink(missing_ok=True)
        weights_path.unlink(missing_ok=True)
        return None
    _readable(graph_path, weights_path)
    return {
        **_files_entry(graph_path, weights_path),
        "made_for": made_for,
        # what the portable graph (parity-checked below) makes of the check clip: the CPU graph's test at start
        "check": [float(v) for v in portable_encoder.embed_16k(cpu_graph.check_clip())],
        "parity": None,
    }


def _manifest(model_id: str, onnx_path: Path, weights_path: Path) -> dict[str, Any]:
    import onnx
    import speechbrain  # type: ignore[import-untyped]

    return {
        "format": ARTIFACT_FORMAT,
        "encoder": ENCODER_NAME,
        "model_id": model_id,
        "dim": EMBEDDING_DIM,
        "sample_rate": SAMPLE_RATE,
        "onnx": {
            **_files_entry(onnx_path, weights_path),
            "input": INPUT,
            "output": OUTPUT,
            "opset": OPSET,
        },
        "parity": None,
        "exported_with": {"torch": torch.__version__, "speechbrain": speechbrain.__version__, "onnx": onnx.__version__},
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model_dir", type=Path, help="SpeechBrain model directory (spkrec-ecapa-voxceleb layout)")
    parser.add_argument("out_dir", type=Path, help="artifact directory to write (replaced if it exists)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| (default 1e-4)")
    parser.add_argument(
        "--no-cpu-graph",
        action="store_true",
        help="write the portable graph only (for a build machine unlike the ones that serve: 84 MB less)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = export(args.model_dir, args.out_dir, tolerance=args.tolerance, with_cpu_graph=not args.no_cpu_graph)
    except ParityError as exc:
        sys.stderr.write(f"{exc.report.table()}\nparity failed: {exc}\n")
        return 1
    except ModelError as exc:
        sys.stderr.write(f"export failed: {exc}\n")
        return 1
    cpu = json.loads((args.out_dir / MANIFEST).read_text()).get("cpu_graph")
    if cpu is None:
        why = "not asked for" if args.no_cpu_graph else "this machine gets no blocked-layout kernels"
        sys.stdout.write(f"{report.table()}\nno CPU graph: {why}\n")
    else:
        made_for = f"{cpu['made_for']['machine']} with {', '.join(cpu['made_for']['features'])}"
        sys.stdout.write(
            f"{report.table()}\nCPU graph for {made_for}: max |diff| {cpu['parity']['max_abs_diff']:.3e}, PASS\n"
        )
    sys.stdout.write(f"wrote {args.out_dir}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
