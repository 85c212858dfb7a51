"""Decoder-only Transformer shared by the three MusicLM stages, with a key/value cache.

The model is the AudioLM/MusicLM stage model: token embedding, ``depth`` pre-norm blocks
(RMSNorm -> causal self-attention -> residual, RMSNorm -> GELU feed-forward -> residual),
a final norm and a linear head over the stage's vocabulary. Positions enter in one of two
ways (``TransformerConfig.position``):

- ``"relative"`` (default, the paper's choice): a T5-style bucketed relative position bias,
  one learned scalar per (bucket, head), looked up once per forward as a bias per distance
  and shared by all layers. Distances below ``num_buckets // 2`` get a bucket each; larger
  ones share logarithmically spaced buckets up to ``max_distance``. Attention runs block by
  block (:func:`~musiclm.training.attention.biased_causal_attention`), never storing
  ``T x T`` scores; ``attention="dense"`` selects the reference path (SDPA with a dense
  ``[1, H, T, T]`` float mask), equal within float tolerance and much heavier at long
  crops.
- ``"rotary"``: rotary embeddings on queries and keys (no bias), which lets
  ``scaled_dot_product_attention`` pick its flash kernel on GPU.

Incremental decoding: create a cache with :meth:`DecoderTransformer.new_cache` and call
``model(tokens, cache=cache)`` repeatedly; each call appends the new tokens' keys/values
and returns logits only for the new tokens. Feeding a prompt in one call and then one
token per call gives the same logits (within float tolerance) as one full forward over the
whole sequence. ``activation_checkpointing`` recomputes each block's activations in
backward instead of storing them (training only). Sequences in a batch must share their length (the stage layout pads on the
right only, and causal attention never lets a real token see a pad token after it).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from musiclm.training.attention import (
    RelativePositionBias,
    biased_causal_attention,
    dense_biased_attention,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

POSITIONS = ("relative", "rotary")
ATTENTIONS = ("blocked", "dense")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of one stage transformer (the paper: 24 layers, 16 heads, d=1024, ff=4096, 0.1).

    ``attention`` (relative positions): ``"blocked"`` (default; ``attention_block`` query
    rows at a time) or ``"dense"`` (the SDPA reference with a ``[1, H, T, T]`` mask).
    ``activation_checkpointing``: recompute each block in backward (less memory, ~1/3 more
    compute). None of the three changes the weights or, beyond float rounding, the outputs.
    """

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
    attention: str = "blocked"
    attention_block: int = 128
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention_block < 1:
            raise ValueError(f"attention_block must be >= 1, got {self.attention_block}")
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
    """Multi-head causal self-attention: blocked with the relative bias, else SDPA."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``.

        ``bias`` (see :meth:`DecoderTransformer.attention_inputs`): the relative bias per
        distance ``[H, T_keys]`` (blocked attention), a float mask ``[1, H or 1, T, T_keys]``
        (-inf hides a key; dense reference, or rotary with a cached chunk), or None: plain
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
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=t > 1)
        elif bias.ndim == 2:
            y = biased_causal_attention(q, k, v, bias, dropout, cfg.attention_block)
        else:
            y = dense_biased_attention(q, k, v, bias, dropout)
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

    def forward(self, x, bias, rotary, cache, layer) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), bias, rotary, cache, layer))
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

    def attention_inputs(
        self, t: int, offset: int, device: torch.device
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """What every layer's attention needs for ``t`` queries after ``offset`` cached keys:
        ``(bias, rotary)``. Relative: the bias per distance ``[H, offset+t]`` (blocked) or
        its dense mask ``[1, H, t, offset+t]`` (reference). Rotary: cos/sin tables, and a
        ``[1, 1, t, offset+t]`` mask only for a chunk after cached keys."""
        if self.position_bias is not None:
            bias = self.position_bias(offset + t, device)
            if self.config.attention == "dense":
                return RelativePositionBias.dense(bias, t), None
            return bias, None
        q_pos = torch.arange(offset, offset + t, device=device)
        rotary = rotary_tables(q_pos, self.config.head_dim, self.config.rotary_base)
        if offset == 0 or t == 1:
            return None, rotary  # plain causal, or one query that may see every cached key
        future = torch.arange(offset + t, device=device)[None, :] > q_pos[:, None]
        mask = torch.zeros(t, offset + t, device=device).masked_fill(future, float("-inf"))
        return mask[None, None], rotary

    def hidden(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final normalized hidden states ``[B, T, D]`` for ``tokens [B, T]``."""
        offset = 0 if cache is None else cache.length
        bias, rotary = self.attention_inputs(tokens.shape[1], offset, tokens.device)
        x = self.embed_dropout(self.embedding(tokens))
        recompute = self.config.activation_checkpointing and self.training and cache is None
        for layer, block in enumerate(self.blocks):
            if recompute and torch.is_grad_enabled():
                x = checkpoint(block, x, bias, rotary, None, layer, use_reentrant=False)
            else:
                x = block(x, bias, rotary, cache, layer)
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
