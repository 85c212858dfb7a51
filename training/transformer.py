"""Decoder-only Transformer shared by the three MusicLM stages, with a key/value cache.

The model is the AudioLM/MusicLM stage model: token embedding, ``depth`` pre-norm blocks
(RMSNorm -> causal self-attention -> residual, RMSNorm -> GELU feed-forward -> residual),
a final norm and a linear head over the stage's vocabulary. Positions enter in one of two
ways (``TransformerConfig.position``):

- ``"relative"`` (default, the paper's choice): a T5-style bucketed relative position bias,
  one learned scalar per (bucket, head), computed once per forward and shared by all
  layers. Distances below ``num_buckets // 2`` get a bucket each; larger ones share
  logarithmically spaced buckets up to ``max_distance``.
- ``"rotary"``: rotary embeddings on queries and keys (no bias), which lets
  ``scaled_dot_product_attention`` pick its flash kernel on GPU.

Incremental decoding: create a cache with :meth:`DecoderTransformer.new_cache` and call
``model(tokens, cache=cache)`` repeatedly; each call appends the new tokens' keys/values
and returns logits only for the new tokens. Feeding a prompt in one call and then one
token per call gives the same logits (within float tolerance) as one full forward over the
whole sequence. Sequences in a batch must share their length (the stage layout pads on the
right only, and causal attention never lets a real token see a pad token after it).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

POSITIONS = ("relative", "rotary")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of one stage transformer (the paper: 24 layers, 16 heads, d=1024, ff=4096, 0.1)."""

    vocab_size: int
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    ff_dim: int = 4096
    dropout: float = 0.1
    position: str = "relative"
    num_buckets: int = 32
    max_distance: int = 128
    rotary_base: float = 10_000.0

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.position == "rotary" and (self.dim // self.heads) % 2:
            raise ValueError("rotary positions need an even head dimension")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class KVCache:
    """Keys and values of every layer for the tokens decoded so far.

    Tensors are preallocated as ``[B, H, capacity, head_dim]`` per layer; ``length`` is the
    number of positions filled. :meth:`select` keeps a subset/reordering of batch rows
    (e.g. to drop finished rows or to repeat rows).
    """

    def __init__(
        self,
        config: TransformerConfig,
        batch: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch, config.heads, capacity, config.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.depth)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.depth)]
        self.capacity = capacity
        self.length = 0

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v [B, H, n, Dh]`` after the cached positions; return all keys/values so far.

        The length advances in :meth:`advance` once every layer has appended.
        """
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(
                f"KV cache holds {self.capacity} positions; cannot append up to {stop}. "
                "Create the cache with a larger capacity."
            )
        self.keys[layer][:, :, start:stop] = k
        self.values[layer][:, :, start:stop] = v
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (LongTensor [B']) of every layer, in that order."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def relative_position_bucket(
    relative: torch.Tensor, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5 causal buckets of ``relative = key_pos - query_pos`` (<= 0 where attention is allowed).

    Returns LongTensor of the same shape with values in ``[0, num_buckets)``. Future
    positions (relative > 0) fall into bucket 0 with distance 0; the causal mask hides them.
    """
    distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    is_small = distance < exact
    scaled = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (scaled * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned T5 bias ``[H, Tq, Tk]`` for query positions ``q_pos`` and key positions ``k_pos``."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        buckets = relative_position_bucket(
            k_pos[None, :] - q_pos[:, None], self.num_buckets, self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1)


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[T, head_dim]`` for rotary embeddings at integer ``positions [T]``."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, Dh]`` by the tables ``[T, Dh]`` (half-split convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``.

        ``mask`` is a float bias ``[1, H or 1, T, T_keys]`` (-inf hides a key) or None: plain
        causal attention when no keys are cached, all cached keys visible for one query.
        """
        b, t, _ = x.shape
        cfg = self.config
        q, k, v = self.qkv(x).view(b, t, 3, cfg.heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        dropout = cfg.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=t > 1)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout
            )
        return self.out(y.transpose(1, 2).reshape(b, t, cfg.dim))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm(x))``, then ``x + ff(norm(x))``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.dim)
        self.attn = Attention(config)
        self.ff_norm = nn.RMSNorm(config.dim)
        self.ff = nn.Sequential(
            nn.Linear(config.dim, config.ff_dim, bias=False),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ff_dim, config.dim, bias=False),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, rotary, cache, layer) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), mask, rotary, cache, layer))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class DecoderTransformer(nn.Module):
    """Decoder-only Transformer: ``tokens [B, T]`` (vocabulary ids) -> ``logits [B, T, vocab]``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.RMSNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.position_bias = (
            RelativePositionBias(config.heads, config.num_buckets, config.max_distance)
            if config.position == "relative"
            else None
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch`` rows and up to ``capacity`` positions."""
        weight = self.embedding.weight
        return KVCache(self.config, batch, capacity, weight.device, dtype or weight.dtype)

    def _positions(
        self, t: int, offset: int, device: torch.device
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """Attention mask (float, ``[1, H, t, offset+t]`` or None) and rotary tables."""
        q_pos = torch.arange(offset, offset + t, device=device)
        k_pos = torch.arange(offset + t, device=device)
        if self.position_bias is not None:
            bias = self.position_bias(q_pos, k_pos)
            future = k_pos[None, :] > q_pos[:, None]
            return bias.masked_fill(future, float("-inf")).unsqueeze(0), None
        rotary = rotary_tables(q_pos, self.config.head_dim, self.config.rotary_base)
        if offset == 0 or t == 1:
            return None, rotary  # plain causal, or one query that may see every cached key
        future = k_pos[None, :] > q_pos[:, None]
        mask = torch.zeros(t, offset + t, device=device).masked_fill(future, float("-inf"))
        return mask[None, None], rotary

    def hidden(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final normalized hidden states ``[B, T, D]`` for ``tokens [B, T]``."""
        offset = 0 if cache is None else cache.length
        mask, rotary = self._positions(tokens.shape[1], offset, tokens.device)
        x = self.embed_dropout(self.embedding(tokens))
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache, layer)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for ``tokens [B, T]``.

        With ``cache``, ``tokens`` are the next positions after those already cached, and
        the cache is extended by them.
        """
        return self.head(self.hidden(tokens, cache))

    def num_parameters(self, embeddings: bool = True) -> int:
        """Trainable parameter count (optionally without the embedding table)."""
        total = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total - (0 if embeddings else self.embedding.weight.numel())
