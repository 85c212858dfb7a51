"""Causal self-attention with a T5 relative position bias that never stores ``T x T`` scores.

The T5 bias of a causal decoder depends only on the distance ``d = query_pos - key_pos``
(``d >= 0`` where attention is allowed), so a whole ``[H, T, T]`` bias is one learned
vector per head, ``distance_bias [H, T]``, read at ``d``. :class:`RelativePositionBias`
returns that vector: the bucket of every distance is computed once per sequence length
(cached, grown when a longer sequence comes) and the learned table is looked up once per
forward.

:func:`biased_causal_attention` computes ``softmax(q k^T / sqrt(Dh) + bias) v`` one block
of ``block_size`` query rows at a time: each block gathers its ``[H, rows, keys]`` slice of
the bias from ``distance_bias`` (future keys read a ``-inf`` entry), and keys after the
block's last query are never touched. Only ``q, k, v``, the output and one log-sum-exp per
query row are kept for backward; the backward recomputes each block's probabilities
(FlashAttention's recomputation, written with torch ops), accumulates the gradients of
``q, k, v`` and sums the score gradients of each distance into ``distance_bias``'s gradient.
Attention dropout draws each block's keep-mask from a generator seeded per forward and
block, so the backward regenerates exactly the mask the forward used. Peak extra memory is
a few ``[B, H, block_size, T]`` blocks instead of ``[B, H, T, T]`` tensors per layer.

:func:`dense_biased_attention` is the reference: the same attention through
``F.scaled_dot_product_attention`` with a dense ``[1, H, Tq, Tk]`` float mask, which keeps
SDPA on its math path and stores scores and probabilities of every layer for backward.

Without autograd (inference and KV-cached decoding) each block goes through SDPA's fused
kernel with its bias block as the mask instead.

Why not FlexAttention: torch 2.11's ``flex_attention`` with a ``score_mod`` refuses
backward on CPU ("FlexAttention does not support backward on CPU") and has no dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_SIZE = 128  # query rows per block (fastest of 64/128/256 on this CPU at T=2265)


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
    """Learned T5 bias, one scalar per (bucket, head), read per causal distance."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)
        self._buckets = torch.empty(0, dtype=torch.long)  # bucket of distance 0, 1, ...

    def buckets(self, n: int, device: torch.device) -> torch.Tensor:
        """Buckets of distances ``0 .. n-1`` -> LongTensor ``[n]`` (computed once per length)."""
        if self._buckets.numel() < n or self._buckets.device != device:
            distances = torch.arange(max(n, self._buckets.numel()), device=device)
            self._buckets = relative_position_bucket(
                -distances, self.num_buckets, self.max_distance
            )
        return self._buckets[:n]

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        """Bias by distance ``[H, n]``: entry ``[h, d]`` is head ``h``'s bias at distance ``d``."""
        return self.embedding(self.buckets(n, device)).t()

    @staticmethod
    def dense(distance_bias: torch.Tensor, queries: int) -> torch.Tensor:
        """The full causal mask ``[1, H, queries, Tk]`` (future keys ``-inf``) of the last
        ``queries`` positions, from ``distance_bias [H, Tk]`` (what the reference uses)."""
        keys = distance_bias.shape[1]
        return _bias_block(_pad_future(distance_bias), keys - queries, keys, keys).unsqueeze(0)


def _pad_future(distance_bias: torch.Tensor) -> torch.Tensor:
    """``[H, Tk]`` -> ``[H, Tk + 1]`` with a leading ``-inf`` entry that future keys read."""
    return F.pad(distance_bias, (1, 0), value=float("-inf"))


def _block_index(start: int, stop: int, keys: int, device: torch.device) -> torch.Tensor:
    """Index into the padded bias for query positions ``start..stop-1`` and keys ``0..keys-1``:
    ``distance + 1``, or 0 (the ``-inf`` entry) for a future key -> LongTensor ``[rows, keys]``."""
    rows = torch.arange(start + 1, stop + 1, device=device)
    return (rows[:, None] - torch.arange(keys, device=device)[None, :]).clamp_(min=0)


