"""The token layout: disjoint vocabularies, time-major flattening, prompts and round trips."""

import pytest
import torch
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.layout import PAD, SEP, START, TokenLayout

SPEC = TokenSpec(
    acoustic_levels=5,
    acoustic_codebook_size=16,
    coarse_levels=2,
    semantic_vocab=11,
    mulan_levels=3,
    mulan_codebook_size=7,
)


def streams(batch=2, t_s=4, spec=SPEC, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "mulan": torch.randint(
            0, spec.mulan_codebook_size, (batch, spec.mulan_levels), generator=g
        ),
        "semantic": torch.randint(0, spec.semantic_vocab, (batch, t_s), generator=g),
        "acoustic": torch.randint(
            0, spec.acoustic_codebook_size, (batch, spec.acoustic_levels, 2 * t_s), generator=g
        ),
    }


def test_vocab_sizes_come_from_the_spec():
    assert TokenLayout(SPEC, "semantic").vocab_size == 3 + 3 + 3 * 7 + 11
    assert TokenLayout(SPEC, "coarse").vocab_size == 3 + 3 + 3 * 7 + 11 + 2 * 16
    assert TokenLayout(SPEC, "fine").vocab_size == 3 + 5 * 16
    paper = TokenLayout(TokenSpec(), "coarse")
    assert paper.level_names == ["q1", "q2", "q3", "q4"]
    assert TokenLayout(TokenSpec(), "fine").level_names == [f"q{i}" for i in range(5, 13)]


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_build_then_parse_round_trips(stage):
    layout = TokenLayout(SPEC, stage)
    s = streams()
    tokens, levels = layout.build(**s)
    assert tokens.shape[1] == layout.sequence_length(4)
    prefix = layout.prefix_length(4)
    assert tokens[0, 0] == START and tokens[0, prefix - 1] == SEP
    assert (levels[:, :prefix] == -1).all() and (levels[:, prefix:] >= 0).all()
    parsed = layout.parse_targets(tokens[:, prefix:])
    if stage == "semantic":
        assert torch.equal(parsed, s["semantic"])
    else:
        first, n = layout.first_target_level, layout.num_target_levels
        assert torch.equal(parsed, s["acoustic"][:, first : first + n])
    # every target token lies in its level's range, and ranges of different levels are disjoint
    for level in range(layout.num_target_levels):
        lo, hi = layout.target_range(level)
        sel = tokens[levels == level]
        assert sel.numel() and bool(((sel >= lo) & (sel < hi)).all())
    assert tokens.max() < layout.vocab_size and tokens.min() >= 0


def test_coarse_is_time_major_and_semantic_is_prefix():
    layout = TokenLayout(SPEC, "coarse")
    s = streams(batch=1)
    tokens, levels = layout.build(**s)
    prefix = layout.prefix_length(4)
    a = layout.offset("acoustic")
    # t0q1 t0q2 t1q1 t1q2 ...
    expected = [
        a + s["acoustic"][0, 0, 0],
        a + 16 + s["acoustic"][0, 1, 0],
        a + s["acoustic"][0, 0, 1],
    ]
    assert tokens[0, prefix : prefix + 3].tolist() == [int(x) for x in expected]
    assert levels[0, prefix : prefix + 4].tolist() == [0, 1, 0, 1]
    sem = tokens[0, 1 + 3 + 1 : 1 + 3 + 1 + 4] - layout.offset("semantic")
    assert torch.equal(sem, s["semantic"][0])


def test_fine_prefix_holds_coarse_levels_only():
    layout = TokenLayout(SPEC, "fine")
    s = streams(batch=1)
    a = s["acoustic"].clone()
    b = a.clone()
    b[:, 2:] = (b[:, 2:] + 1) % 16  # change the fine levels only
    pa = layout.prefix(coarse=a[:, :2])
    tb, _ = layout.build(acoustic=b)
    assert torch.equal(tb[:, : pa.shape[1]], pa)


def test_null_conditioning_and_drop():
    layout = TokenLayout(SPEC, "semantic")
    s = streams()
    tokens, _ = layout.build(**s)
    dropped = layout.drop_conditioning(tokens, torch.tensor([True, False]))
    nulls = layout.null_tokens(1)[0]
    assert torch.equal(dropped[0, 1:4], nulls)
    assert torch.equal(dropped[1], tokens[1])
    assert torch.equal(dropped[0, 4:], tokens[0, 4:])
    assert torch.equal(
        layout.prefix(mulan=None, semantic=s["semantic"])[:, 1:4], nulls.expand(2, -1)
    )
    # nulls are their own ids, not any MuLan code
    assert nulls.max() < layout.offset("mulan")


def test_prompt_with_target_prefix_continues_the_sequence():
    layout = TokenLayout(SPEC, "coarse")
    s = streams(batch=1)
    tokens, _ = layout.build(**s)
    known = s["acoustic"][:, :2, :3]
    prompt = layout.prompt(mulan=s["mulan"], semantic=s["semantic"], target_prefix=known)
    assert torch.equal(prompt, tokens[:, : prompt.shape[1]])
    assert layout.target_level(prompt.shape[1] - layout.prefix_length(4)) == 0


def test_parse_rejects_tokens_outside_their_level():
    layout = TokenLayout(SPEC, "coarse")
    lo, _ = layout.target_range(1)
    with pytest.raises(ValueError, match="outside"):
        layout.parse_targets(torch.tensor([[lo, lo]]))  # level-1 id at a level-0 position
    with pytest.raises(ValueError, match="whole frames"):
        layout.parse_targets(torch.tensor([[lo]]))


def test_collate_right_pads_and_layout_dict_round_trips():
    layout = TokenLayout(SPEC, "fine")
    a = layout.build(**streams(batch=1, t_s=3))
    b = layout.build(**streams(batch=1, t_s=2))
    tokens, levels = TokenLayout.collate([(a[0][0], a[1][0]), (b[0][0], b[1][0])])
    assert tokens.shape == (2, a[0].shape[1])
    assert (tokens[1, b[0].shape[1] :] == PAD).all() and (levels[1, b[0].shape[1] :] == -1).all()
    assert TokenLayout.from_dict(layout.to_dict()) == layout


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="coarse stage needs semantic"):
        TokenLayout(SPEC, "coarse").build(mulan=streams()["mulan"], acoustic=streams()["acoustic"])
    with pytest.raises(ValueError, match="stage must be one of"):
        TokenLayout(SPEC, "medium")
