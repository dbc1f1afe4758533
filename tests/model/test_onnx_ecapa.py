"""The torch-free ONNX encoder embeds as the SpeechBrain one does; its artifact is only written once that is proven.

Covers the numpy resampler against torchaudio, the export and its parity gate on tiny and full-size random models,
served embeddings on clips the export never saw, the artifact's integrity checks, audio validation, and that serving
imports no torch. The models are random (``infra.model.random_ecapa``): equality is what is tested, not speakers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
import torchaudio.functional  # type: ignore[import-untyped]
from torch import nn

from infra.local import services
from infra.model import export_onnx
from infra.model.cache import random_model
from infra.model.clips import speech_like_clip
from infra.model.ecapa_graph import Conv1dAs2d, WholeClipAttentivePooling
from infra.model.export_onnx import ParityError, ParityReport, export
from lockwise.core.errors import InvalidAudio
from lockwise.voice.model import cpu_graph
from lockwise.voice.model.ecapa import EcapaEncoder, model_identity
from lockwise.voice.model.model_files import ModelError
from lockwise.voice.model.onnx_ecapa import MANIFEST, OnnxEcapaEncoder, load_artifact_manifest
from lockwise.voice.model.resample import _kernel, resample
from tests.allocated import allocated

RESAMPLE_RATES = (8_000, 11_025, 22_050, 44_100, 48_000)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-ecapa")


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return random_model("tiny", 0, exported=False)


@pytest.fixture(scope="module")
def full_dir() -> Path:
    return random_model("full", 0, exported=False)


@pytest.fixture(scope="module")
def tiny_export(tiny_dir: Path, models: Path) -> tuple[Path, ParityReport]:
    out = models / "tiny-onnx"
    return out, export(tiny_dir, out)


@pytest.fixture(scope="module")
def full_export(full_dir: Path, models: Path) -> tuple[Path, ParityReport]:
    out = models / "full-onnx"
    return out, export(full_dir, out)


@pytest.fixture(scope="module")
def tiny_pair(tiny_dir: Path, tiny_export: tuple[Path, ParityReport]) -> tuple[EcapaEncoder, OnnxEcapaEncoder]:
    return EcapaEncoder(tiny_dir), OnnxEcapaEncoder(tiny_export[0])


@pytest.fixture(scope="module")
def full_pair(full_dir: Path, full_export: tuple[Path, ParityReport]) -> tuple[EcapaEncoder, OnnxEcapaEncoder]:
    return EcapaEncoder(full_dir), OnnxEcapaEncoder(full_export[0])


@pytest.fixture(params=["tiny", "full"])
def size(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def served(tiny_pair: tuple[EcapaEncoder, OnnxEcapaEncoder]) -> OnnxEcapaEncoder:
    return tiny_pair[1]


def noise(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    clip: npt.NDArray[np.float32] = (np.random.RandomState(seed).standard_normal(n) * 0.3).astype(np.float32)
    return clip


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def needs_cpu_graph() -> None:
    """Fail loudly where a test of the CPU graph runs on a machine that makes none (not x86-64 with AVX)."""
    if cpu_graph.made_for() is None:
        pytest.fail("this machine makes no CPU graph (not x86-64 with AVX): the CPU graph's tests cannot run here")


# ------------------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("orig", RESAMPLE_RATES)
@pytest.mark.parametrize("length", [1, 7, 100, 441, 1_000, 4_001, 16_003, "3 s"])
def test_resample_matches_torchaudio(orig: int, length: int | str) -> None:
    n = 3 * orig + 13 if length == "3 s" else int(length)
    clip = noise(n, seed=n)
    want = torchaudio.functional.resample(torch.from_numpy(clip), orig, 16_000).numpy()
    got = resample(clip, orig, 16_000)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-6  # measured <= 3.6e-7


@pytest.mark.parametrize(("orig", "new"), [(16_000, 44_100), (16_000, 8_000), (12_345, 16_000)])
def test_resample_matches_torchaudio_between_other_rates(orig: int, new: int) -> None:
    clip = noise(orig, seed=1)
    want = torchaudio.functional.resample(torch.from_numpy(clip), orig, new).numpy()
    got = resample(clip, orig, new)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-6


def test_resample_is_identity_at_equal_rates_and_caches_kernels() -> None:
    clip = noise(1_000)
    assert np.array_equal(resample(clip, 16_000, 16_000), clip)
    resample(clip, 44_100, 16_000)
    hits = _kernel.cache_info().hits
    resample(clip, 44_100, 16_000)
    assert _kernel.cache_info().hits == hits + 1
    kernel, _ = _kernel(441, 160)
    assert kernel.shape == (160, 2 * 17 + 441) and not kernel.flags.writeable


def test_resample_refuses_bad_rates_and_shapes() -> None:
    with pytest.raises(ValueError):
        resample(noise(100), 0, 16_000)
    with pytest.raises(ValueError):
        resample(np.zeros((2, 100), dtype=np.float32), 44_100, 16_000)


# ------------------------------------------------------------------------------------------------- export + parity


def test_export_passes_parity_and_writes_the_manifest(request: pytest.FixtureRequest, size: str, models: Path) -> None:
    model_dir: Path = request.getfixturevalue(f"{size}_dir")
    out, report = request.getfixturevalue(f"{size}_export")
    # Measured: max |diff| ~6e-7 (tiny) and ~8e-7 (full), cosines 1 - 1e-7; the tolerance is 1e-4.
    assert report.passed and report.max_abs_diff < 1e-5 and report.min_cosine > 1 - 1e-6
    assert {(r.sample_rate, r.samples) for r in report.rows} == {
        (rate, round(rate * s)) for rate in export_onnx.PARITY_RATES for s in export_onnx.PARITY_SECONDS
    }
    assert "overall" in report.table() and "PASS" in report.table()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == load_artifact_manifest(out)
    assert manifest["model_id"] == model_identity(model_dir)
    assert (manifest["format"], manifest["encoder"], manifest["dim"], manifest["sample_rate"]) == (
        2,
        "ecapa-tdnn",
        192,
        16_000,
    )
    onnx_file, weights_file = out / manifest["onnx"]["file"], out / manifest["onnx"]["weights"]
    assert manifest["onnx"]["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert manifest["onnx"]["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    # every initializer (but a few scalars) is read from the weights file, which onnxruntime maps at load
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    external = [t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer]
    assert any(external) and all(e or len(t.raw_data) <= 1024 for e, t in zip(external, graph.initializer, strict=True))
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in (onnx_file, weights_file))
    assert manifest["parity"]["max_abs_diff"] == report.max_abs_diff
    assert len(manifest["parity"]["clips"]) == len(report.rows)
    assert set(manifest["exported_with"]) == {"torch", "speechbrain", "onnx"}
    files = [MANIFEST, "ecapa-tdnn.onnx", "ecapa-tdnn.weights"]
    if cpu_graph.made_for() is not None:  # x86-64 with AVX (every machine these tests run on so far)
        cpu = manifest["cpu_graph"]
        files += ["ecapa-tdnn.cpu.onnx", "ecapa-tdnn.cpu.weights"]
        assert cpu["made_for"] == cpu_graph.made_for() and len(cpu["check"]) == 192
        assert cpu["sha256"] == hashlib.sha256((out / cpu["file"]).read_bytes()).hexdigest()
        assert cpu["weights_sha256"] == hashlib.sha256((out / cpu["weights"]).read_bytes()).hexdigest()
        assert cpu["parity"]["graph"] == "cpu" and cpu["parity"]["max_abs_diff"] < 1e-5
        assert len(cpu["parity"]["clips"]) == len(report.rows)
        nodes = onnx.load(str(out / cpu["file"]), load_external_data=False).graph.node
        assert any(n.domain == "com.microsoft.nchwc" for n in nodes)
    else:
        assert "cpu_graph" not in manifest
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no staging directory left behind


def test_served_embeddings_equal_speechbrain_on_unseen_clips(request: pytest.FixtureRequest, size: str) -> None:
    reference, served = request.getfixturevalue(f"{size}_pair")
    assert served.model_id == reference.model_id
    assert (served.name, served.dim, served.sample_rate) == (reference.name, reference.dim, reference.sample_rate)
    for i, seconds in enumerate((2.0, 3.0, 7.0)):
        clip = speech_like_clip(44_100, seconds, seed=500 + i)  # not a parity seed (those start at 1000)
        want, got = reference.embed(clip, 44_100), served.embed(clip, 44_100)
        assert got.shape == (192,) and got.dtype == np.float32
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
        assert float(np.abs(got - want).max()) <= 1e-4, seconds
        at_16k = speech_like_clip(16_000, seconds, seed=600 + i)
        assert float(np.abs(served.embed_16k(at_16k) - reference.embed_16k(at_16k)).max()) <= 1e-4


def test_served_embedding_is_deterministic_and_accepts_float64(served: OnnxEcapaEncoder) -> None:
    clip = speech_like_clip(22_050, 2.0, seed=7)
    first = served.embed(clip, 22_050)
    assert np.array_equal(first, served.embed(clip.copy(), 22_050))
    assert np.allclose(served.embed(clip.astype(np.float64), 22_050), first, atol=1e-6)


def test_clips_of_many_lengths_leave_nothing_behind_for_each(served: OnnxEcapaEncoder) -> None:
    """onnxruntime kept a memory pattern for every input shape its session had run, for good, and a clip's length is
    its shape: nearly every verification's its own (attack run 114: 12.7 KB more allocated for each distinct length,
    with this tiny model and with the full one, ~13 MB a thousand verifications). The session keeps none: 400 clips
    of distinct lengths leave what the process has allocated (glibc's count, which freed memory kept resident does
    not hide) as it was."""
    assert served._serving_session().get_session_options().enable_mem_pattern is False
    for seconds in (3.0, 3.0, 1.0, 2.0):  # the arena grown to the longest clip first
        served.embed(noise(int(16_000 * seconds)), 16_000)
    lengths = np.random.default_rng(3).choice(np.arange(16_000, 48_000), size=400, replace=False)
    clips = [noise(int(length), seed=int(length)) for length in lengths]
    before = allocated()
    for clip in clips:
        served.embed(clip, 16_000)
    grown = allocated() - before
    assert grown < 1_000_000, f"{grown:,} bytes more allocated after 400 clips of distinct lengths"


def _skip_mean_norm(module: nn.Module) -> None:
    module.norm = nn.Identity()


def _nudge_one_weight(module: nn.Module) -> None:
    # Measured on the tiny model: +1e-3 moves the unit embedding by <= 5e-5 (its raw norm is ~21), under the 1e-4
    # gate; +1e-2 on the last layer's bias moves it by ~5e-4.
    embedding_model: Any = module.embedding_model
    with torch.no_grad():
        embedding_model.fc.conv.bias[0] += 1e-2


@pytest.mark.parametrize("tamper", [_skip_mean_norm, _nudge_one_weight], ids=["no-mean-norm", "bias+1e-2"])
def test_a_graph_that_drifts_is_refused_and_leaves_no_artifact(
    tiny_dir: Path, tmp_path: Path, tamper: Callable[[nn.Module], None]
) -> None:
    # A nudged weight is only caught because the export module holds a copy of the embedding model: were the
    # reference's own weights nudged too, both paths would agree.
    out = tmp_path / "artifact"
    with pytest.raises(ParityError) as caught:
        export(tiny_dir, out, _tamper=tamper)
    assert not caught.value.report.passed and caught.value.report.max_abs_diff > 1e-4
    assert "FAIL" in caught.value.report.table()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too
    with pytest.raises(ModelError):
        OnnxEcapaEncoder(out)


def test_a_failed_export_leaves_an_existing_artifact_as_it_was(
    tiny_dir: Path, tiny_export: tuple[Path, ParityReport], tmp_path: Path
) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ParityError):
        export(tiny_dir, out, _tamper=_skip_mean_norm)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_prints_the_parity_table(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_onnx.main([str(tiny_dir), str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "max |diff|" in out and "PASS" in out and len(out.splitlines()) == 2 + 12 + 2
    assert ("CPU graph for x86_64 with" in out) == (cpu_graph.made_for() is not None)
    assert export_onnx.main([str(tiny_dir), str(tmp_path / "portable"), "--no-cpu-graph"]) == 0
    assert "no CPU graph: not asked for" in capsys.readouterr().out
    assert "cpu_graph" not in json.loads((tmp_path / "portable" / MANIFEST).read_text())
    assert not list((tmp_path / "portable").glob("*.cpu.*"))
    assert OnnxEcapaEncoder(tmp_path / "cli").model_id == model_identity(tiny_dir)


# ------------------------------------------------------------------------------------------------- artifact checks


@pytest.mark.parametrize(
    "name", ["ecapa-tdnn.onnx", "ecapa-tdnn.weights", "ecapa-tdnn.cpu.onnx", "ecapa-tdnn.cpu.weights"]
)
def test_tampered_file_is_refused_naming_the_file(
    tiny_export: tuple[Path, ParityReport], tmp_path: Path, name: str
) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    if ".cpu." in name:
        needs_cpu_graph()
    data = bytearray((out / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / name).write_bytes(bytes(data))
    # the files of the graph that serves are checked, as its session is made (construction reads the manifest only);
    # the portable graph's serve where the CPU graph is not used, and are checked then
    encoder = OnnxEcapaEncoder(out, use_cpu_graph=".cpu." in name)
    with pytest.raises(ModelError, match=rf"{re.escape(name)}.*SHA-256"):
        encoder.embed(noise(16_000), 16_000)
    assert encoder._serving is None  # nothing was served from the tampered files


@pytest.mark.parametrize(
    "name", ["ecapa-tdnn.onnx", "ecapa-tdnn.weights", "ecapa-tdnn.cpu.onnx", "ecapa-tdnn.cpu.weights"]
)
def test_missing_file_is_named(tiny_export: tuple[Path, ParityReport], tmp_path: Path, name: str) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    if ".cpu." in name:
        needs_cpu_graph()
    (out / name).unlink()
    with pytest.raises(ModelError, match=re.escape(name)):
        OnnxEcapaEncoder(out)


def test_a_format_1_artifact_asks_to_be_exported_again(tiny_export: tuple[Path, ParityReport], tmp_path: Path) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ModelError, match="format is 1, expected 2"):
        OnnxEcapaEncoder(out)


def test_missing_manifest_or_directory_is_a_model_error(tiny_export: tuple[Path, ParityReport], tmp_path: Path) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    (out / MANIFEST).unlink()
    with pytest.raises(ModelError, match="manifest.json"):
        OnnxEcapaEncoder(out)
    with pytest.raises(ModelError, match="does not exist"):
        OnnxEcapaEncoder(tmp_path / "nowhere")


ONNX_FIELDS = {
    "file": "ecapa-tdnn.onnx",
    "sha256": "0",
    "weights": "ecapa-tdnn.weights",
    "weights_sha256": "0",
    "input": "wav",
    "output": "embedding",
}

CPU_FIELDS = {
    "file": "ecapa-tdnn.cpu.onnx",
    "sha256": "0",
    "weights": "ecapa-tdnn.cpu.weights",
    "weights_sha256": "0",
    "made_for": {"machine": "x86_64", "features": ["avx"], "onnxruntime": "1"},
    "check": [0.0] * 192,
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"format": 3}, "format"),
        ({"encoder": "x-vector"}, "encoder"),
        ({"dim": 256}, "dim"),
        ({"model_id": ""}, "model_id"),
        ({"onnx": {**ONNX_FIELDS, "file": "../ecapa-tdnn.onnx"}}, "onnx.file"),
        ({"onnx": {**ONNX_FIELDS, "weights": "/etc/passwd"}}, "onnx.weights"),
        ({"onnx": {**ONNX_FIELDS, "weights": ".."}}, "onnx.weights"),
        ({"onnx": {k: v for k, v in ONNX_FIELDS.items() if k != "weights_sha256"}}, "weights_sha256"),
        ({"cpu_graph": {**CPU_FIELDS, "file": "../x.onnx"}}, "cpu_graph.file"),
        ({"cpu_graph": {**CPU_FIELDS, "weights": "ecapa-tdnn.weights"}}, "cpu_graph.weights"),
        ({"cpu_graph": {**CPU_FIELDS, "check": [0.0] * 191}}, "cpu_graph needs"),
        ({"cpu_graph": {**CPU_FIELDS, "made_for": "x86_64"}}, "cpu_graph needs"),
        ({"cpu_graph": {k: v for k, v in CPU_FIELDS.items() if k != "sha256"}}, "cpu_graph must name"),
    ],
    ids=[
        "format",
        "encoder",
        "dim",
        "model_id",
        "path",
        "weights-path",
        "weights-parent",
        "weights-hash",
        "cpu-path",
        "cpu-weights-shared",
        "cpu-check",
        "cpu-made-for",
        "cpu-hash",
    ],
)
def test_a_manifest_for_something_else_is_refused(
    tiny_export: tuple[Path, ParityReport], tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ModelError, match=named):
        OnnxEcapaEncoder(out)


def test_garbage_manifest_is_a_model_error(tiny_export: tuple[Path, ParityReport], tmp_path: Path) -> None:
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="manifest.json"):
        OnnxEcapaEncoder(out)


def test_loading_logs_the_model_and_honours_threads(
    tiny_export: tuple[Path, ParityReport], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lockwise.voice.model.onnx_ecapa"):
        encoder = OnnxEcapaEncoder(tiny_export[0], threads=2)
        assert encoder._serving is None  # construction makes no session (no thread pool): safe to fork
        encoder.prepare()
    (checked,) = [r for r in caplog.records if r.getMessage() == "ecapa onnx model found"]
    (ready,) = [r for r in caplog.records if r.getMessage() == "ecapa onnx session ready"]
    fields = checked.fields  # type: ignore[attr-defined]
    assert fields["model_id"] == encoder.model_id and fields["threads"] == 2
    assert ready.fields["threads"] == 2  # type: ignore[attr-defined]
    assert encoder._serving_session().get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError):
        OnnxEcapaEncoder(tiny_export[0], threads=0)


# ------------------------------------------------------------------------------------------------- the CPU graph


def test_the_cpu_graph_serves_here_and_embeds_as_the_portable_one(
    full_export: tuple[Path, ParityReport], caplog: pytest.LogCaptureFixture
) -> None:
    needs_cpu_graph()
    cpu, portable = OnnxEcapaEncoder(full_export[0]), OnnxEcapaEncoder(full_export[0], use_cpu_graph=False)
    assert (cpu.graph, portable.graph) == ("cpu", "portable")
    with caplog.at_level(logging.INFO, logger="lockwise.voice.model.onnx_ecapa"):
        cpu.prepare()
    (ready,) = [r for r in caplog.records if r.getMessage() == "ecapa onnx session ready"]
    assert ready.fields["graph"] == "cpu" and cpu.graph == "cpu"  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for i, seconds in enumerate((1.0, 3.0, 7.0)):
        clip = speech_like_clip(44_100, seconds, seed=700 + i)
        assert float(np.abs(cpu.embed(clip, 44_100) - portable.embed(clip, 44_100)).max()) <= 1e-5


def test_a_cpu_graph_made_for_another_kind_of_cpu_is_passed_over(
    tiny_export: tuple[Path, ParityReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_cpu_graph()
    here = cpu_graph.made_for()
    assert here is not None
    others = [
        {**here, "features": [f for f in here["features"] if f != "avx512f"] or ["avx"]},
        {**here, "features": sorted({*here["features"], "avx512f"} - {"avx2"})},
        {**here, "onnxruntime": "0.0.1"},
    ]
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    want = OnnxEcapaEncoder(out, use_cpu_graph=False).embed(noise(16_000), 16_000)
    (out / "ecapa-tdnn.cpu.weights").unlink()  # not needed by a machine it was not made for
    for other in [o for o in others if o != here]:
        monkeypatch.setattr(cpu_graph, "made_for", lambda other=other: other)
        encoder = OnnxEcapaEncoder(out)
        assert encoder.graph == "portable"
        assert np.array_equal(encoder.embed(noise(16_000), 16_000), want)
    monkeypatch.setattr(cpu_graph, "made_for", lambda: None)  # a machine that makes no CPU graph at all
    assert OnnxEcapaEncoder(out).graph == "portable"


def test_a_cpu_graph_that_misses_its_check_is_passed_over_loudly(
    tiny_export: tuple[Path, ParityReport], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Made for this kind of CPU, but not computing the build's numbers here (a CPU whose kernels differ in a way
    ``made_for`` does not see): the portable graph serves, and the log says why."""
    needs_cpu_graph()
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    manifest = json.loads((out / MANIFEST).read_text())
    check = list(manifest["cpu_graph"]["check"])
    check[7] += 1e-3
    (out / MANIFEST).write_text(json.dumps({**manifest, "cpu_graph": {**manifest["cpu_graph"], "check": check}}))
    encoder = OnnxEcapaEncoder(out)
    assert encoder.graph == "cpu"
    with caplog.at_level(logging.INFO, logger="lockwise.voice.model.onnx_ecapa"):
        encoder.prepare()
    assert encoder.graph == "portable"
    (passed_over,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cpu graph not used here" in passed_over.getMessage()
    assert "check clip" in passed_over.fields["error"]  # type: ignore[attr-defined]
    want = OnnxEcapaEncoder(out, use_cpu_graph=False).embed(noise(16_000), 16_000)
    assert np.array_equal(encoder.embed(noise(16_000), 16_000), want)


def test_threads_that_embed_at_once_on_a_fresh_encoder_make_one_session(
    tiny_export: tuple[Path, ParityReport], caplog: pytest.LogCaptureFixture
) -> None:
    encoder = OnnxEcapaEncoder(tiny_export[0])
    clip = noise(16_000)
    with caplog.at_level(logging.INFO, logger="lockwise.voice.model.onnx_ecapa"):
        with ThreadPoolExecutor(max_workers=4) as pool:
            embeddings = list(pool.map(lambda _: encoder.embed(clip, 16_000), range(4)))
    assert len([r for r in caplog.records if r.getMessage() == "ecapa onnx session ready"]) == 1
    assert all(np.array_equal(e, embeddings[0]) for e in embeddings)


def test_made_for_names_what_chooses_onnxruntimes_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni amx_tile\n\n"
        "processor\t: 1\nflags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni amx_tile\n"
    )
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert cpu_graph.made_for(info) == {
        "machine": "x86_64",
        "features": ["avx", "avx2", "avx512f", "fma"],
        "onnxruntime": onnxruntime.__version__,
    }
    info.write_text(  # the virtualisation line below it names no instruction set
        "processor\t: 0\nflags\t\t: fpu sse avx fma avx2\nvmx flags\t: vnmi preemption_timer avx512f\n"
    )
    assert cpu_graph.made_for(info)["features"] == ["avx", "avx2", "fma"]  # type: ignore[index]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 sse4_2\n")
    assert cpu_graph.made_for(info) is None  # no AVX: onnxruntime has no blocked-layout kernels there
    info.write_text("processor\t: 0\nmodel name\t: a CPU that lists no flags\n")
    assert cpu_graph.made_for(info) is None
    assert cpu_graph.made_for(tmp_path / "missing") is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_graph.made_for(info) is None


