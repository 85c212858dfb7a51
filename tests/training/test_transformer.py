"""The stage transformer: KV-cache decoding equals the full forward; positions matter."""

import pytest
import torch
from musiclm.training.transformer import (
    DecoderTransformer,
    TransformerConfig,
    relative_position_bucket,
)


def make_model(position: str, seed: int = 0) -> DecoderTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=50,
        dim=32,
        depth=2,
        heads=4,
        ff_dim=64,
        dropout=0.1,
        position=position,
        num_buckets=8,
        max_distance=16,
    )
    return DecoderTransformer(config).eval()


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_kv_cache_logits_equal_full_forward(position):
    model = make_model(position)
    tokens = torch.randint(0, 50, (3, 40))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch=3, capacity=40)
        pieces = [model(tokens[:, :17], cache=cache)]  # a prompt, then one token per call
        pieces += [model(tokens[:, i : i + 1], cache=cache) for i in range(17, 30)]
        pieces.append(model(tokens[:, 30:], cache=cache))  # and a chunk again
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_causal_future_tokens_do_not_change_past_logits(position):
    model = make_model(position)
    a = torch.randint(0, 50, (1, 20))
    b = a.clone()
    b[:, 12:] = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :12], model(b)[:, :12])


def test_positions_change_the_output():
    """The same token repeated gets different outputs at different distances from a marker."""
    model = make_model("relative")
    tokens = torch.full((1, 30), 7)
    tokens[0, 0] = 3
    with torch.no_grad():
        logits = model(tokens)
    assert not torch.allclose(logits[0, 5], logits[0, 25], atol=1e-4)


def test_relative_buckets_are_exact_then_logarithmic():
    rel = -torch.arange(0, 200)
    buckets = relative_position_bucket(rel, num_buckets=32, max_distance=128)
    assert buckets[:16].tolist() == list(range(16))
    assert bool((buckets[1:] >= buckets[:-1]).all()) and buckets.max() == 31
    assert buckets[128:].unique().tolist() == [31]


def test_cache_select_and_capacity_error():
    model = make_model("relative")
    tokens = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(tokens[[1]])
        cache = model.new_cache(batch=2, capacity=10)
        model(tokens[:, :6], cache=cache)
        cache.select(torch.tensor([1]))
        rest = model(tokens[[1], 6:], cache=cache)
        torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="larger capacity"):
            model(tokens[[1], :1], cache=cache)


def test_dropout_is_active_in_training_only():
    model = make_model("relative")
    tokens = torch.randint(0, 50, (2, 12))
    model.train()
    assert not torch.allclose(model(tokens), model(tokens))
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))
