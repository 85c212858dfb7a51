"""Codec quality measures: multi-scale mel spectrograms, mel distance, SI-SNR, spectral loss,
and a codec's round trip scored at several RVQ level counts.

The one home of these measures, beside the codec: the SoundStream trainer (its
reconstruction loss and validation), the codec benchmarks and the evaluation of generated
audio (:mod:`musiclm.sampling.metrics`, which holds the measures of generated music: FAD,
tag KL, MuLan cycle consistency, window joins) all use them from here. Audio arguments are float waveforms ``[B, N]``,
``[B, 1, N]`` or ``[N]`` at ``sample_rate``; estimate and reference must have the same
length.

* :func:`mel_distance` -> ``[B]``: mean absolute difference of log10 mel magnitudes over
  windows of 64 ... 2048 samples (lower is better; 0 for identical audio).
* :func:`si_snr` -> ``[B]``: scale-invariant signal-to-noise ratio in dB (higher is better).
* :func:`spectral_reconstruction_loss` -> scalar: SoundStream's multi-scale spectral loss
  (L1 of mel magnitudes plus ``sqrt(s / 2)``-weighted L2 of log mels, per window ``s``).
* :func:`round_trip` -> :class:`RoundTrip`: audio ``[B, 1, N]`` encoded once, decoded from
  its first ``q`` levels for each ``q``, with the mel distance and SI-SNR ``[B]`` of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torchaudio
from musiclm.tokenizers.codec import Codec
from torch import nn

SCALES = (64, 128, 256, 512, 1024, 2048)
LOG_FLOOR = 1e-5


def _as_batch(wav: torch.Tensor) -> torch.Tensor:
    """[N] / [B, N] / [B, 1, N] -> [B, N] float."""
    if wav.ndim == 3:
        if wav.shape[1] != 1:
            raise ValueError(f"expected mono audio [B, 1, N], got shape {tuple(wav.shape)}")
        wav = wav[:, 0]
    elif wav.ndim == 1:
        wav = wav[None]
    elif wav.ndim != 2:
        raise ValueError(f"expected audio [N], [B, N] or [B, 1, N], got shape {tuple(wav.shape)}")
    return wav.float()


def _pair(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    estimate, reference = _as_batch(estimate), _as_batch(reference)
    if estimate.shape != reference.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in "
            "shape; trim both to the same length (a codec output is padded to whole frames)"
        )
    return estimate, reference


class MultiScaleMel(nn.Module):
    """Mel magnitude spectrograms at several window sizes.

    Window ``s`` uses an FFT of ``s`` samples, hop ``s // 4`` and ``min(n_mels, s // 4)``
    mel bands (small windows cannot resolve more). ``forward(wav [B, N])`` returns a list
    of ``[B, mels_s, frames_s]`` magnitudes, one per scale.
    """

    def __init__(
        self, sample_rate: int = 24_000, scales: Sequence[int] = SCALES, n_mels: int = 64
    ) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.transforms = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=s,
                win_length=s,
                hop_length=s // 4,
                n_mels=min(n_mels, s // 4),
                power=1.0,
                center=True,
                pad_mode="reflect",
                norm="slaney",
                mel_scale="slaney",
            )
            for s in self.scales
        )

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        wav = _as_batch(wav)
        return [transform(wav) for transform in self.transforms]


@lru_cache(maxsize=8)
def _cached_mel(sample_rate: int, scales: tuple[int, ...], device: str) -> MultiScaleMel:
    return MultiScaleMel(sample_rate, scales).to(device)


def mel_distance(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    sample_rate: int = 24_000,
    scales: Sequence[int] = SCALES,
) -> torch.Tensor:
    """Multi-scale mel distance per item: audio [B, (1,) N] x 2 -> [B] (lower is better).

    Mean over scales of the mean absolute difference of ``log10(max(mel, 1e-5))``.
    """
    estimate, reference = _pair(estimate, reference)
    mel = _cached_mel(sample_rate, tuple(scales), str(estimate.device))
    with torch.no_grad():
        distances = [
            (a.clamp_min(LOG_FLOOR).log10() - b.clamp_min(LOG_FLOOR).log10()).abs().mean((1, 2))
            for a, b in zip(mel(estimate), mel(reference), strict=True)
        ]
    return torch.stack(distances).mean(0)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB per item: audio [B, (1,) N] x 2 -> [B] (higher is better).

    Both signals are made zero-mean; the estimate is split into its projection on the
    reference (signal) and the rest (noise).
    """
    estimate, reference = _pair(estimate, reference)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (
        reference.pow(2).sum(-1, keepdim=True) + eps
    )
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def spectral_reconstruction_loss(
    estimate: torch.Tensor, reference: torch.Tensor, mel: MultiScaleMel
) -> torch.Tensor:
    """SoundStream's multi-scale spectral loss (scalar, differentiable in ``estimate``).

    Per scale ``s``: mean over bins and frames of ``|S - S'|`` plus ``sqrt(s / 2)`` times
    the mean over frames of the L2 norm (over mel bands) of ``log S - log S'``, on mel
    magnitudes ``S`` of ``reference`` and ``S'`` of ``estimate``. Averaged over the scales
    so that its size does not grow with their number.
    """
    estimate, reference = _pair(estimate, reference)
    total = estimate.new_zeros(())
    for scale, a, b in zip(mel.scales, mel(estimate), mel(reference), strict=True):
        linear = (a - b).abs().mean()
        log_diff = a.clamp_min(LOG_FLOOR).log() - b.clamp_min(LOG_FLOOR).log()
        frame_l2 = log_diff.pow(2).sum(1).clamp_min(1e-12).sqrt()  # [B, frames]
        total = total + linear + (scale / 2) ** 0.5 * frame_l2.mean()
    return total / len(mel.scales)


@dataclass
class RoundTrip:
    """A codec's round trip of audio ``[B, 1, N]`` at several level counts ``q``."""

    codes: torch.Tensor  # int64 [B, Q, T]: all levels, encoded once
    audio: dict[int, torch.Tensor]  # q -> float [B, 1, N], decoded from the first q levels
    mel_distance: dict[int, torch.Tensor]  # q -> [B] (lower is better)
    si_snr: dict[int, torch.Tensor]  # q -> [B] dB (higher is better)


@torch.no_grad()
def round_trip(codec: Codec, wav: torch.Tensor, levels: Sequence[int]) -> RoundTrip:
    """Encode ``wav [B, 1, N]`` once and score its decodings from the first ``q`` levels.

    Each decoding is trimmed to the input's ``N`` samples; tensors stay on the codec's device.
    """
    wav = wav.to(codec.device).float()
    codes = codec.encode(wav)
    out = RoundTrip(codes, {}, {}, {})
    for q in levels:
        audio = codec.decode(codes[:, :q])[..., : wav.shape[-1]].float()
        out.audio[q] = audio
        out.mel_distance[q] = mel_distance(audio, wav, codec.sample_rate)
        out.si_snr[q] = si_snr(audio, wav)
    return out
