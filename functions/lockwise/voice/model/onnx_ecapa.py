"""ECAPA-TDNN speaker embeddings served from an ONNX export, without torch: numpy and onnxruntime only.

The artifact directory is written at build time by ``python -m infra.model.export_onnx`` from a SpeechBrain model
directory, and only after the exported graph matched SpeechBrain on a fixed set of clips::

    manifest.json       {"format": 2, "encoder": "ecapa-tdnn", "model_id": ..., "dim": 192, "sample_rate": 16000,
                         "onnx": {"file": "ecapa-tdnn.onnx", "sha256": ..., "weights": "ecapa-tdnn.weights",
                                  "weights_sha256": ..., "input": "wav", "output": "embedding"},
                         "parity": {...}, "exported_with": {...},
                         "cpu_graph": {"file": "ecapa-tdnn.cpu.onnx", "sha256": ...,
                                       "weights": "ecapa-tdnn.cpu.weights", "weights_sha256": ...,
                                       "made_for": {...}, "check": [192 floats], "parity": {...}}}
    ecapa-tdnn.onnx     wav (batch, samples) float32 at 16 kHz -> raw embedding (batch, 192) float32; the graph holds
                        SpeechBrain's Fbank (STFT as a real convolution), sentence mean normalisation and ECAPA_TDNN
    ecapa-tdnn.weights  the graph's initializers (ONNX external data): onnxruntime maps this file into
                        memory instead of parsing 84 MB of protobuf (session creation ~0.2 s -> ~0.07 s, measured)
    ecapa-tdnn.cpu.*    optional: the same graph as onnxruntime optimises it for the build machine's kind of CPU
                        (blocked-layout convolutions; ``lockwise.voice.model.cpu_graph``), with its own parity record

Which graph serves: the CPU one where ``cpu_graph.made_for()`` here equals the manifest's ``made_for`` and, once its
session is made, it reproduces the recorded ``check`` embedding within 1e-4; otherwise (logged) the portable one. A
file that does not match its SHA-256 is refused either way, never passed over.

``model_id`` is the SpeechBrain model's own (``lockwise.voice.model.ecapa.model_identity``), so voiceprints enrolled
through either encoder compare with probes from the other. Resampling is ``lockwise.voice.model.resample``, a numpy port
of the ``torchaudio.functional.resample`` the SpeechBrain path uses.

Create one ``OnnxEcapaEncoder`` per instance at start-up and reuse it. Construction reads the manifest and makes no
onnxruntime session: a function's master process (gunicorn's) forks its worker after loading ``main.py``, and
onnxruntime's thread pool does not survive a fork, so the one session a process serves from is made in the forked
worker as it starts (or on first use, or by ``prepare()``, in a process that does not fork). Making it checks its
graph's two files' SHA-256 (hashed while onnxruntime loads the graph) before anything is embedded; a worker whose
model fails this exits as it boots. A 3 s clip at 44.1 kHz then takes ~38.5 ms on 2 cores with the CPU graph and
~46-48 ms with the portable one, alone; 49-52 ms with the CPU graph in ``./dev bench``'s interleaved rounds, where
SpeechBrain's forward took 73-82 ms. An earlier trial found glibc's malloc made the first calls ~50% slower, cured
by ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``; ``./dev bench verify_runtime`` measures both and found no
difference with this graph, so the defaults are kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.core import log as lwlog
from lockwise.core.forking import in_each_child
from lockwise.voice.model import blas, cpu_graph
from lockwise.voice.model.model_files import ModelError, file_sha256, read_manifest
from lockwise.voice.model.onnx_runtime import ort
from lockwise.voice.model.resample import resample
from lockwise.voice.model.samples import at_least_40ms, mono_float32
from lockwise.voice.model.samples import sample_rate as checked_rate

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = 2  # 1: one self-contained .onnx file (re-export it: ./dev does, for the local stack)
ENCODER_NAME = "ecapa-tdnn"
EMBEDDING_DIM = 192
SAMPLE_RATE = 16_000
#: gunicorn's exit status for "worker failed to boot": its master stops instead of forking the worker again
WORKER_BOOT_ERROR = 3


def load_artifact_manifest(artifact_dir: Path) -> dict[str, Any]:
    """The checked ``manifest.json`` of an ONNX ECAPA artifact directory.

    Raises
    ------
    ModelError
        The directory or manifest is missing or unreadable, or the manifest is not a format-1 manifest of a
        192-dim 16 kHz ``ecapa-tdnn`` export (the message names the file and the field).
    """
    path = Path(artifact_dir) / MANIFEST
    if not Path(artifact_dir).is_dir():
        raise ModelError(f"ONNX ECAPA artifact directory {artifact_dir} does not exist (or is not a directory)")
    manifest = read_manifest(path, "ONNX ECAPA artifact", "export with infra.model.export_onnx")
    expected: dict[str, object] = {
        "format": ARTIFACT_FORMAT,
        "encoder": ENCODER_NAME,
        "dim": EMBEDDING_DIM,
        "sample_rate": SAMPLE_RATE,
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ModelError(f"ONNX ECAPA artifact {path}: {key} is {manifest.get(key)!r}, expected {value!r}")
    if not isinstance(manifest.get("model_id"), str) or not manifest["model_id"]:
        raise ModelError(f"ONNX ECAPA artifact {path}: model_id is missing")
    onnx = _graph_entry(path, "onnx", manifest.get("onnx"), ("input", "output"))
    cpu = manifest.get("cpu_graph")
    if cpu is not None:
        cpu = _graph_entry(path, "cpu_graph", cpu, taken=(onnx["file"], onnx["weights"]))
        check = cpu.get("check")
        if not isinstance(cpu.get("made_for"), dict) or not (
            isinstance(check, list) and len(check) == EMBEDDING_DIM and all(isinstance(v, float) for v in check)
        ):
            raise ModelError(f"ONNX ECAPA artifact {path}: cpu_graph needs made_for and a check of {EMBEDDING_DIM}")
    return manifest


def _graph_entry(path: Path, section: str, entry: Any, also: tuple[str, ...] = (), taken: tuple[str, ...] = ()) -> Any:
    """A manifest's entry for one graph (``onnx`` or ``cpu_graph``), refused unless it names its two files and their
    SHA-256 (and ``also``), each file a name in the directory, none of them ``taken`` by another graph."""
    named = ("file", "sha256", "weights", "weights_sha256", *also)
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) and entry[key] for key in named):
        raise ModelError(f"ONNX ECAPA artifact {path}: {section} must name {', '.join(named)}")
    for key in ("file", "weights"):
        if Path(entry[key]).name != entry[key] or entry[key] in (".", "..", *taken):
            raise ModelError(
                f"ONNX ECAPA artifact {path}: {section}.{key} must be a file name of its own in the directory"
            )
    return entry


@dataclass(frozen=True)
class Graph:
    """One servable graph of an artifact: its two files with their recorded SHA-256, and how a session loads it."""

    name: str  # "portable" or "cpu"
    onnx_path: Path
    weights_path: Path
    sha256: str
    weights_sha256: str
    #: the portable graph is optimised short of onnxruntime's layout rewrite (its ~130 ms would be paid at every
    #: start); the CPU graph was optimised in full at build time and is loaded as it is
    optimization: Any
    check: tuple[float, ...] | None = None  # the CPU graph's unit embedding of cpu_graph.check_clip()

    @classmethod
    def named(cls, name: str, folder: Path, entry: dict[str, Any], optimization: Any) -> Graph:
        """The graph a manifest entry (``onnx`` or ``cpu_graph``, checked by ``load_artifact_manifest``) names."""
        check = tuple(entry["check"]) if "check" in entry else None
        files = (folder / entry["file"], folder / entry["weights"])
        return cls(name, *files, entry["sha256"], entry["weights_sha256"], optimization, check)

    def checksums(self) -> dict[Path, str]:
        return {self.onnx_path: self.sha256, self.weights_path: self.weights_sha256}


class GraphUnusable(ModelError):
    """A graph cannot serve here (onnxruntime refuses it, its input or output is not the manifest's, or it misses its
    check): for the CPU graph the portable one serves instead; for the portable graph it is the load's error."""


