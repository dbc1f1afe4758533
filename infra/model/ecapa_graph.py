"""SpeechBrain's ECAPA-TDNN front end and model as one exportable torch graph: wav (batch, samples) at 16 kHz ->
raw embedding (batch, 192), what ``EncoderClassifier.encode_batch`` computes, in operators ONNX can hold.

``torch.stft`` (complex-valued) does not export, so ``Fbank`` is re-implemented with the numbers read from the loaded
modules: the STFT as a real 1-D convolution with the window-weighted cosine and sine DFT kernels (stride = hop), then
the power spectrum, the mel matrix, and ``amplitude_to_DB`` with its per-utterance top_db clamp. Sentence mean
normalisation and a copy of ``ECAPA_TDNN`` follow. Used by :mod:`infra.model.export_onnx`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lockwise.voice.model.model_files import ModelError


class DftPowerSpectrum(nn.Module):
    """``torch.stft`` power as a real convolution: wav (batch, samples) -> power (batch, frames, n_fft // 2 + 1).

    ``frames = 1 + samples // hop`` with ``center`` (the signal padded by ``n_fft // 2`` on each side, ``pad_mode``).
    The kernel (2 * bins, 1, n_fft) holds ``window * cos`` then ``window * -sin`` of each bin, computed in float64.
    """

    kernel: torch.Tensor

    def __init__(self, stft: Any) -> None:  # speechbrain.processing.features.STFT
        super().__init__()
        if stft.normalized_stft or not stft.onesided:
            raise ModelError("only an unnormalised, one-sided STFT can be exported")
        self.n_fft, self.hop, self.center, self.pad_mode = (
            int(stft.n_fft),
            int(stft.hop_length),
            bool(stft.center),
            str(stft.pad_mode),
        )
        window = stft.window.detach().to(torch.float64).cpu()
        left = (self.n_fft - window.shape[0]) // 2  # torch.stft centres a shorter window in n_fft
        window = F.pad(window, (left, self.n_fft - window.shape[0] - left))
        bins = self.n_fft // 2 + 1
        n = torch.arange(self.n_fft, dtype=torch.int64)
        k = torch.arange(bins, dtype=torch.int64)[:, None]
        angle = 2 * math.pi * ((k * n) % self.n_fft).to(torch.float64) / self.n_fft  # (bins, n_fft), reduced mod 2pi
        kernel = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :]
        self.register_buffer("kernel", kernel.to(torch.float32))
        self.bins = bins

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.unsqueeze(1)  # (batch, 1, samples)
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        spec = F.conv1d(x, self.kernel, stride=self.hop)  # (batch, 2 * bins, frames)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        return (real * real + imag * imag).transpose(1, 2)


class LogMelFilterbank(nn.Module):
    """SpeechBrain's frozen ``Filterbank``: power (batch, frames, bins) -> log-mel (batch, frames, n_mels) in dB.

    dB values are clamped from below at each utterance's maximum (over frames and mels) minus ``top_db``.
    """

    matrix: torch.Tensor

    def __init__(self, fbanks: Any) -> None:  # speechbrain.processing.features.Filterbank
        super().__init__()
        if not fbanks.freeze or fbanks.param_rand_factor != 0:
            raise ModelError("only a frozen filterbank without random perturbation can be exported")
        # As Filterbank.forward builds it: the (bins, n_mels) matrix from the module's own centres and bands.
        f_central = fbanks.f_central.repeat(fbanks.all_freqs_mat.shape[1], 1).transpose(0, 1)
        band = fbanks.band.repeat(fbanks.all_freqs_mat.shape[1], 1).transpose(0, 1)
        self.register_buffer("matrix", fbanks._create_fbank_matrix(f_central, band).detach().to(torch.float32))
        self.log_mel = bool(fbanks.log_mel)
        self.multiplier = float(fbanks.multiplier)
        self.amin = float(fbanks.amin)
        self.db_offset = float(fbanks.multiplier * fbanks.db_multiplier)
        self.top_db = float(fbanks.top_db)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.matrix)
        if not self.log_mel:
            return mel
        x_db = self.multiplier * torch.log10(torch.clamp(mel, min=self.amin)) - self.db_offset
        floor = torch.amax(x_db, dim=(-2, -1), keepdim=True) - self.top_db
        return torch.maximum(x_db, floor)


class SentenceMeanNorm(nn.Module):
    """``InputNormalization(norm_type="sentence", std_norm=False)`` on whole clips: subtract each feature's mean."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats - feats.mean(dim=1, keepdim=True)


class EcapaWaveformEncoder(nn.Module):
    """wav (batch, samples) float32 at 16 kHz -> raw embedding (batch, 192) float32, as ``encode_batch`` computes."""

    def __init__(self, spectrum: nn.Module, fbank: nn.Module, norm: nn.Module, embedding_model: nn.Module) -> None:
        super().__init__()
        self.spectrum, self.fbank, self.norm, self.embedding_model = spectrum, fbank, norm, embedding_model

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        feats = self.norm(self.fbank(self.spectrum(wav)))  # (batch, frames, n_mels)
        embedding: torch.Tensor = self.embedding_model(feats)  # (batch, 1, 192)
        return embedding[:, 0, :]


def build_export_module(classifier: Any) -> EcapaWaveformEncoder:
    """The exportable graph of a loaded ``EncoderClassifier`` (its embedding model is copied, not shared)."""
    features, norm = classifier.mods.compute_features, classifier.mods.mean_var_norm
    if features.deltas or features.context:
        raise ModelError("Fbank with deltas or context windows is not supported by the ONNX export")
    if norm.norm_type != "sentence" or norm.std_norm:
        raise ModelError(f"mean_var_norm must be sentence mean normalisation, not {norm.norm_type} std={norm.std_norm}")
    module = EcapaWaveformEncoder(
        DftPowerSpectrum(features.compute_STFT),
        LogMelFilterbank(features.compute_fbanks),
        SentenceMeanNorm(),
        copy.deepcopy(classifier.mods.embedding_model),
    )
    return module.eval()
