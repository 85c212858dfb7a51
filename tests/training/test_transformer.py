"""The stage transformer: KV-cache decoding equals the full forward; positions matter; the
blocked relative-bias attention equals the dense reference and never stores T x T."""

import dataclasses

import pytest
import torch
from musiclm.training.attention import (
    RelativePositionBias,
    biased_causal_attention,
    relative_position_bucket,
)
from musiclm.training.transformer import DecoderTransformer, TransformerConfig
from torch.utils._python_dispatch import TorchDispatchMode


def make_model(position: str, seed: int = 0, **options) -> DecoderTransformer:
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
        **options,
    )
    return DecoderTransformer(config).eval()


def with_options(model: DecoderTransformer, **options) -> DecoderTransformer:
    """The same weights under other transformer options."""
    other = DecoderTransformer(dataclasses.replace(model.config, **options))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def loss_and_grads(model, tokens):
    model.zero_grad()
    logits = model(tokens)
    logits.float().logsumexp(-1).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("position", "options"),
    [("relative", {}), ("relative", {"attention_block": 7}), ("rotary", {})],
)
def test_kv_cache_logits_equal_full_forward(position, options):
    model = make_model(position, **options)
    tokens = torch.randint(0, 50, (3, 40))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch=3, capacity=40)
        pieces = [model(tokens[:, :17], cache=cache)]  # a prompt, then one token per call
        pieces += [model(tokens[:, i : i + 1], cache=cache) for i in range(17, 30)]
        pieces.append(model(tokens[:, 30:], cache=cache))  # and a chunk again
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-4)


def test_blocked_attention_equals_the_dense_reference_in_outputs_and_gradients():
    blocked = make_model("relative", attention_block=16)  # 40 positions: 3 blocks
    dense = with_options(blocked, attention="dense")
    tokens = torch.randint(0, 50, (2, 40))
    logits, grads = loss_and_grads(blocked, tokens)
    ref_logits, ref_grads = loss_and_grads(dense, tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    assert grads["position_bias.embedding.weight"].abs().max() > 1e-3  # the bias learns
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dense_mask_is_the_t5_bias_of_every_query_key_pair():
    bias = RelativePositionBias(heads=3, num_buckets=8, max_distance=16)
    t = 30
    q, k = torch.arange(t)[:, None], torch.arange(t)[None, :]
    expected = bias.embedding(relative_position_bucket(k - q, 8, 16)).permute(2, 0, 1)
    expected = expected.masked_fill(k > q, float("-inf"))
    torch.testing.assert_close(RelativePositionBias.dense(bias(t, q.device), t)[0], expected)


def test_attention_dropout_masks_agree_between_forward_and_backward():
    """Gradcheck in float64 with dropout: backward regenerates the forward's masks."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 4, dtype=torch.float64, requires_grad=True) for _ in "qkv")
    bias = torch.randn(2, 20, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v, bias):
        torch.manual_seed(1)  # the per-forward dropout seed
        return biased_causal_attention(q, k, v, bias, dropout_p=0.3, block_size=7)

    assert not torch.equal(attention(q, k, v, bias), biased_causal_attention(q, k, v, bias))
    assert torch.autograd.gradcheck(attention, (q, k, v, bias))


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("attention", ["blocked", "dense"])
def test_training_step_never_builds_heads_x_t_x_t(attention):
    """At 512 positions and 4 heads, a training step of the blocked model keeps every tensor
    below one [B, H, block, T] block; the dense reference builds [B, H, T, T]."""
    model = make_model("relative", attention=attention, attention_block=64).train()
    tokens = torch.randint(0, 50, (2, 512))
    with LargestTensor() as probe:
        model(tokens).logsumexp(-1).sum().backward()
    b, h, t = 2, 4, 512
    if attention == "blocked":
        assert probe.largest <= b * h * 64 * t
    else:
        assert probe.largest >= b * h * t * t


def test_activation_checkpointing_gives_the_same_gradients_with_dropout():
    model = make_model("relative", attention_block=16).train()
    checkpointed = with_options(model, activation_checkpointing=True)
    tokens = torch.randint(0, 50, (2, 40))
    torch.manual_seed(5)
    logits, grads = loss_and_grads(model, tokens)
    calls = []
    checkpointed.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(5)
    again, ref = loss_and_grads(checkpointed, tokens)
    assert len(calls) == 2  # the block ran again in backward: its activations were not kept
    torch.testing.assert_close(again, logits)
    for name, grad in grads.items():
        torch.testing.assert_close(ref[name], grad, msg=name)


def test_bf16_autocast_stays_close_to_float32():
    model = make_model("relative", attention_block=16)
    tokens = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        full = model(tokens).softmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(tokens).float().softmax(-1)
    assert (half - full).abs().max() < 1e-2


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
