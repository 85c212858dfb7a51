"""An STFT decoder for SoundStream: code-frame embeddings -> STFT frames -> inverse STFT.

The SEANet decoder upsamples 480-fold with transposed convolutions, so most of its cost
(and of its gradient) is spent at 24 kHz. This decoder stays at the code frame rate: a
stack of dilated residual units (the SEANet ones) maps each frame embedding to one STFT
frame, a log magnitude and a phase per bin, and a windowed inverse FFT with overlap-add
turns the frames into audio (as in Vocos). It costs far less per step on a CPU and learns the spectral
envelope in far fewer steps; it is the small config's decoder, while the paper's codec
keeps the SEANet decoder.

Shapes: ``STFTDecoder``: embeddings [B, dim, T] -> wav [B, 1, T * hop]. Each STFT frame
has ``n_fft = 4 * hop`` samples (a Hann window) centred on its code frame, so the decoder
looks ahead by 1.5 frames (it is not causal, unlike the SEANet decoder; the encoder still
is). The overlap-add is normalized by the summed squared windows, which stay above 0.7 of
their interior value over the whole output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from musiclm.tokenizers.seanet import DILATIONS, CausalConv1d, ResidualUnit
from torch import nn

MAX_LOG_MAGNITUDE = 8.0  # exp(8) ~ 3000: far above any bin of audio in [-1, 1]


class STFTDecoder(nn.Module):
    """[B, dim, T] -> wav [B, 1, T * hop] through predicted STFT frames.

    Args:
        dim: embedding dimension of the codes.
        hop: samples per code frame (the STFT hop).
        width: channels of the frame-rate residual stack.
        blocks: groups of three residual units (dilations 1, 3, 9).
    """

    def __init__(self, dim: int, hop: int, width: int = 256, blocks: int = 2) -> None:
        super().__init__()
        self.hop, self.n_fft = hop, 4 * hop
        bins = self.n_fft // 2 + 1
        layers: list[nn.Module] = [CausalConv1d(dim, width, 7)]
        layers += [ResidualUnit(width, d) for _ in range(blocks) for d in DILATIONS]
        layers += [nn.ELU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv1d(width, 2 * bins, 1)
        nn.init.normal_(self.head.weight, 0.0, 0.01 / width**0.5)
        nn.init.constant_(self.head.bias[:bins], -6.0)  # start quiet: |X| ~ e^-6
        nn.init.zeros_(self.head.bias[bins:])
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """Windowed frames [B, n_fft, T] -> [B, T * hop]: frame ``t`` centred on samples
        ``[t * hop, (t + 1) * hop)``, divided by the summed squared windows."""
        count, n_fft, hop = frames.shape[-1], self.n_fft, self.hop
        size = dict(output_size=(1, (count + 3) * hop), kernel_size=(1, n_fft), stride=(1, hop))
        out = F.fold(frames * self.window[:, None], **size)
        weights = (self.window**2)[None, :, None].expand(1, n_fft, count)
        envelope = F.fold(weights, **size).clamp_min(1e-8)
        start = (n_fft - hop) // 2  # frame t starts 1.5 hops before its code frame
        return (out / envelope)[:, 0, 0, start : start + count * hop]

    def spectrum(self, z: torch.Tensor) -> torch.Tensor:
        """Complex STFT frames [B, n_fft / 2 + 1, T] for embeddings z [B, dim, T]."""
        log_magnitude, phase = self.head(self.net(z)).float().chunk(2, dim=1)
        magnitude = log_magnitude.clamp(max=MAX_LOG_MAGNITUDE).exp()
        return torch.polar(magnitude, phase)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            frames = torch.fft.irfft(self.spectrum(z), n=self.n_fft, dim=1)
            return self.overlap_add(frames)[:, None]
