"""SoundStream's discriminators and GAN losses: multi-scale waveform and STFT discriminators.

Each discriminator maps audio ``[B, 1, N]`` to a list of ``(logits, features)`` pairs,
one per sub-discriminator: ``logits`` is a score map (any shape ``[B, ...]``; higher =
"real") and ``features`` the list of intermediate activations used for feature matching.

* :class:`MultiScaleWaveDiscriminator`: MelGAN-style 1-D convolutional discriminators on
  the waveform at 1x, 2x, 4x ... average-pooled resolutions.
* :class:`STFTDiscriminator`: a 2-D convolutional network on the complex STFT (real and
  imaginary parts as two channels), as in the SoundStream paper.

The losses: :func:`discriminator_hinge_loss`, :func:`generator_hinge_loss` and
:func:`feature_matching_loss` (L1 between real and fake activations, normalized by the
mean magnitude of the real ones so that layers of any scale weigh alike).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

Output = list[tuple[torch.Tensor, list[torch.Tensor]]]


class WaveDiscriminator(nn.Module):
    """1-D conv stack on a waveform [B, 1, N]: strided grouped convs, leaky ReLU."""

    def __init__(self, channels: int = 16, max_channels: int = 512, downsamples: int = 4) -> None:
        super().__init__()
        layers = [nn.Conv1d(1, channels, 15, padding=7)]
        width = channels
        for _ in range(downsamples):
            out = min(width * 4, max_channels)
            groups = max(1, width // 4)
            layers.append(nn.Conv1d(width, out, 41, stride=4, padding=20, groups=groups))
            width = out
        layers.append(nn.Conv1d(width, width, 5, padding=2))
        self.layers = nn.ModuleList(weight_norm(layer) for layer in layers)
        self.head = weight_norm(nn.Conv1d(width, 1, 3, padding=1))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        x = wav
        for layer in self.layers:
            x = self.act(layer(x))
            features.append(x)
        return self.head(x), features


class MultiScaleWaveDiscriminator(nn.Module):
    """``scales`` :class:`WaveDiscriminator` s on the waveform pooled by 1, 2, 4, ..."""

    def __init__(self, scales: int = 3, channels: int = 16, max_channels: int = 512) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            WaveDiscriminator(channels, max_channels) for _ in range(scales)
        )
        self.pool = nn.AvgPool1d(4, stride=2, padding=2, count_include_pad=False)

    def forward(self, wav: torch.Tensor) -> Output:
        outputs = []
        for i, disc in enumerate(self.discriminators):
            if i:
                wav = self.pool(wav)
            outputs.append(disc(wav))
        return outputs


class STFTDiscriminator(nn.Module):
    """2-D conv network on the complex STFT [B, 2, frames, bins] of a waveform [B, 1, N].

    Frequency is downsampled by 2 in every block and time every other block, as in the
    SoundStream paper; channel width doubles per block up to ``max_channels``.
    """

    def __init__(
        self,
        channels: int = 32,
        window: int = 1024,
        hop: int = 256,
        blocks: int = 5,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        self.window, self.hop = window, hop
        self.register_buffer("hann", torch.hann_window(window), persistent=False)
        layers = [nn.Conv2d(2, channels, (7, 7), padding=(3, 3))]
        width = channels
        for i in range(blocks):
            out = min(width * 2, max_channels)
            stride = (2 if i % 2 else 1, 2)
            layers.append(nn.Conv2d(width, out, (3, 4), stride=stride, padding=(1, 1)))
            width = out
        self.layers = nn.ModuleList(weight_norm(layer) for layer in layers)
        self.head = weight_norm(nn.Conv2d(width, 1, (3, 3), padding=(1, 1)))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, wav: torch.Tensor) -> Output:
        spec = torch.stft(
            wav[:, 0].float(),
            self.window,
            self.hop,
            window=self.hann,
            return_complex=True,
        )  # [B, bins, frames]
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        features = []
        for layer in self.layers:
            x = self.act(layer(x))
            features.append(x)
        return [(self.head(x), features)]


class Discriminators(nn.Module):
    """Both discriminators; ``forward(wav)`` concatenates their outputs."""

    def __init__(
        self,
        wave_scales: int = 3,
        wave_channels: int = 16,
        wave_max_channels: int = 512,
        stft_channels: int = 32,
        stft_window: int = 1024,
        stft_hop: int = 256,
        stft_max_channels: int = 256,
    ) -> None:
        super().__init__()
        self.wave = MultiScaleWaveDiscriminator(wave_scales, wave_channels, wave_max_channels)
        self.stft = STFTDiscriminator(
            stft_channels, stft_window, stft_hop, max_channels=stft_max_channels
        )

    def forward(self, wav: torch.Tensor) -> Output:
        return self.wave(wav) + self.stft(wav)


def discriminator_hinge_loss(real: Output, fake: Output) -> torch.Tensor:
    """Mean over sub-discriminators of ``mean relu(1 - D(x)) + mean relu(1 + D(G(z)))``."""
    losses = [
        torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
        for (r, _), (f, _) in zip(real, fake, strict=True)
    ]
    return torch.stack(losses).mean()


def generator_hinge_loss(fake: Output) -> torch.Tensor:
    """Mean over sub-discriminators of ``mean relu(1 - D(G(z)))``."""
    return torch.stack([torch.relu(1 - f).mean() for f, _ in fake]).mean()


def feature_matching_loss(real: Output, fake: Output) -> torch.Tensor:
    """Mean over all layers of ``mean|f_real - f_fake| / mean|f_real|`` (real detached)."""
    losses = []
    for (_, real_feats), (_, fake_feats) in zip(real, fake, strict=True):
        for r, f in zip(real_feats, fake_feats, strict=True):
            r = r.detach()
            losses.append((r - f).abs().mean() / r.abs().mean().clamp_min(1e-5))
    return torch.stack(losses).mean()