# ------------------------------------------------------------------------------------------------- the lean graph


def test_whole_clip_pooling_computes_what_speechbrains_does(full_pair: tuple[EcapaEncoder, OnnxEcapaEncoder]) -> None:
    asp = copy.deepcopy(full_pair[0]._model.mods.embedding_model.asp).eval()
    lean = WholeClipAttentivePooling(copy.deepcopy(asp)).eval()
    channels = asp.tdnn.conv.conv.in_channels // 3
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for frames in (1, 4, 51, 301, 1001):
            x = torch.randn(2, channels, frames, generator=generator) * 3
            want, got = asp(x), lean(x)
            assert got.shape == want.shape == (2, 2 * channels, 1)
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), frames
        with pytest.raises(ModelError, match="whole clips"):
            lean(x, lengths=torch.ones(2))


def test_the_exported_graph_has_no_tiles_and_pads_only_wide_kernels(tiny_export: tuple[Path, ParityReport]) -> None:
    # what the lean copy of the model leaves out; parity (above) shows it computes the same
    graph = onnx.load(str(tiny_export[0] / "ecapa-tdnn.onnx"), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}

    def conv_input(conv: onnx.NodeProto) -> onnx.NodeProto | None:  # what feeds it, through its Unsqueeze to 2-D
        node = made_by.get(conv.input[0])
        return made_by.get(node.input[0]) if node is not None and node.op_type == "Unsqueeze" else node

    assert not [n.name for n in graph.node if n.op_type in ("Tile", "Where")]
    one_wide = [n for n in graph.node if n.op_type == "Conv" and _kernel_shape(n) == [1, 1]]
    assert len(one_wide) >= 10  # the Res2Net blocks' TDNNs, SE, MFA, the pooling's attention, the last layer
    assert not [n.name for n in one_wide if (fed := conv_input(n)) is not None and fed.op_type == "Pad"]
    assert [n for n in graph.node if n.op_type == "Pad"]  # wider kernels still pad (reflect), as SpeechBrain does