class OnnxEcapaEncoder:
    """Speaker embedding model: mono audio at any rate -> unit-length float32 vector of shape (192,).

    Behaves as ``lockwise.voice.model.ecapa.EcapaEncoder`` on the same weights (within 1e-4, checked at export),
    with the same ``model_id``, without importing torch.

    Arguments
    ---------
    artifact_dir : Path
        A directory written by ``infra.model.export_onnx`` (``manifest.json`` and the graph and weights files it
        names).
    threads : int, optional
        onnxruntime's intra-op threads for this session; otherwise onnxruntime's default (one per physical core).
    use_cpu_graph : bool
        Serve the artifact's CPU graph where it was made for this machine (default); False: the portable graph.

    Raises
    ------
    ModelError
        At construction: the manifest is missing, unreadable or not a format-2 ECAPA manifest, or a file it names is
        missing. When the session is made (``prepare()``, the first call, or a forked worker's boot): a file does not
        match its recorded SHA-256, or the graph does not load or has not the manifest's input and output.
    """

    name: str = ENCODER_NAME
    dim: int = EMBEDDING_DIM
    sample_rate: int = SAMPLE_RATE

    def __init__(self, artifact_dir: Path, *, threads: int | None = None, use_cpu_graph: bool = True) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.artifact_dir = Path(artifact_dir).absolute()
        started = time.perf_counter()
        manifest = load_artifact_manifest(self.artifact_dir)
        self.model_id: str = manifest["model_id"]
        self.portable = Graph.named(
            "portable", self.artifact_dir, manifest["onnx"], ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        #: the CPU graph, where the manifest has one made for this machine's kind of CPU (and it is wanted)
        self.cpu: Graph | None = None
        cpu = manifest.get("cpu_graph")
        if use_cpu_graph and cpu is not None and cpu["made_for"] == cpu_graph.made_for():
            self.cpu = Graph.named("cpu", self.artifact_dir, cpu, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        for graph in (self.portable, self.cpu):
            for path in graph.checksums() if graph else ():
                if not path.is_file():
                    raise ModelError(f"ONNX ECAPA model file {path} is missing (export with infra.model.export_onnx)")
        self._threads = threads
        self._input: str = manifest["onnx"]["input"]
        self._output: str = manifest["onnx"]["output"]
        # No session here (see the module docstring): a session made before gunicorn forks its worker would run
        # every call on one thread there (measured: a 10 s clip 571 ms over HTTP instead of ~320 ms), and a new
        # session in a child whose parent has pool threads deadlocks. The worker makes its own as it starts.
        self._serving: Any = None
        self._serving_pid = -1
        self._making = threading.Lock()
        in_each_child(self._after_fork)
        blas.one_thread()  # numpy's resampling beside onnxruntime's pool: see lockwise.voice.model.blas
        lwlog.event(
            logger,
            "ecapa onnx model found",
            model_id=self.model_id,
            artifact_dir=str(self.artifact_dir),
            seconds=round(time.perf_counter() - started, 3),
            threads=threads,
            onnxruntime=ort.__version__,
            graph=self.graph,
        )

    def prepare(self) -> None:
        """Make this process's session now (else the first call does): checks both files' SHA-256 while
        onnxruntime loads them, and the graph's input and output against the manifest (the CPU graph also its
        check clip; failing that, the portable graph is loaded instead).

        Raises
        ------
        ModelError
            A file does not match its recorded SHA-256, onnxruntime cannot load the graph, or the graph's input or
            output is not the manifest's.
        """
        self._serving_session()

    @property
    def graph(self) -> str:
        """Which graph serves (or will, unless its check fails as the session is made): "cpu" or "portable"."""
        return "cpu" if self.cpu is not None else "portable"

    def _serving_session(self) -> Any:
        """This process's session, made once per process (by one thread: others wait for it): the CPU graph's where
        it passes its check, else the portable graph's."""
        if self._serving is not None and self._serving_pid == os.getpid():
            return self._serving
        with self._making:
            return self._make_session()

    def _make_session(self) -> Any:
        if self._serving is None or self._serving_pid != os.getpid():
            started = time.perf_counter()
            session = None
            if self.cpu is not None:
                try:
                    session = self._open(self.cpu)
                except GraphUnusable as exc:
                    lwlog.event(
                        logger,
                        "ecapa onnx cpu graph not used here: serving the portable graph",
                        level=logging.WARNING,
                        model_id=self.model_id,
                        error=str(exc),
                    )
                    self.cpu = None
            if session is None:
                session = self._open(self.portable)
            self._serving, self._serving_pid = session, os.getpid()
            lwlog.event(
                logger,
                "ecapa onnx session ready",
                model_id=self.model_id,
                graph=self.graph,
                seconds=round(time.perf_counter() - started, 3),
                threads=session.get_session_options().intra_op_num_threads,
            )
        return self._serving

    def _open(self, graph: Graph) -> Any:
        """A session of ``graph``, its files' SHA-256 checked while onnxruntime loads them and the session is tried
        (hashing, ~0.06 s for 84 MB, loading and running all release the GIL: side by side), its input and output
        the manifest's, and the CPU graph's embedding of the check clip the build's.

        Raises ``ModelError`` for a file that fails its checksum (whatever else failed), ``GraphUnusable`` where
        onnxruntime cannot load or run the graph, it has not the manifest's input and output, or misses its check."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-checksum") as pool:
            verified = pool.submit(_verify_all, graph.checksums())
            try:
                session = _session(graph.onnx_path, self._threads, graph.optimization)
                inputs = [i.name for i in session.get_inputs()]
                outputs = {o.name: o.shape for o in session.get_outputs()}
                if inputs != [self._input] or outputs.get(self._output, [None])[-1] != self.dim:
                    raise GraphUnusable(
                        f"ONNX ECAPA model {graph.onnx_path}: graph has inputs {inputs} and outputs {outputs}, "
                        f"the manifest names {self._input!r} -> {self._output!r} of {self.dim} values"
                    )
                if graph.check is not None:
                    self._check(session, graph)
            except GraphUnusable:
                verified.result()  # a file that fails its checksum is the better reason, and never passed over
                raise
            verified.result()
        return session

    def _check(self, session: Any, graph: Graph) -> None:
        """``GraphUnusable`` unless ``session`` embeds ``cpu_graph.check_clip()`` as the portable graph did at build
        time (recorded by ``embed_16k``, the same computation)."""
        try:
            got = self._unit_embedding(session, cpu_graph.check_clip(), graph)
        except Exception as exc:  # onnxruntime's own exception types, or an unusable embedding (ModelError)
            raise GraphUnusable(f"ONNX ECAPA model {graph.onnx_path} does not run here ({exc})") from exc
        diff = float(np.max(np.abs(got.astype(np.float64) - np.asarray(graph.check, dtype=np.float64))))
        if not diff <= cpu_graph.CHECK_TOLERANCE:
            raise GraphUnusable(
                f"ONNX ECAPA model {graph.onnx_path} embeds the check clip {diff:.3g} away from the build's "
                f"(tolerance {cpu_graph.CHECK_TOLERANCE})"
            )

    def _after_fork(self) -> None:
        """In a forked child (a gunicorn worker): make the session now, before the first request, unless the
        parent already had one (its pool threads would deadlock a new session here; such a child gets one on its
        first call, if at all). A worker whose model does not load exits as gunicorn's "failed to boot", which
        stops the instance instead of answering every request with an error."""
        self._making = threading.Lock()  # the parent's, held by a thread that did not come along, would never open
        if self._serving is not None:
            return
        try:
            self._serving_session()
        except ModelError as exc:
            lwlog.event(logger, "ecapa onnx model failed to load in the worker", level=logging.ERROR, error=str(exc))
            os._exit(WORKER_BOOT_ERROR)

    def embed(self, samples: npt.NDArray[np.floating[Any]], sample_rate: int) -> npt.NDArray[np.float32]:
        """Embed one mono clip.

        Arguments
        ---------
        samples : np.ndarray, shape (n,), float
            Mono samples in [-1, 1] (float32 preferred; other float dtypes are converted).
        sample_rate : int
            Rate of ``samples`` in Hz; anything but 16 kHz is resampled with ``lockwise.voice.model.resample``.

        Returns
        -------
        np.ndarray, shape (192,), float32, unit L2 norm.

        Raises
        ------
        InvalidAudio
            Not 1-D floats, non-finite values, or shorter than 40 ms.
        """
        rate = checked_rate(sample_rate)
        wave = mono_float32(samples)
        if rate != self.sample_rate:
            wave = resample(wave, rate, self.sample_rate)
        return self._embed(wave)

    def embed_16k(self, samples16k: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Embed one mono clip already at 16 kHz: shape (n,) float in [-1, 1] -> shape (192,) float32, unit norm."""
        return self._embed(mono_float32(samples16k))

    def _embed(self, wave: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """wave: shape (n,) float32 at 16 kHz -> shape (192,) float32, unit L2 norm."""
        return self._unit_embedding(self._serving_session(), at_least_40ms(wave), self.cpu or self.portable)

    def _unit_embedding(self, session: Any, wave: npt.NDArray[np.float32], graph: Graph) -> npt.NDArray[np.float32]:
        """``session``'s embedding of ``wave`` (16 kHz), unit length; ``ModelError`` for one that is not a finite,
        non-zero vector of ``dim`` values."""
        (raw,) = session.run([self._output], {self._input: wave[np.newaxis, :]})
        embedding = np.asarray(raw, dtype=np.float32).reshape(-1)
        norm = np.linalg.norm(embedding)
        if embedding.shape != (self.dim,) or not np.isfinite(norm) or norm == 0.0:
            raise ModelError(
                f"ONNX ECAPA model {graph.onnx_path} gave an embedding of shape {np.shape(raw)} and norm {norm}, "
                f"expected a finite, non-zero (1, {self.dim})"
            )
        unit: npt.NDArray[np.float32] = (embedding / norm).astype(np.float32)
        return unit


def _verify_all(checksums: dict[Path, str]) -> None:
    for path, sha256 in checksums.items():
        _verify(path, sha256)


def _verify(path: Path, sha256: str) -> None:
    """Refuse ``path`` unless its SHA-256 is the one the manifest recorded.

    Read through a buffer, not a memory map: 84 MB hash in ~51 ms instead of ~60 (no page faults), and the file's
    pages are not counted a second time in the process's resident memory beside onnxruntime's own map of them
    (measured: peak RSS 234 -> 173 MB while the CPU graph's check ran beside the hash). onnxruntime opens the files
    again by name, so this checks what is on disk at start-up; the bundle is read-only.
    """
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise ModelError(f"ONNX ECAPA model file {path}: SHA-256 {actual} does not match the manifest's {sha256}")


def _session(path: Path, threads: int | None, optimization: Any) -> Any:
    """One CPU ``InferenceSession`` of the graph at ``path`` (its weights mapped from the file it names):
    sequential execution, one inter-op thread, ``threads`` intra-op threads (default: one per physical core),
    onnxruntime's graph ``optimization`` level. No memory patterns: onnxruntime keeps one for every input shape it
    has run, for the session's life, and a clip's length is its shape, nearly every request's its own (attack run 114:
    12.7 KB more allocated for each distinct length, with the full model's CPU graph as with the tiny model's, ~13 MB
    a thousand verifications, for good); one is reused only for a length run before."""
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = False
    options.inter_op_num_threads = 1
    options.graph_optimization_level = optimization
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for any unusable graph
        raise GraphUnusable(f"ONNX ECAPA model {path} cannot be loaded by onnxruntime ({exc})") from exc
