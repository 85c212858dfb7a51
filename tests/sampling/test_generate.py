"""KV-cached sampling, guidance, seeds, batching and windows, on tiny untrained stage models."""

from __future__ import annotations

import warnings

import pytest
import torch
from musiclm.sampling import generate as G
from musiclm.training.layout import TokenLayout
from musiclm.training.transformer import DecoderTransformer, TransformerConfig

from .conftest import SPEC


def tiny_model(stage: str, seed: int = 0) -> tuple[DecoderTransformer, TokenLayout]:
    torch.manual_seed(seed)
    layout = TokenLayout(SPEC, stage)
    config = TransformerConfig(layout.vocab_size, dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0)
    return DecoderTransformer(config).eval(), layout


def semantic_prompt(layout, mulan):
    return layout.prompt(mulan=mulan), layout.prompt(semantic=torch.zeros(mulan.shape[0], 0))


MULAN = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 0, 1]])


def run(model, layout, mulan, seeds, n=24, settings=None, **kw):
    prompt = layout.prompt(mulan=mulan)
    null = layout.prompt(mulan=None, semantic=torch.zeros(mulan.shape[0], 1, dtype=torch.long))
    return G.generate(
        model, layout, prompt, n, settings or G.SamplingSettings(), G.RowRandom(seeds),
        null_prompt=null, **kw,
    )  # fmt: skip


def test_cache_gives_the_same_tokens_as_full_recompute():
    model, layout = tiny_model("semantic")
    cached = run(model, layout, MULAN, [0, 1, 2])
    full = run(model, layout, MULAN, [0, 1, 2], use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_a_gpu_does_not_synchronise_per_token():
    model, layout = tiny_model("semantic")
    model.cuda()
    settings = G.SamplingSettings(temperature=0.9, top_k=50, top_p=0.95, guidance=2.0)

    def synchronisations(n: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                tokens = run(model, layout, MULAN, [0, 1, 2], n=n, settings=settings)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert tokens.device.type == "cpu" and tokens.shape == (3, n)
        return sum("synchroniz" in str(w.message) for w in caught)

    assert synchronisations(4) == synchronisations(32)


def test_same_seed_same_tokens_different_seed_different_tokens():
    model, layout = tiny_model("semantic")
    a = run(model, layout, MULAN[:1], [7])
    assert torch.equal(a, run(model, layout, MULAN[:1], [7]))
    assert not torch.equal(a, run(model, layout, MULAN[:1], [8]))


def test_batch_equals_one_at_a_time():
    model, layout = tiny_model("semantic")
    settings = G.SamplingSettings(temperature=0.9, top_p=0.95, guidance=2.0)
    batch = run(model, layout, MULAN, [10, 11, 12], settings=settings)
    for row in range(3):
        single = run(model, layout, MULAN[row : row + 1], [10 + row], settings=settings)
        assert torch.equal(batch[row : row + 1], single)


def test_tokens_stay_in_their_level_range():
    model, layout = tiny_model("coarse")
    semantic = torch.randint(0, SPEC.semantic_vocab, (2, 4))
    prompt = layout.prompt(mulan=MULAN[:2], semantic=semantic)
    tokens = G.generate(model, layout, prompt, 16, G.SamplingSettings(), G.RowRandom([0, 1]))
    codes = layout.parse_targets(tokens)  # raises if a token left its level's range
    assert codes.shape == (2, SPEC.coarse_levels, 8)


def test_guidance_changes_the_logits():
    model, layout = tiny_model("semantic")
    prompt = layout.prompt(mulan=MULAN)
    null = layout.prompt(mulan=None, semantic=torch.zeros(3, 1, dtype=torch.long))
    assert not torch.equal(prompt, null)
    lo, hi = layout.target_range(0)
    with torch.no_grad():
        cond = model(prompt)[:, -1, lo:hi]
        uncond = model(null)[:, -1, lo:hi]
    assert (cond - uncond).abs().max() > 1e-4  # the MuLan prefix reaches the logits
    assert torch.allclose(G.guided(cond, uncond, 1.0), cond)
    assert torch.allclose(G.guided(cond, uncond, 0.0), uncond)
    mixed = G.guided(cond, uncond, 3.0)
    assert (mixed - cond).abs().max() > 1e-4
    # ... and generation follows: guided sampling differs from unguided with the same seed.
    plain = run(model, layout, MULAN, [0, 1, 2], n=40)
    strong = run(model, layout, MULAN, [0, 1, 2], n=40, settings=G.SamplingSettings(guidance=5.0))
    assert not torch.equal(plain, strong)


def test_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    top2 = G.filter_logits(logits, G.SamplingSettings(top_k=2))
    assert torch.isfinite(top2).tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]
    nucleus = G.filter_logits(logits, G.SamplingSettings(top_p=float(probs[0] + 1e-3)))
    assert torch.isfinite(nucleus).tolist() == [[True, True, False, False, False]]
    greedy = G.sample_logits(logits, G.SamplingSettings(temperature=0), torch.tensor([0.99]))
    assert greedy.tolist() == [0]
    # inverse CDF: u below p0 -> token 0; u just above p0 -> token 1
    settings = G.SamplingSettings()
    assert G.sample_logits(logits, settings, torch.tensor([0.0])).tolist() == [0]
    u = torch.tensor([float(probs[0]) + 1e-4], dtype=torch.float64)
    assert G.sample_logits(logits, settings, u).tolist() == [1]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        G.SamplingSettings(top_p=0.0)
    with pytest.raises(ValueError, match="shorter than the window"):
        G.Windows(length=10, prefix=10)


def test_window_spans_follow_the_paper():
    # 60 s of semantic frames (25 Hz) from 30 s windows with a 15 s prefix
    spans = G.Windows(length=750, prefix=375).spans(known=0, total=1500)
    assert spans == [(0, 0, 750), (375, 750, 1125), (750, 1125, 1500)]
    # continuing a 5 s prompt
    assert G.Windows(750, 375).spans(125, 800)[0] == (0, 125, 750)


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_extend_reaches_the_asked_length_past_the_window(stage):
    model, layout = tiny_model(stage)
    total, batch = 11, 2
    semantic = torch.randint(0, SPEC.semantic_vocab, (batch, total))
    coarse = torch.randint(0, SPEC.acoustic_codebook_size, (batch, SPEC.coarse_levels, 2 * total))

    def conditioning(start, end, null):
        if stage == "fine":
            return {"coarse": coarse[..., 2 * start : 2 * end]}
        cond = {"mulan": None if null else MULAN[:batch]}
        if stage == "coarse" or null:
            cond["semantic"] = semantic[:, start:end]
        return cond

    levels = layout.num_target_levels
    known = torch.zeros((batch, 0) if stage == "semantic" else (batch, levels, 0), dtype=torch.long)
    windows = G.Windows(length=4, prefix=2)
    counted = []
    stream = G.extend(
        model, layout, known, total, windows, conditioning,
        G.SamplingSettings(guidance=2.0), G.RowRandom([0, 1]), on_token=lambda: counted.append(1),
    )  # fmt: skip
    ratio = G.frames_per_semantic(layout)
    expected = (batch, total) if stage == "semantic" else (batch, levels, ratio * total)
    assert stream.shape == expected
    assert len(counted) == G.tokens_to_generate(layout, windows, 0, total) * 1
    assert len(counted) == total * ratio * levels
