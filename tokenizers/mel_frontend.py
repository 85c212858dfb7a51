"""A causal log-mel branch for the SoundStream encoder.

After a few CPU minutes a waveform-only SEANet encoder still hands the decoder little
more than loudness and spectral tilt; the same decoder fed log-mel frames learns the
spectral envelope within the same minutes (see the SoundStream small config). This branch
adds ``proj(log mel)`` to the SEANet encoder's output, so the codec keeps the paper's
waveform encoder and gains a spectral input that is useful from the first step.

Shapes: ``CausalLogMel``: wav [B, 1, N] (N a multiple of ``hop``) -> [B, n_mels, N // hop].
Frame ``t`` is the window of ``n_fft`` samples (the smallest power of two covering 4
hops: 2048 for hop 480) that ends where code frame ``t`` ends; the audio is padded with
silence on the left, so no frame sees a later sample and the branch streams like the rest
of the encoder.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

LOG_FLOOR = 1e-5


class CausalLogMel(nn.Module):
    """Log mel magnitudes of the window ending at each code frame: [B, 1, N] -> [B, M, N // hop]."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.hop = hop
        self.n_fft = 1 << (4 * hop - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.n_fft,
            hop_length=hop,
            n_mels=n_mels,
            power=1.0,
            center=False,
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(wav[:, 0].float(), (self.n_fft - self.hop, 0))
        with torch.autocast(wav.device.type, enabled=False):
            return self.mel(padded).clamp_min(LOG_FLOOR).log()


class LogMelBranch(nn.Module):
    """``CausalLogMel`` then a 1x1 convolution to the codec dimension: [B, 1, N] -> [B, dim, N // hop]."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int, dim: int) -> None:
        super().__init__()
        self.log_mel = CausalLogMel(sample_rate, hop, n_mels)
        self.proj = nn.Conv1d(n_mels, dim, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.proj(self.log_mel(wav))
