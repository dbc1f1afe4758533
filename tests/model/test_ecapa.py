"""The ECAPA encoder loads a Hub-shaped model directory offline and turns clips into unit 192-dim embeddings.

The models are random (``infra.model.random_ecapa``): they score every pair of clips above 0.98, so these tests check
plumbing (loading, shapes, resampling, determinism, errors, no network), never that speakers are told apart.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from infra.model.cache import random_model
from infra.model.random_ecapa import HUB_ID, build_model_dir
from lockwise.core.errors import InvalidAudio
from lockwise.voice.model.ecapa import EcapaEncoder, model_identity
from lockwise.voice.model.model_files import ModelError


def harmonic_clip(rate: int, seconds: float = 3.0, seed: int = 0) -> npt.NDArray[np.float32]:
    """A voiced-sounding test signal computed analytically at ``rate``: shape (rate * seconds,), float32, peak 0.3.

    Harmonics of a wobbling 90-220 Hz fundamental up to 7 kHz (below 8 kHz, so a 16 kHz rendering holds it all) under
    a 2.5 Hz syllable-like envelope. The same seed at two rates gives the same sound.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = rng.uniform(90, 220)
    signal = np.zeros_like(t)
    for k in range(1, 30):
        if f0 * k > 7000:
            break
        phase = 2 * np.pi * f0 * k * t * (1 + 0.02 * np.sin(2 * np.pi * 3 * t)) + rng.uniform(0, 2 * np.pi)
        signal += rng.uniform(0.2, 1.0) / k * np.sin(phase)
    signal *= 0.5 * (1 + np.sin(2 * np.pi * 2.5 * t))
    clip: npt.NDArray[np.float32] = (0.3 * signal / np.abs(signal).max()).astype(np.float32)
    return clip


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return random_model("tiny", 0, exported=False)  # built once per machine


@pytest.fixture(scope="module")
def full_dir() -> Path:
    return random_model("full", 0, exported=False)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> EcapaEncoder:
    return EcapaEncoder(tiny_dir)


@pytest.fixture(scope="module")
def full(full_dir: Path) -> EcapaEncoder:
    return EcapaEncoder(full_dir)


@pytest.fixture(params=["tiny", "full"])
def encoder(request: pytest.FixtureRequest) -> EcapaEncoder:
    enc: EcapaEncoder = request.getfixturevalue(request.param)
    return enc


# ------------------------------------------------------------------------------------------------- model directory


def test_model_dir_has_the_hub_layout_and_keeps_the_hub_id(tiny_dir: Path, full_dir: Path) -> None:
    expected = {"hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt"}
    for model_dir in (tiny_dir, full_dir):
        assert {p.name for p in model_dir.iterdir()} == expected | {"label_encoder.txt"}
        text = (model_dir / "hyperparams.yaml").read_text()
        assert f"pretrained_path: {HUB_ID}\n" in text  # the trap the loader must override
        assert "embedding_model: !ref <pretrained_path>/embedding_model.ckpt" in text
    assert "channels: [1024, 1024, 1024, 1024, 3072]" in (full_dir / "hyperparams.yaml").read_text()
    state = torch.load(full_dir / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    assert sum(t.numel() for k, t in state.items() if not k.endswith("num_batches_tracked")) > 20_000_000
    assert tuple(state["fc.conv.weight"].shape) == (192, 6144, 1)
    stats = torch.load(full_dir / "mean_var_norm_emb.ckpt", map_location="cpu", weights_only=True)
    assert stats["count"] > 0 and tuple(stats["glob_mean"].shape) == (192,)
    assert (full_dir / "label_encoder.txt").read_text().count(" => ") == 7205 + 1  # labels + starting_index


def test_same_seed_writes_the_same_bytes(tmp_path: Path, tiny_dir: Path) -> None:
    again = build_model_dir(tmp_path / "again", size="tiny", seed=0)
    for path in tiny_dir.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


# ------------------------------------------------------------------------------------------------- embeddings


def test_embedding_is_unit_float32_of_dim_192(encoder: EcapaEncoder) -> None:
    embedding = encoder.embed(harmonic_clip(16_000), 16_000)
    assert embedding.shape == (192,) and embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-5
    assert (encoder.name, encoder.dim, encoder.sample_rate) == ("ecapa-tdnn", 192, 16_000)


def test_embedding_is_deterministic(encoder: EcapaEncoder) -> None:
    clip = harmonic_clip(16_000, seed=3)
    first = encoder.embed(clip, 16_000)
    assert np.array_equal(first, encoder.embed(clip.copy(), 16_000))
    assert np.array_equal(first, encoder.embed_16k(clip))


def test_44k1_clip_embeds_like_the_same_sound_at_16k(encoder: EcapaEncoder) -> None:
    # Measured: cosine distance ~3e-5 and max |difference| ~2e-3 for both sizes; the bounds leave ~30x room.
    at_44k1 = encoder.embed(harmonic_clip(44_100), 44_100)
    at_16k = encoder.embed(harmonic_clip(16_000), 16_000)
    assert 1.0 - float(at_44k1 @ at_16k) < 1e-3
    assert float(np.abs(at_44k1 - at_16k).max()) < 2e-2


def test_float64_input_gives_the_float32_result(tiny: EcapaEncoder) -> None:
    clip = harmonic_clip(16_000, seed=4)
    assert np.allclose(tiny.embed(clip.astype(np.float64), 16_000), tiny.embed(clip, 16_000), atol=1e-6)


@pytest.mark.parametrize(
    "samples",
    [
        np.zeros((2, 16_000), dtype=np.float32),  # not mono
        np.zeros(16_000, dtype=np.int16),  # PCM integers, not [-1, 1] floats
        np.full(16_000, np.nan, dtype=np.float32),
        np.zeros(639, dtype=np.float32),  # under 40 ms
    ],
    ids=["stereo", "int16", "nan", "too-short"],
)
def test_embed_rejects_unusable_audio(tiny: EcapaEncoder, samples: npt.NDArray[Any]) -> None:
    with pytest.raises(InvalidAudio):
        tiny.embed(samples, 16_000)


def test_embed_rejects_a_bad_sample_rate(tiny: EcapaEncoder) -> None:
    with pytest.raises(InvalidAudio):
        tiny.embed(harmonic_clip(16_000), 0)


# ------------------------------------------------------------------------------------------------- identity


def test_model_id_is_stable_across_loads_and_names_the_weights(tmp_path: Path, tiny_dir: Path) -> None:
    first, second = EcapaEncoder(tiny_dir), EcapaEncoder(tiny_dir)
    assert first.model_id == second.model_id == model_identity(tiny_dir)
    assert first.model_id.startswith("ecapa-") and len(first.model_id) == len("ecapa-") + 16
    other = build_model_dir(tmp_path / "seed1", size="tiny", seed=1)
    assert EcapaEncoder(other).model_id != first.model_id


# ------------------------------------------------------------------------------------------------- start-up errors


def test_missing_directory_is_a_model_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match="nowhere"):
        EcapaEncoder(missing)