def test_every_convolution_of_the_exported_graph_is_two_dimensional(tiny_export: tuple[Path, ParityReport]) -> None:
    # onnxruntime's blocked-layout (NCHWc) CPU kernels take 2-D convolutions only
    graph = onnx.load(str(tiny_export[0] / "ecapa-tdnn.onnx"), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) >= 20
    assert [n.name for n in convs if len(_kernel_shape(n)) != 2 or _kernel_shape(n)[0] != 1] == []


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups", "bias"),
    [(1, 0, 1, 1, True), (1, 2, 2, 1, True), (160, 0, 1, 1, False), (2, 1, 3, 4, True), (1, 0, 1, 8, False)],
)
def test_a_1d_convolution_as_2d_computes_what_torch_does(
    stride: int, padding: int, dilation: int, groups: int, bias: bool
) -> None:
    generator = torch.Generator().manual_seed(stride + padding + dilation + groups)
    conv = torch.nn.Conv1d(16, 24, 5, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    as_2d = Conv1dAs2d(conv)
    with torch.inference_mode():
        for frames in (stride * 5 + 16, 301):
            x = torch.randn(2, 16, frames, generator=generator)
            want, got = conv(x), as_2d(x)
            assert got.shape == want.shape
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    with pytest.raises(ModelError, match="cannot be rewritten"):
        Conv1dAs2d(torch.nn.Conv1d(16, 24, 5, padding="same"))
    with pytest.raises(ModelError, match="cannot be rewritten"):
        Conv1dAs2d(torch.nn.Conv1d(16, 24, 5, padding=2, padding_mode="reflect"))


def _kernel_shape(node: onnx.NodeProto) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "kernel_shape"][0]


