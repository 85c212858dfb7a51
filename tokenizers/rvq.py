"""Residual vector quantization: plain functions over fixed codebooks and a trainable module.

A residual vector quantizer (RVQ) with ``L`` levels of ``K`` codes in ``D`` dimensions
quantizes a vector ``x`` level by level: level 1 picks the code nearest to ``x``, level 2
the code nearest to what level 1 left over, and so on. The sum of the picked codes of the
first ``Q`` levels approximates ``x``; more levels, finer approximation.

* :func:`rvq_encode` / :func:`rvq_decode` work on fixed codebooks ``[L, K, D]`` (torch or
  numpy), e.g. MuLan's faiss-fitted codebooks.
* :class:`ResidualVectorQuantizer` is SoundStream's trainable quantizer: EMA codebooks,
  k-means initialization on the first training batch, dead-code restart from batch
  vectors, quantizer dropout, commitment loss and straight-through gradients. Under DDP
  its EMA statistics are all-reduced so every replica keeps the same codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from musiclm.tokenizers.kmeans import fit_kmeans
from torch import nn


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (squared L2) code for each row: x [N, D], codebook [K, D] -> [N]."""
    x = x.float()
    codebook = codebook.float()
    dist_sq = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)[None, :]
    return dist_sq.argmin(dim=1)


def _check_codebooks(codebooks: torch.Tensor) -> None:
    if codebooks.ndim != 3:
        raise ValueError(
            f"codebooks must be [levels, codes, dim], got shape {tuple(codebooks.shape)}"
        )


def rvq_encode(
    x: torch.Tensor | np.ndarray,
    codebooks: torch.Tensor | np.ndarray,
    levels: int | None = None,
) -> torch.Tensor | np.ndarray:
    """Residual-quantize vectors with fixed codebooks.

    ``x`` is ``[..., D]`` (e.g. ``[B, D]`` or ``[B, T, D]``), ``codebooks`` is ``[L, K, D]``;
    ``levels`` (default ``L``) takes the first levels only. Returns int64 codes
    ``[..., levels]`` of the same array type as ``x`` (numpy in, numpy out).
    """
    as_numpy = isinstance(x, np.ndarray)
    xt = torch.as_tensor(x)
    books = torch.as_tensor(codebooks, device=xt.device)
    _check_codebooks(books)
    num_levels = books.shape[0] if levels is None else levels
    if not 1 <= num_levels <= books.shape[0]:
        raise ValueError(f"levels must be in 1..{books.shape[0]}, got {levels}")
    if xt.shape[-1] != books.shape[-1]:
        raise ValueError(
            f"vectors have dimension {xt.shape[-1]} but the codebooks have {books.shape[-1]}"
        )
    residual = xt.reshape(-1, xt.shape[-1]).float()
    codes = []
    for level in range(num_levels):
        idx = nearest_code(residual, books[level])
        residual = residual - books[level].float()[idx]
        codes.append(idx)
    out = torch.stack(codes, dim=-1).reshape(*xt.shape[:-1], num_levels)
    return out.numpy() if as_numpy else out


def rvq_decode(
    codes: torch.Tensor | np.ndarray, codebooks: torch.Tensor | np.ndarray
) -> torch.Tensor | np.ndarray:
    """Sum of the codes' vectors: codes ``[..., Q]`` (any Q <= L) -> vectors ``[..., D]``.

    Numpy in, numpy out; the output dtype is the codebooks' dtype.
    """
    as_numpy = isinstance(codes, np.ndarray)
    ct = torch.as_tensor(codes).long()
    books = torch.as_tensor(codebooks, device=ct.device)
    _check_codebooks(books)
    if ct.shape[-1] > books.shape[0]:
        raise ValueError(
            f"codes have {ct.shape[-1]} levels but the codebooks only {books.shape[0]}"
        )
    if ct.numel() and (ct.min() < 0 or ct.max() >= books.shape[1]):
        raise ValueError(f"codes must be in [0, {books.shape[1]})")
    out = sum(books[level][ct[..., level]] for level in range(ct.shape[-1]))
    if ct.shape[-1] == 0:
        out = books.new_zeros(*ct.shape[:-1], books.shape[-1])
    return out.numpy() if as_numpy else out


