"""Residual vector quantizer: fixed-codebook functions and the trainable SoundStream module."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from musiclm.tokenizers.rvq import (
    ResidualVectorQuantizer,
    code_statistics,
    rvq_decode,
    rvq_encode,
)


def _clustered(n: int, dim: int, centres: int, seed: int) -> torch.Tensor:
    """n vectors [n, dim] around ``centres`` random centres (structure an RVQ can learn)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=gen) * 3
    pick = torch.randint(0, centres, (n,), generator=gen)
    return means[pick] + 0.3 * torch.randn(n, dim, generator=gen)


def test_fixed_codebooks_shapes_numpy_and_levels():
    torch.manual_seed(0)
    books = torch.randn(6, 32, 16) * 0.5 ** torch.arange(6.0)[:, None, None]
    books[:, 0] = 0.0  # a zero code per level: an extra level can never increase the error
    x = torch.randn(3, 20, 16)
    codes = rvq_encode(x, books)
    assert codes.shape == (3, 20, 6) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    assert rvq_decode(codes, books).shape == x.shape
    # [B, D] input and numpy in -> numpy out, same codes as torch
    flat_codes = rvq_encode(x[:, 0].numpy(), books.numpy(), levels=2)
    assert isinstance(flat_codes, np.ndarray) and flat_codes.shape == (3, 2)
    np.testing.assert_array_equal(flat_codes, codes[:, 0, :2].numpy())
    # the first levels of a full encoding equal an encoding with fewer levels
    assert torch.equal(rvq_encode(x, books, levels=3), codes[..., :3])
    # each extra level shrinks the reconstruction error
    errors = [float((x - rvq_decode(codes[..., :q], books)).pow(2).mean()) for q in range(1, 7)]
    assert all(b <= a for a, b in itertools.pairwise(errors))
    assert errors[-1] < errors[0]


def test_fixed_codebooks_reject_bad_input():
    books = torch.randn(2, 8, 4)
    with pytest.raises(ValueError, match="dimension 5"):
        rvq_encode(torch.randn(3, 5), books)
    with pytest.raises(ValueError, match=r"levels must be in 1\.\.2"):
        rvq_encode(torch.randn(3, 4), books, levels=3)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 8\)"):
        rvq_decode(torch.tensor([[9, 0]]), books)
    with pytest.raises(ValueError, match="3 levels"):
        rvq_decode(torch.zeros(1, 3, dtype=torch.long), books)


def _train(rvq: ResidualVectorQuantizer, data: torch.Tensor, steps: int, batch: int = 16) -> None:
    """EMA-train on random batches of data [N, D] shaped as frames [batch, D, N // batch]."""
    rvq.train()
    gen = torch.Generator().manual_seed(1)
    frames = len(data) // batch
    for _ in range(steps):
        rows = torch.randint(0, len(data), (batch * frames,), generator=gen)
        rvq(data[rows].reshape(batch, frames, -1).transpose(1, 2))


def test_module_learns_and_more_levels_reconstruct_better():
    torch.manual_seed(0)
    data = _clustered(4096, 16, centres=64, seed=0)
    rvq = ResidualVectorQuantizer(16, num_levels=4, codebook_size=64)
    held_out = _clustered(512, 16, centres=64, seed=0)[:, :, None].permute(2, 1, 0)  # [1, D, N]
    untrained = float((rvq.decode(rvq.encode(held_out)) - held_out).pow(2).mean())
    _train(rvq, data, steps=30)
    rvq.eval()
    codes = rvq.encode(held_out)
    assert codes.shape == (1, 4, 512) and codes.dtype == torch.int64
    errors = [float((rvq.decode(codes[:, :q]) - held_out).pow(2).mean()) for q in (1, 2, 4)]
    assert errors[0] < 0.5 * untrained
    assert errors[2] < errors[1] < errors[0]
    # eval forward == encode + decode, with no codebook change
    before = rvq.codebooks.clone()
    out = rvq(held_out)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, rvq.decode(codes))
    assert torch.equal(before, rvq.codebooks)


def test_straight_through_gradient_and_commitment():
    rvq = ResidualVectorQuantizer(8, num_levels=3, codebook_size=16, quantizer_dropout=False)
    x = torch.randn(2, 8, 10, requires_grad=True)
    out = rvq(x)
    assert out.commitment_loss.item() > 0
    # straight-through: d(sum quantized)/dx = 1 everywhere; commitment pulls x towards codes
    out.quantized.sum().backward(retain_graph=True)
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    x.grad = None
    out.commitment_loss.backward()
    assert x.grad.abs().sum() > 0


def test_quantizer_dropout_uses_fewer_levels_per_item():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, num_levels=6, codebook_size=16)
    x = torch.randn(32, 8, 5)
    rvq.train()
    rvq(x)  # initializes the codebooks
    books = rvq.codebooks.clone()  # the forward quantizes with these, then updates them
    out = rvq(x)
    all_levels = rvq_decode(out.codes.transpose(1, 2), books).transpose(1, 2)
    # items quantized with fewer levels differ from the all-level reconstruction
    per_item_full = torch.isclose(out.quantized, all_levels, atol=1e-6).flatten(1).all(1)
    assert 0 < int(per_item_full.sum()) < 32


def _usage_after_shift(threshold: float) -> float:
    """Codebook usage (fraction of codes hit on new data) after the data moves away."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(
        16, num_levels=2, codebook_size=128, decay=0.9, dead_code_threshold=threshold
    )
    _train(rvq, _clustered(4096, 16, centres=256, seed=0), steps=5)
    # new data occupies a small region the first codebook barely covers: most codes die
    shifted = _clustered(4096, 16, centres=256, seed=7) * 0.2 + 6.0
    _train(rvq, shifted, steps=60)
    rvq.eval()
    frames = shifted[:2048].t()[None]  # [1, D, N]
    usage, _perplexity = code_statistics(rvq.encode(frames), rvq.codebook_size)
    return float(usage[0])


def test_dead_code_restart_keeps_usage_up():
    with_restart = _usage_after_shift(threshold=0.2)
    without = _usage_after_shift(threshold=0.0)
    assert with_restart >= 0.5, with_restart
    assert without < 0.2, without


def test_statistics_and_training_metrics():
    codes = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]])  # [B=1, Q=2, T=4]
    usage, perplexity = code_statistics(codes, 4)
    torch.testing.assert_close(usage, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(perplexity, torch.tensor([2.0, 1.0]))
    rvq = ResidualVectorQuantizer(8, num_levels=2, codebook_size=16)
    out = rvq.train()(torch.randn(4, 8, 20))
    assert out.usage.shape == (2,) and out.perplexity.shape == (2,)
    assert bool(((out.usage > 0) & (out.usage <= 1)).all())