# ------------------------------------------------------------------------------------------------- audio checks


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (np.zeros((2, 16_000), dtype=np.float32), 16_000),  # not mono
        (np.zeros(16_000, dtype=np.int16), 16_000),  # PCM integers, not [-1, 1] floats
        (np.full(16_000, np.nan, dtype=np.float32), 16_000),
        (np.full(16_000, np.inf, dtype=np.float32), 44_100),
        (np.zeros(639, dtype=np.float32), 16_000),  # under 40 ms
        (np.zeros(1_700, dtype=np.float32), 44_100),  # 617 samples once at 16 kHz
        (np.zeros(16_000, dtype=np.float32), 0),
        (np.zeros(16_000, dtype=np.float32), True),
    ],
    ids=["stereo", "int16", "nan", "inf", "too-short", "too-short-after-resampling", "rate-0", "rate-bool"],
)
def test_embed_rejects_unusable_audio_as_speechbrain_does(
    tiny_pair: tuple[EcapaEncoder, OnnxEcapaEncoder], samples: npt.NDArray[Any], rate: int
) -> None:
    reference, served = tiny_pair
    with pytest.raises(InvalidAudio) as want:
        reference.embed(samples, rate)
    with pytest.raises(InvalidAudio) as got:
        served.embed(samples, rate)
    assert str(got.value) == str(want.value)


