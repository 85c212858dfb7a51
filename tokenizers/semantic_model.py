"""The in-project semantic feature model: a small self-supervised model of the w2v-BERT family.

Architecture (all sizes are :class:`SemanticModelConfig` values)::

    wav [B, N] at sample_rate (24 kHz)
      -> log-mel frames [B, 4T+1, n_mels] at 100 Hz, layer-normalized per frame
      -> convolutional front end, two stride-2 Conv1d -> [B, T, dim] at 25 Hz
      -> Conformer blocks (torchaudio) -> layer-``layer`` output [B, T, dim]

with ``T = N // (sample_rate // 25)``: exactly one frame per 40 ms of input, whatever N.

Training (:mod:`musiclm.training.semantic_trainer`) is HuBERT-style masked prediction:
spans of front-end frames are replaced by a learned mask vector and a linear head over the
last block predicts each masked frame's discrete target: the k-means id of its log-mel
frame (:func:`mel_target_features`, first iteration) or of a previous model's layer
features (second iteration). Only the blocks up to ``layer`` are needed for features;
:meth:`SemanticFeatureModel.truncated` drops the rest for export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from musiclm.tokenizers.ssl_features import FRAME_RATE, frames_at
from torch import nn
from torchaudio.models.conformer import ConformerLayer

MEL_RATE = 100  # log-mel frames per second before the front end's 4x subsampling


@dataclasses.dataclass
class SemanticModelConfig:
    """Sizes of the in-project semantic model. ``layer`` (1-based) is the feature layer."""

    sample_rate: int = 24_000
    n_mels: int = 80
    n_fft: int = 1024
    dim: int = 256
    num_layers: int = 8
    num_heads: int = 4
    ffn_dim: int = 1024
    conv_kernel: int = 15
    dropout: float = 0.1
    layer: int = 7

    def __post_init__(self) -> None:
        if self.sample_rate % MEL_RATE:
            raise ValueError(
                f"sample_rate {self.sample_rate} must be a multiple of {MEL_RATE} Hz "
                f"({MEL_RATE} Hz mel frames, subsampled 4x to {FRAME_RATE} Hz)"
            )
        if not 1 <= self.layer <= self.num_layers:
            raise ValueError(
                f"feature layer {self.layer} must be in 1..num_layers ({self.num_layers})"
            )
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LogMel(nn.Module):
    """wav [B, N] -> log-mel [B, N // hop + 1, n_mels] at 100 Hz (centered frames)."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=sample_rate // MEL_RATE,
            n_mels=n_mels,
            power=2.0,
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wav.device.type, enabled=False):
            spec = self.mel(wav.float())
        return torch.log(spec + 1e-6).transpose(1, 2)


def mel_target_features(log_mel: torch.Tensor, frames: int) -> torch.Tensor:
    """First-iteration target features: log-mel [B, 4T+1, M] averaged over 4 frames -> [B, T, M]."""
    usable = frames * 4
    x = log_mel[:, :usable]
    return x.reshape(x.shape[0], frames, 4, x.shape[2]).mean(2)


class SemanticFeatureModel(nn.Module):
    """Log-mel + conv front end + Conformer blocks; see the module docstring for shapes.

    ``features(wav[B, N] at sample_rate) -> [B, N // (sample_rate // 25), dim]`` (layer
    ``config.layer``); ``encode_frames`` is the training path with a frame mask.
    """

    def __init__(self, config: SemanticModelConfig) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = config.sample_rate
        self.frame_rate = FRAME_RATE
        self.layer = config.layer
        self.dim = config.dim
        self.log_mel = LogMel(config.sample_rate, config.n_fft, config.n_mels)
        self.mel_norm = nn.LayerNorm(config.n_mels)
        self.front_end = nn.Sequential(
            nn.Conv1d(config.n_mels, config.dim, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(config.dim, config.dim, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        self.front_norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.mask_embedding = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.blocks = nn.ModuleList(
            ConformerLayer(
                input_dim=config.dim,
                ffn_dim=config.ffn_dim,
                num_attention_heads=config.num_heads,
                depthwise_conv_kernel_size=config.conv_kernel,
                dropout=config.dropout,
            )
            for _ in range(config.num_layers)
        )

    def frames(self, num_samples: int) -> int:
        """25 Hz output frames for ``num_samples`` input samples."""
        return frames_at(num_samples, self.sample_rate)

    def front(self, log_mel: torch.Tensor, frames: int) -> torch.Tensor:
        """log-mel [B, 4T+1, M] -> front-end frames [B, T, dim]."""
        x = self.front_end(self.mel_norm(log_mel).transpose(1, 2)).transpose(1, 2)
        return self.front_norm(x[:, :frames])

    def encode_frames(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, upto: int | None = None
    ) -> torch.Tensor:
        """Front-end frames [B, T, dim] (``mask`` [B, T] bool: replaced by the mask vector)
        through the first ``upto`` blocks (all by default) -> [B, T, dim]."""
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        x = self.dropout(x).transpose(0, 1)
        for block in self.blocks[: upto or len(self.blocks)]:
            x = block(x, None)
        return x.transpose(0, 1)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] audio at ``sample_rate`` -> layer-``layer`` features [B, N // hop25, dim]."""
        if wav.ndim != 2:
            raise ValueError(f"expected audio [B, N], got shape {tuple(wav.shape)}")
        frames = self.frames(wav.shape[1])
        if frames < 1:
            raise ValueError(
                f"audio of {wav.shape[1]} samples is shorter than one semantic frame "
                f"({self.sample_rate // FRAME_RATE} samples at {self.sample_rate} Hz)"
            )
        x = self.front(self.log_mel(wav), frames)
        return self.encode_frames(x, upto=self.layer)

    def truncated(self) -> SemanticFeatureModel:
        """A copy holding only the blocks up to ``layer`` (same features, less compute)."""
        config = dataclasses.replace(self.config, num_layers=self.layer, dropout=0.0)
        model = SemanticFeatureModel(config)
        state = {
            name: value
            for name, value in self.state_dict().items()
            if not name.startswith("blocks.") or int(name.split(".")[1]) < self.layer
        }
        model.load_state_dict(state)
        return model.eval()


def mask_spans(
    batch: int,
    frames: int,
    prob: float,
    span: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """HuBERT/wav2vec 2.0 span masking: bool [batch, frames].

    Each frame starts a masked span of ``span`` frames with probability ``prob`` (spans
    may overlap); at least one frame per row is masked.
    """
    starts = torch.rand(batch, frames, generator=generator) < prob
    starts[torch.arange(batch), torch.randint(0, frames, (batch,), generator=generator)] = True
    kernel = torch.ones(1, 1, span)
    covered = F.conv1d(F.pad(starts.float()[:, None], (span - 1, 0)), kernel)[:, 0] > 0
    return covered.to(device)