def code_statistics(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level usage fraction and perplexity of codes ``[B, Q, T]``.

    Returns ``(usage [Q], perplexity [Q])``: usage = fraction of the ``codebook_size`` codes
    that occur at least once; perplexity = exp(entropy) of the code histogram (1 = one code,
    ``codebook_size`` = all codes equally often).
    """
    flat = codes.transpose(0, 1).reshape(codes.shape[1], -1)
    counts = torch.zeros(flat.shape[0], codebook_size, device=codes.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    usage = (counts > 0).float().mean(1)
    return usage, _perplexity(counts)


def _perplexity(counts: torch.Tensor) -> torch.Tensor:
    probs = counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return entropy.exp()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class QuantizerOutput:
    """What one :meth:`ResidualVectorQuantizer.forward` returns.

    ``quantized`` [B, D, T] (straight-through: gradients flow to the input), ``codes``
    [B, Q, T] int64 (all levels; levels dropped for an item still carry their nearest code),
    ``commitment_loss`` a scalar, ``usage``/``perplexity`` [Q] from the EMA code counts.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    usage: torch.Tensor
    perplexity: torch.Tensor


class ResidualVectorQuantizer(nn.Module):
    """SoundStream's RVQ over frame vectors ``[B, D, T]``.

    Args:
        dim: vector dimension D.
        num_levels: quantizer levels Q (12 in the paper).
        codebook_size: codes per level K (1024 in the paper).
        decay: EMA decay of the code counts and sums.
        commitment_weight: weight of ``||x - sg(q)||^2`` in ``commitment_loss``.
        dead_code_threshold: a code whose EMA count falls below this fraction of a uniform
            share (``vectors per batch / K``) is dead and restarted from a batch vector.
        quantizer_dropout: in training, this share of the batch items (``True`` = all, as
            in SoundStream; 0.5 as in DAC) uses a random number of levels in ``1..Q``, the
            rest all ``Q``, so that one model serves every bitrate.
        kmeans_iters: Lloyd iterations of the first-batch k-means initialization (faiss).
    """

    def __init__(
        self,
        dim: int,
        num_levels: int = 12,
        codebook_size: int = 1024,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        dead_code_threshold: float = 0.05,
        quantizer_dropout: float = 1.0,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_levels < 1 or codebook_size < 2:
            raise ValueError("an RVQ needs num_levels >= 1 and codebook_size >= 2")
        self.dim = dim
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.dead_code_threshold = dead_code_threshold
        if not 0.0 <= float(quantizer_dropout) <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.quantizer_dropout = float(quantizer_dropout)
        self.kmeans_iters = kmeans_iters
        self.eps = eps
        books = torch.randn(num_levels, codebook_size, dim) / math.sqrt(dim)
        self.register_buffer("codebooks", books)
        self.register_buffer("ema_count", torch.zeros(num_levels, codebook_size))
        self.register_buffer("ema_sum", books.clone())
        self.register_buffer("initialized", torch.zeros(num_levels, dtype=torch.bool))

    # ----- inference -------------------------------------------------------------------
    def encode(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes of frame vectors: x [B, D, T] -> LongTensor [B, levels or Q, T]."""
        codes = rvq_encode(x.transpose(1, 2), self.codebooks, levels)
        return codes.permute(0, 2, 1).contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Frame vectors from codes [B, Q', T] with any Q' <= Q -> [B, D, T]."""
        if codes.ndim != 3:
            raise ValueError(f"codes must be [B, levels, T], got shape {tuple(codes.shape)}")
        return rvq_decode(codes.permute(0, 2, 1), self.codebooks).transpose(1, 2)

    # ----- training --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, levels: int | None = None) -> QuantizerOutput:
        """Quantize x [B, D, T]; in training mode also update the codebooks (EMA, restarts).

        ``levels`` fixes the number of levels for every item (no dropout); otherwise
        training uses quantizer dropout and eval uses all levels.
        """
        batch, dim, frames = x.shape
        flat = x.float().transpose(1, 2).reshape(-1, dim)  # [B*T, D], keeps the gradient
        # Active level count per vector: quantizer dropout draws one per batch item.
        if levels is not None:
            active = torch.full((batch,), levels, device=x.device)
        elif self.training and self.quantizer_dropout > 0:
            active = torch.randint(1, self.num_levels + 1, (batch,), device=x.device)
            keep_all = torch.rand(batch, device=x.device) >= self.quantizer_dropout
            active = active.masked_fill(keep_all, self.num_levels)
        else:
            active = torch.full((batch,), self.num_levels, device=x.device)
        active = active.repeat_interleave(frames)  # [B*T]

        quantized = torch.zeros_like(flat.detach())  # sum of the active levels' codes
        passed = torch.zeros_like(quantized)  # sum of all previous levels' codes
        commitment = flat.new_zeros(())
        codes = []
        for level in range(self.num_levels):
            mask = active > level
            residual = flat - passed  # gradient flows to x; the codes are constants
            target = residual.detach()
            if self.training and not bool(self.initialized[level]):
                self._initialize(level, target)
            idx = nearest_code(target, self.codebooks[level])
            chosen = self.codebooks[level][idx]
            if self.training:
                self._ema_update(level, target, idx, len(flat))
            if mask.any():
                err = (residual - chosen).pow(2).mean(1)
                commitment = commitment + (err * mask).sum() / mask.sum()
            quantized = quantized + mask[:, None] * chosen
            passed = passed + chosen
            codes.append(idx)
        quantized = quantized.reshape(batch, frames, dim).transpose(1, 2).to(x.dtype)
        # Straight-through: forward the quantized vectors, pass gradients to x unchanged.
        out = x + (quantized - x).detach()
        code_tensor = torch.stack(codes, 1).reshape(batch, frames, self.num_levels)
        usage, perplexity = self.ema_statistics(len(flat))
        return QuantizerOutput(
            quantized=out,
            codes=code_tensor.permute(0, 2, 1),
            commitment_loss=self.commitment_weight * commitment,
            usage=usage,
            perplexity=perplexity,
        )

    def ema_statistics(self, vectors_per_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-level (usage fraction, perplexity) [Q] from the EMA code counts.

        A code counts as used while its EMA count is above the dead-code threshold (a
        freshly restarted code sits exactly at it until batch vectors pick it).
        """
        floor = self._dead_floor(vectors_per_batch)
        usage = (self.ema_count > floor).float().mean(1)
        return usage, _perplexity(self.ema_count)

    def _dead_floor(self, vectors_per_batch: int) -> float:
        return self.dead_code_threshold * vectors_per_batch / self.codebook_size

    @torch.no_grad()
    def _initialize(self, level: int, vectors: torch.Tensor) -> None:
        """Set level ``level``'s codebook by k-means on this batch's residual vectors [N, D].

        The EMA counts start at each code's share of the batch, so codes that k-means left
        empty (or duplicates, when the batch has fewer vectors than codes) are dead at once
        and restarted from the next batches' vectors.
        """
        books = _kmeans(vectors, self.codebook_size, self.kmeans_iters)
        if _distributed():
            dist.broadcast(books, src=0)
        counts = torch.bincount(nearest_code(vectors, books), minlength=self.codebook_size)
        if _distributed():
            counts = counts.float()
            dist.all_reduce(counts)
            counts = counts / dist.get_world_size()
        self.codebooks[level] = books
        self.ema_count[level] = counts.float()
        self.ema_sum[level] = books * counts.float()[:, None]
        self.initialized[level] = True

    @torch.no_grad()
    def _ema_update(
        self, level: int, vectors: torch.Tensor, idx: torch.Tensor, vectors_per_batch: int
    ) -> None:
        """EMA step of one level's counts and sums from vectors [N, D] assigned to idx [N]."""
        counts = torch.zeros(self.codebook_size, device=vectors.device)
        counts.index_add_(0, idx, torch.ones_like(idx, dtype=counts.dtype))
        sums = torch.zeros(self.codebook_size, self.dim, device=vectors.device)
        sums.index_add_(0, idx, vectors)
        if _distributed():
            stats = torch.cat([counts[:, None], sums], dim=1)
            dist.all_reduce(stats)
            world = dist.get_world_size()
            counts, sums = stats[:, 0] / world, stats[:, 1:] / world
        self.ema_count[level].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[level].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count[level].sum()
        smoothed = (
            (self.ema_count[level] + self.eps) / (total + self.codebook_size * self.eps) * total
        )
        self.codebooks[level] = self.ema_sum[level] / smoothed[:, None]
        self._restart_dead(level, vectors, vectors_per_batch)

    @torch.no_grad()
    def _restart_dead(self, level: int, vectors: torch.Tensor, vectors_per_batch: int) -> None:
        """Re-seed codes whose EMA count fell below the floor with random batch vectors."""
        floor = self._dead_floor(vectors_per_batch)
        dead = self.ema_count[level] < floor
        num_dead = int(dead.sum())
        if num_dead == 0 or len(vectors) == 0:
            return
        pick = torch.randint(0, len(vectors), (num_dead,), device=vectors.device)
        fresh = vectors[pick]
        if _distributed():
            dist.broadcast(fresh, src=0)
        # A restarted code starts at the floor: unless batch vectors pick it at the next
        # step, it falls below again and is re-seeded once more.
        self.codebooks[level][dead] = fresh
        self.ema_sum[level][dead] = fresh * floor
        self.ema_count[level][dead] = floor


def _kmeans(vectors: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """k centroids [k, D] of vectors [N, D] by :func:`fit_kmeans` (faiss).

    With fewer vectors than codes (a tiny first batch) the codes are batch vectors drawn
    with replacement plus a little noise; dead-code restarts spread them out later.
    """
    vectors = vectors.float()
    if len(vectors) < k:
        pick = torch.randint(0, len(vectors), (k,), device=vectors.device)
        jitter = torch.randn(k, vectors.shape[1], device=vectors.device)
        return vectors[pick] + 1e-3 * vectors.std() * jitter
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    centroids = fit_kmeans(vectors.cpu().numpy(), k, seed=seed, niter=iters, refine_niter=0)
    return torch.from_numpy(centroids).to(vectors.device)