def test_embed_16k_rejects_short_audio(served: OnnxEcapaEncoder) -> None:
    with pytest.raises(InvalidAudio, match="too short"):
        served.embed_16k(np.zeros(639, dtype=np.float32))
    assert served.embed_16k(noise(640)).shape == (192,)


# ------------------------------------------------------------------------------------------------- no torch


def test_serving_imports_neither_torch_nor_speechbrain(
    tiny_export: tuple[Path, ParityReport], tiny_pair: tuple[EcapaEncoder, OnnxEcapaEncoder]
) -> None:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder\n"
        f"encoder = OnnxEcapaEncoder(Path({str(tiny_export[0])!r}))\n"
        "clip = (np.random.RandomState(3).standard_normal(44_100) * 0.3).astype(np.float32)\n"
        "embedding = encoder.embed(clip, 44_100)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchaudio', 'speechbrain'})\n"
        "print(json.dumps({'heavy': heavy, 'embedding': embedding.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=services.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    in_process = tiny_pair[1].embed(noise(44_100, seed=3), 44_100)
    assert np.array_equal(np.asarray(report["embedding"], dtype=np.float32), in_process)


FORK_PROBE = """
import json, os, sys
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder
def blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
threadpool_limits(4, user_api="blas")  # a BLAS that would spread its products over threads, on any machine
before = blas_threads()
enc = OnnxEcapaEncoder(sys.argv[1])
clip = (np.random.RandomState(5).standard_normal(44100 * 2) * 0.3).astype(np.float32)
assert enc._serving is None  # instance start made no thread pool: safe to fork
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # what a gunicorn worker is: the serving session is made as the child starts
    os.close(read)
    made_at_fork = enc._serving_pid == os.getpid()
    os.write(write, json.dumps([made_at_fork, enc.embed(clip, 44100).tolist(), blas_threads()]).encode())
    os._exit(0)
os.close(write)
data = b""
while chunk := os.read(read, 65536):
    data += chunk
os.waitpid(pid, 0)
made_at_fork, child, child_blas = json.loads(data)
diff = float(np.abs(enc.embed(clip, 44100) - child).max())
print(json.dumps({"made_at_fork": made_at_fork, "diff": diff, "blas": [before, blas_threads(), child_blas]}))
"""


