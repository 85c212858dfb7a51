"""Causal SEANet building blocks: the convolutional encoder and decoder of SoundStream.

Every convolution is causal (padded on the left only), so output frame ``t`` depends on
input samples up to the end of frame ``t``: the codec can stream. Shapes, with
``hop = prod(strides)``::

    SEANetEncoder: wav [B, 1, N]  (N a multiple of hop) -> embeddings [B, dim, N // hop]
    SEANetDecoder: embeddings [B, dim, T]               -> wav [B, 1, T * hop]

Each stage of the encoder is three residual units (dilations 1, 3, 9) followed by a
strided convolution that doubles the channels; the decoder mirrors it with transposed
convolutions. Weights are weight-normalized, as in SEANet/SoundStream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

DILATIONS = (1, 3, 9)


def _init(conv: nn.Conv1d | nn.ConvTranspose1d, gain: float) -> nn.Module:
    """Weight-normalized ``conv`` with N(0, gain^2 / fan_in) weights and zero bias.

    Variance-preserving init (gain 1): with PyTorch's default init the signal shrinks at
    every layer, the decoder's output is all bias and ignores its input, and training
    sits for a long time at "the average spectrum" before it learns to use the codes.
    """
    weight = conv.weight
    if isinstance(conv, nn.ConvTranspose1d):  # [in, out, k]: each output sees in * k / stride
        fan_in = weight.shape[0] * weight.shape[2] / conv.stride[0]
    else:  # [out, in / groups, k]
        fan_in = weight.shape[1] * weight.shape[2]
    nn.init.normal_(weight, 0.0, gain / math.sqrt(fan_in))
    nn.init.zeros_(conv.bias)
    return weight_norm(conv)


class CausalConv1d(nn.Module):
    """Conv1d padded on the left so that ``T_out = T_in / stride`` (T_in a multiple of stride)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation + 1 - stride
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.conv = _init(conv, gain)

    def forward(self, x):
        """x [B, C_in, T] -> [B, C_out, T // stride]."""
        return self.conv(nn.functional.pad(x, (self.pad, 0)))


class CausalConvTranspose1d(nn.Module):
    """Transposed conv (kernel 2 x stride) trimmed on the right: ``T_out = T_in * stride``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.trim = stride
        self.conv = _init(nn.ConvTranspose1d(in_channels, out_channels, 2 * stride, stride), 1.0)

    def forward(self, x):
        """x [B, C_in, T] -> [B, C_out, T * stride]."""
        return self.conv(x)[..., : -self.trim]


class ResidualUnit(nn.Module):
    """ELU -> dilated causal conv (kernel 7) -> ELU -> 1x1 conv, plus the input."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(),
            CausalConv1d(channels, channels, 7, dilation=dilation),
            nn.ELU(),
            CausalConv1d(channels, channels, 1),
        )

    def forward(self, x):
        """x [B, C, T] -> [B, C, T]."""
        return x + self.block(x)


class SEANetEncoder(nn.Module):
    """wav [B, 1, N] -> [B, dim, N // prod(strides)]; channels double at each stride."""

    def __init__(self, channels: int, dim: int, strides: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(1, channels, 7)]
        width = channels
        for stride in strides:
            layers += [ResidualUnit(width, d) for d in DILATIONS]
            layers += [nn.ELU(), CausalConv1d(width, 2 * width, 2 * stride, stride=stride)]
            width *= 2
        layers += [nn.ELU(), CausalConv1d(width, dim, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav):
        return self.net(wav)


class SEANetDecoder(nn.Module):
    """[B, dim, T] -> wav [B, 1, T * prod(strides)]; mirrors :class:`SEANetEncoder`."""

    def __init__(self, channels: int, dim: int, strides: Sequence[int]) -> None:
        super().__init__()
        width = channels * 2 ** len(strides)
        layers: list[nn.Module] = [CausalConv1d(dim, width, 7)]
        for stride in reversed(strides):
            layers += [nn.ELU(), CausalConvTranspose1d(width, width // 2, stride)]
            width //= 2
            layers += [ResidualUnit(width, d) for d in DILATIONS]
        layers += [nn.ELU(), CausalConv1d(width, 1, 7, gain=0.1)]  # starts quiet
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)