def _bias_block(padded: torch.Tensor, start: int, stop: int, keys: int) -> torch.Tensor:
    """Bias ``[H, rows, keys]`` of query positions ``start..stop-1`` from the padded bias."""
    index = _block_index(start, stop, keys, padded.device)
    return padded.index_select(1, index.view(-1)).view(padded.shape[0], *index.shape)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Scores and softmax run in float32 at least (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _keep_mask(like: torch.Tensor, dropout_p: float, seed: int, block: int) -> torch.Tensor:
    """Dropout keep-mask scaled by ``1 / (1 - p)``, shaped like ``like``, a pure function of
    ``(seed, block)`` so that backward regenerates the forward's mask."""
    generator = torch.Generator(device=like.device).manual_seed(seed + block)
    keep = torch.empty_like(like).uniform_(generator=generator)  # 2x faster than bernoulli_
    return keep.ge_(dropout_p).mul_(1.0 / (1.0 - dropout_p))


class _BlockedBiasedAttention(torch.autograd.Function):
    """Autograd of :func:`biased_causal_attention` (inputs documented there)."""

    @staticmethod
    def forward(ctx, q, k, v, distance_bias, dropout_p, seed, block_size):
        with torch.autocast(q.device.type, enabled=False):
            rows, keys = q.shape[2], k.shape[2]
            offset = keys - rows
            acc = _accumulation_dtype(q)
            padded = _pad_future(distance_bias.to(acc))
            q_scaled = q * q.shape[-1] ** -0.5
            out = torch.empty_like(q)
            lse = torch.empty(q.shape[:3], device=q.device, dtype=acc)
            for start in range(0, rows, block_size):
                stop = min(start + block_size, rows)
                end = offset + stop  # keys after the block's last query are never read
                scores = torch.matmul(q_scaled[:, :, start:stop], k[:, :, :end].mT).to(acc)
                scores += _bias_block(padded, offset + start, offset + stop, end)
                top = scores.amax(dim=-1, keepdim=True)
                probs = scores.sub_(top).exp_()
                total = probs.sum(dim=-1, keepdim=True)
                if dropout_p > 0:
                    probs = probs * _keep_mask(probs, dropout_p, seed, start)
                block_out = torch.matmul(probs.to(v.dtype), v[:, :, :end])
                out[:, :, start:stop] = block_out / total.to(v.dtype)
                lse[:, :, start:stop] = (top + total.log()).squeeze(-1)
        ctx.save_for_backward(q_scaled, k, v, distance_bias, out, lse)
        ctx.settings = (dropout_p, seed, block_size, q.shape[-1] ** -0.5)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, distance_bias, out, lse = ctx.saved_tensors
        dropout_p, seed, block_size, scale = ctx.settings
        with torch.autocast(q_scaled.device.type, enabled=False):
            rows, keys = q_scaled.shape[2], k.shape[2]
            offset = keys - rows
            acc = _accumulation_dtype(q_scaled)
            padded = _pad_future(distance_bias.to(acc))
            grad_out = grad_out.to(v.dtype)
            delta = (grad_out.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True)
            grad_q = torch.empty_like(q_scaled)
            grad_k = torch.zeros(k.shape, device=k.device, dtype=acc)
            grad_v = torch.zeros(v.shape, device=v.device, dtype=acc)
            grad_bias = torch.zeros_like(padded)
            for start in range(0, rows, block_size):
                stop = min(start + block_size, rows)
                end = offset + stop
                q_block, d_out = q_scaled[:, :, start:stop], grad_out[:, :, start:stop]
                index = _block_index(offset + start, offset + stop, end, k.device)
                bias = padded.index_select(1, index.view(-1)).view(-1, *index.shape)
                scores = torch.matmul(q_block, k[:, :, :end].mT).to(acc).add_(bias)
                probs = scores.sub_(lse[:, :, start:stop, None]).exp_()
                d_probs = torch.matmul(d_out, v[:, :, :end].mT).to(acc)
                if dropout_p > 0:
                    keep = _keep_mask(probs, dropout_p, seed, start)
                    grad_v[:, :, :end] += torch.matmul((probs * keep).to(v.dtype).mT, d_out)
                    d_probs *= keep
                else:
                    grad_v[:, :, :end] += torch.matmul(probs.to(v.dtype).mT, d_out)
                d_scores = d_probs.sub_(delta[:, :, start:stop]).mul_(probs)
                grad_bias.index_add_(1, index.view(-1), d_scores.sum(0).view(padded.shape[0], -1))
                d_scores = d_scores.to(k.dtype)
                grad_q[:, :, start:stop] = torch.matmul(d_scores, k[:, :, :end]) * scale
                grad_k[:, :, :end] += torch.matmul(d_scores.mT, q_block)
        return (
            grad_q,
            grad_k.to(k.dtype),
            grad_v.to(v.dtype),
            grad_bias[:, 1:].to(distance_bias.dtype),
            None,
            None,
            None,
        )


def biased_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    distance_bias: torch.Tensor,
    dropout_p: float = 0.0,
    block_size: int = BLOCK_SIZE,
) -> torch.Tensor:
    """Causal attention with a relative bias, block by block -> ``[B, H, Tq, Dh]``.

    ``q [B, H, Tq, Dh]`` are the last ``Tq`` of the ``Tk`` positions of ``k, v
    [B, H, Tk, Dh]`` (``Tk > Tq`` when earlier keys come from a KV cache).
    ``distance_bias [H, Tk]``: the bias added to the score of a query and a key at distance
    ``query_pos - key_pos``; keys after a query are hidden. ``dropout_p`` drops attention
    probabilities (training). Differentiable in ``q, k, v`` and ``distance_bias``.
    """
    if k.shape[2] < q.shape[2] or distance_bias.shape[1] != k.shape[2]:
        raise ValueError(
            f"{q.shape[2]} queries, {k.shape[2]} keys and a bias over {distance_bias.shape[1]} "
            "distances: need queries <= keys == distances"
        )
    inputs = (q, k, v, distance_bias)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return _blocked_sdpa(q, k, v, distance_bias, dropout_p, block_size)
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0
    return _BlockedBiasedAttention.apply(q, k, v, distance_bias, dropout_p, seed, block_size)


def _blocked_sdpa(q, k, v, distance_bias, dropout_p: float, block_size: int) -> torch.Tensor:
    """Without autograd (inference, KV-cached decoding): each block through SDPA's fused
    kernel with its ``[1, H, rows, keys]`` bias block as the float mask."""
    rows, keys = q.shape[2], k.shape[2]
    offset = keys - rows
    padded = _pad_future(distance_bias.to(q.dtype))
    blocks = []
    for start in range(0, rows, block_size):
        stop = min(start + block_size, rows)
        end = offset + stop
        bias = _bias_block(padded, offset + start, offset + stop, end).unsqueeze(0)
        blocks.append(
            F.scaled_dot_product_attention(
                q[:, :, start:stop],
                k[:, :, :end],
                v[:, :, :end],
                attn_mask=bias,
                dropout_p=dropout_p,
            )
        )
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)


def dense_biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """The reference: SDPA with a dense float ``mask [1, H, Tq, Tk]`` (from
    :meth:`RelativePositionBias.dense`) -> ``[B, H, Tq, Dh]``; stores ``T x T`` per layer."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout_p)