def test_a_forked_worker_gets_its_own_serving_session(tiny_export: tuple[Path, ParityReport]) -> None:
    """functions-framework's gunicorn loads the model in its master and forks the worker: the worker must serve
    from a session made after the fork (onnxruntime's thread pool does not survive one) and embed the same."""
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", FORK_PROBE, str(tiny_export[0])], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["made_at_fork"] is True and result["diff"] < 1e-6
    # numpy's BLAS (resampling) on one thread in the master and the worker: its pool spinning beside onnxruntime's
    # would slow the forward pass (lockwise.voice.model.blas)
    assert result["blas"] == [[4], [1], [1]]


BOOT_PROBE = """
import os, sys
from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder
enc = OnnxEcapaEncoder(sys.argv[1])  # the files are intact: construction passes
pid = os.fork()
if pid == 0:
    os._exit(0)  # not reached: the worker's session fails to load and the worker exits first
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_graph_that_does_not_load_stops_the_worker_as_it_boots(
    tiny_export: tuple[Path, ParityReport], tmp_path: Path
) -> None:
    """A manifest naming an output the graph lacks: nothing is wrong with the files, so construction passes, but
    the session cannot serve. ``prepare()`` says so, and a forked worker exits with gunicorn's "failed to boot"
    status (its master then stops the instance instead of serving errors)."""
    out = copy_artifact(tiny_export[0], tmp_path / "artifact")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "onnx": {**manifest["onnx"], "output": "logits"}}))
    encoder = OnnxEcapaEncoder(out)
    with pytest.raises(ModelError, match="'logits'"):
        encoder.prepare()
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", BOOT_PROBE, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3"
    assert "failed to load in the worker" in done.stderr
