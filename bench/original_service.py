"""The original design's speaker service, rebuilt from its documented code for the benchmarks to measure beside ours.

Source: ``../shared/seed/000_c73c9f5f0a8ae91a.txt`` ("Serviço FastAPI (SpeechBrain)"): a FastAPI app that loads
``SpeakerRecognition`` once at import, resamples 44.1 kHz PCM16 to 16 kHz with torchaudio, embeds with
``encode_batch`` under ``no_grad``, and scores each base64 candidate in a Python loop, printing its DEBUG lines.

Kept as documented: the request/response models, the order of work, the per-candidate loop and its prints (stdout
goes to /dev/null in the benchmarks, as a container's would to its log driver). Changed, only so it runs here:
``MODEL_SOURCE`` is the model directory the benchmark names (``ORIGINAL_MODEL_DIR``; the Hub is unreachable) with
SpeechBrain's ``pretrained_path`` pointed at it and network fetching off, and the ``DEBUG_PLAY_AUDIO`` mpv branch is
left out (off in the original unless that variable is set), and ``cosine_similarity`` converts its one-element
result as the original's numpy 1.x did (numpy 2 refuses ``float()`` of a 1-element array). The documented ``/embed``
reads ``req.pcm_bytes``, a field its model does not have, so it answers 400 to every call; kept as written (the
benchmarks call ``/verify``).

Run: ``ORIGINAL_MODEL_DIR=DIR python -m uvicorn bench.original_service:app --port N`` (what ``bench.goals`` does).
"""

# ruff: noqa: T201  - the original prints its DEBUG lines; they are part of the cost being measured
from __future__ import annotations

import base64
import os
import tempfile

import numpy as np
import torch
import torchaudio  # type: ignore[import-untyped]
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from speechbrain.inference.speaker import SpeakerRecognition  # type: ignore[import-untyped]
from speechbrain.utils.fetching import FetchConfig, LocalStrategy  # type: ignore[import-untyped]

MODEL_SOURCE = os.environ["ORIGINAL_MODEL_DIR"]
MODEL_DIR = tempfile.mkdtemp(prefix="original-spkrec-")

EXPECTED_SR = 44100
MODEL_SR = 16000
MIN_SECONDS = 2.0

try:
    print("DEBUG: Loading SpeechBrain model")
    spkrec = SpeakerRecognition.from_hparams(
        source=MODEL_SOURCE,
        savedir=MODEL_DIR,
        run_opts={"device": "cpu"},
        local_strategy=LocalStrategy.NO_LINK,
        overrides={"pretrained_path": MODEL_SOURCE},
        fetch_config=FetchConfig(allow_network=False),
    )
    print("DEBUG: SpeechBrain model loaded successfully")
except Exception as e:  # noqa: BLE001 - as documented
    print(f"DEBUG: Failed to load SpeechBrain model: {e}")
    raise SystemExit(1) from e

resampler = torchaudio.transforms.Resample(orig_freq=EXPECTED_SR, new_freq=MODEL_SR)


def pcm16_to_waveform(pcm_bytes: bytes) -> torch.Tensor:
    samples = np.frombuffer(pcm_bytes, dtype=np.int16)
    if samples.size == 0:
        raise ValueError("Empty audio buffer")
    waveform = samples.astype(np.float32) / 32768.0
    return torch.from_numpy(waveform).unsqueeze(0)


def extract_embedding(pcm_bytes: bytes) -> np.ndarray:
    waveform = pcm16_to_waveform(pcm_bytes)
    if EXPECTED_SR != MODEL_SR:
        waveform = resampler(waveform)
    min_samples = int(MIN_SECONDS * MODEL_SR)
    if waveform.shape[1] < min_samples:
        raise ValueError("Audio too short")
    with torch.no_grad():
        emb = spkrec.encode_batch(waveform)
    emb = emb.squeeze(0).cpu().numpy()
    emb /= np.linalg.norm(emb)
    out: np.ndarray = emb.astype(np.float32)
    return out


def serialize_embedding(emb: np.ndarray) -> str:
    return base64.b64encode(emb.tobytes()).decode("ascii")


def deserialize_embedding(data: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data)
        print(f"DEBUG: Decoded {len(raw)} bytes from base64")
        emb = np.frombuffer(raw, dtype=np.float32).copy()
        print(f"DEBUG: Created array with shape {emb.shape}")
        norm = np.linalg.norm(emb)
        print(f"DEBUG: Norm is {norm}")
        if norm > 0:
            emb /= norm
        else:
            print("DEBUG: Warning - norm is zero or negative")
        return emb
    except Exception as e:
        print(f"DEBUG: Error in deserialize_embedding: {e}")
        raise


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    # documented: float(np.dot(a, b)); the embedding is (1, 192), so the dot is a 1-element array, which numpy 1.x
    # (the original's) converted with a DeprecationWarning and numpy 2 refuses: .item() is numpy 1.x's conversion
    return float(np.dot(a, b).item())


class EmbedRequest(BaseModel):
    pcm_base64: str


class EmbedResponse(BaseModel):
    embedding: str


class VerifyRequest(BaseModel):
    pcm_base64: str
    candidates: list[str]


class VerifyResponse(BaseModel):
    best_index: int
    score: float


app = FastAPI()


@app.post("/embed", response_model=EmbedResponse)
def embed(req: EmbedRequest) -> EmbedResponse:
    try:
        pcm = base64.b64decode(req.pcm_bytes)  # type: ignore[attr-defined]  # as documented (a bug: 400 always)
        emb = extract_embedding(pcm)
        return EmbedResponse(embedding=serialize_embedding(emb))
    except Exception as e:
        raise HTTPException(status_code=400, detail=str(e)) from e


@app.post("/verify", response_model=VerifyResponse)
def verify(req: VerifyRequest) -> VerifyResponse:
    try:
        print(f"DEBUG: Verify request with {len(req.candidates)} candidates")
        pcm = base64.b64decode(req.pcm_base64)
        print(f"DEBUG: Decoded {len(pcm)} bytes of audio data")
        test_emb = extract_embedding(pcm)
        print(f"DEBUG: Extracted test embedding with shape {test_emb.shape}")
        best_score = -1.0
        best_idx = -1
        for i, cand in enumerate(req.candidates):
            print(f"DEBUG: Processing candidate {i}")
            emb = deserialize_embedding(cand)
            print(f"DEBUG: Deserialized candidate embedding with shape {emb.shape}")
            score = cosine_similarity(test_emb, emb)
            print(f"DEBUG: Cosine similarity score: {score}")
            if score > best_score:
                best_score = score
                best_idx = i
        print(f"DEBUG: Best score: {best_score}, best index: {best_idx}")
        return VerifyResponse(best_index=best_idx, score=best_score)
    except Exception as e:
        print(f"DEBUG: Error in verify: {e}")
        raise HTTPException(status_code=400, detail=str(e)) from e
