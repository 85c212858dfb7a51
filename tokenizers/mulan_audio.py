"""MuLan's audio tower: a 2-D ResNet on log-mel spectrograms, projected to a unit vector.

The tower is split in two so that windowed averaging can share one spectrogram per clip:

* :meth:`AudioTower.log_mel` turns audio ``[B, N]`` (at ``config.sample_rate``) into
  log-mel frames ``[B, n_mels, F]`` with ``F = 1 + (N - n_fft) // hop`` (no centering, so
  frame ``f`` covers samples ``[f * hop, f * hop + n_fft)``: the frames of a window that
  starts on a multiple of ``hop`` are exactly a slice of the clip's frames).
* :meth:`AudioTower.embed_log_mel` runs the ResNet on frames ``[B, n_mels, F]`` (any ``F``:
  global average pooling) and returns L2-normalized embeddings ``[B, dim]``.

``forward(wav)`` chains both. Depth and width are config values; :data:`PAPER_RESNET` is
ResNet-50 (bottleneck blocks 3-4-6-3, widths 256-2048), the paper's audio tower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


@dataclass
class AudioTowerConfig:
    """Front end and ResNet shape of the audio tower.

    ``widths``/``blocks`` give one ResNet stage each (the first stage keeps the stem's
    resolution, each later stage halves it); ``bottleneck`` picks ResNet-50-style blocks
    (1x1 -> 3x3 -> 1x1 with a 4x narrower middle) instead of two 3x3 convolutions.
    """

    sample_rate: int = 24_000
    n_fft: int = 600  # 25 ms at 24 kHz
    hop: int = 240  # 10 ms at 24 kHz
    n_mels: int = 64
    stem_width: int = 32
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    bottleneck: bool = False
    dim: int = 128

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(
                f"audio tower needs one width per stage: widths {self.widths}, blocks {self.blocks}"
            )
        if self.bottleneck and any(w % 4 for w in self.widths):
            raise ValueError(f"bottleneck widths must be multiples of 4, got {self.widths}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER_RESNET = AudioTowerConfig(
    stem_width=64, widths=[256, 512, 1024, 2048], blocks=[3, 4, 6, 3], bottleneck=True
)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class AudioTower(nn.Module):
    """Audio ``[B, N]`` -> unit-norm embedding ``[B, dim]`` (see the module docstring)."""

    def __init__(self, config: AudioTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop,
            n_mels=config.n_mels,
            center=False,
            power=2.0,
        )
        self.input_norm = nn.BatchNorm1d(config.n_mels)
        self.stem = nn.Sequential(
            nn.Conv2d(1, config.stem_width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(config.stem_width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        block = _Bottleneck if config.bottleneck else _BasicBlock
        stages, c_in = [], config.stem_width
        for index, (width, count) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for j in range(count):
                stride = 2 if index > 0 and j == 0 else 1
                stages.append(block(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(c_in, config.dim)

    @property
    def min_samples(self) -> int:
        """Shortest input the front end accepts: one STFT frame."""
        return self.config.n_fft

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, N]`` -> log-mel frames ``[B, n_mels, 1 + (N - n_fft) // hop]``."""
        if wav.ndim != 2:
            raise ValueError(f"audio must be [batch, samples], got shape {tuple(wav.shape)}")
        if wav.shape[1] < self.min_samples:
            raise ValueError(
                f"audio of {wav.shape[1]} samples is shorter than one spectrogram frame "
                f"({self.min_samples} samples at {self.config.sample_rate} Hz); pass longer clips"
            )
        return torch.log(self.mel(wav.float()).clamp_min(1e-5))

    def embed_log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        """Log-mel frames ``[B, n_mels, F]`` -> L2-normalized embeddings ``[B, dim]``."""
        x = self.input_norm(frames).unsqueeze(1)
        x = self.stages(self.stem(x))
        return F.normalize(self.proj(x.mean(dim=(2, 3))), dim=-1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, N]`` -> L2-normalized embeddings ``[B, dim]``."""
        return self.embed_log_mel(self.log_mel(wav))