def test_missing_embedding_checkpoint_is_named(tmp_path: Path, tiny_dir: Path) -> None:
    broken = build_model_dir(tmp_path / "m", size="tiny")
    (broken / "embedding_model.ckpt").unlink()
    with pytest.raises(ModelError, match=r"embedding_model\.ckpt is missing") as caught:
        EcapaEncoder(broken)
    assert str(broken) in str(caught.value)


@pytest.mark.parametrize("filename", ["embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt"])
def test_corrupt_checkpoint_is_named(tmp_path: Path, filename: str) -> None:
    broken = build_model_dir(tmp_path / "m", size="tiny")
    (broken / filename).write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(ModelError, match=rf"{filename.replace('.', '[.]')} is not a readable checkpoint") as caught:
        EcapaEncoder(broken)
    assert str(broken) in str(caught.value) and caught.value.__cause__ is not None


def test_checkpoint_missing_layers_is_refused(tmp_path: Path) -> None:
    # SpeechBrain's own transfer is non-strict and would leave the dropped layer randomly initialised.
    broken = build_model_dir(tmp_path / "m", size="tiny")
    state = torch.load(broken / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    del state["fc.conv.weight"]
    torch.save(state, broken / "embedding_model.ckpt")
    with pytest.raises(ModelError, match=r"embedding_model\.ckpt does not match.*fc\.conv\.weight"):
        EcapaEncoder(broken)


def test_checkpoint_of_another_size_is_refused(tmp_path: Path, full_dir: Path) -> None:
    mixed = build_model_dir(tmp_path / "m", size="tiny")
    (mixed / "embedding_model.ckpt").write_bytes((full_dir / "embedding_model.ckpt").read_bytes())
    with pytest.raises(ModelError, match=r"(?s)hyperparams\.yaml with its checkpoints failed .*size mismatch"):
        EcapaEncoder(mixed)


# ------------------------------------------------------------------------------------------------- offline loading


def test_loading_is_offline_with_a_fresh_savedir_each_time(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    from speechbrain.inference import interfaces  # type: ignore[import-untyped]
    from speechbrain.inference.speaker import EncoderClassifier  # type: ignore[import-untyped]
    from speechbrain.utils import parameter_transfer  # type: ignore[import-untyped]

    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"network connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    calls: list[dict[str, Any]] = []
    original = EncoderClassifier.from_hparams

    def spy_from_hparams(cls: type, *args: Any, **kwargs: Any) -> Any:
        savedir = Path(kwargs["savedir"])
        calls.append({**kwargs, "savedir_was_empty": savedir.is_dir() and not any(savedir.iterdir())})
        return original(*args, **kwargs)

    monkeypatch.setattr(EncoderClassifier, "from_hparams", classmethod(spy_from_hparams))

    fetched: list[str] = []
    for module in (interfaces, parameter_transfer):
        real_fetch = module.fetch

        def spy_fetch(*args: Any, _real: Any = real_fetch, **kwargs: Any) -> Any:
            fetched.append(f"{kwargs.get('source')}/{kwargs.get('filename')}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "fetch", spy_fetch)

    first, second = EcapaEncoder(tiny_dir), EcapaEncoder(tiny_dir)

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert len(calls) == 2 and all(call["savedir_was_empty"] for call in calls)
    assert calls[0]["savedir"] != calls[1]["savedir"]
    assert not any(Path(call["savedir"]).exists() for call in calls), "the temporary savedir was left behind"
    assert all(call["overrides"] == {"pretrained_path": str(tiny_dir)} for call in calls)
    assert len(fetched) == 2 * 5  # hyperparams.yaml and the Pretrainer's four files, per load
    assert all(path.startswith(f"{tiny_dir}/") for path in fetched), fetched
    assert not any(HUB_ID in path for path in fetched)
    assert np.array_equal(first.embed_16k(harmonic_clip(16_000)), second.embed_16k(harmonic_clip(16_000)))


def test_threads_argument_sets_torch_threads(tiny_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        EcapaEncoder(tiny_dir, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
