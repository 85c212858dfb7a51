"""The stage registry: a stage or a conditioning stream declared once is enough for the
layout, the crops and the stage modules, and the paper's settings come from it."""

import numpy as np
import pytest
import torch
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training import stage_registry as R
from musiclm.training.layout import SEP, START, TokenLayout
from musiclm.training.shard_data import crop_streams
from musiclm.training.stages import stage_module

SPEC = TokenSpec(
    acoustic_levels=5,
    acoustic_codebook_size=16,
    coarse_levels=2,
    semantic_vocab=11,
    mulan_levels=3,
    mulan_codebook_size=7,
)
MELODY = R.Stream(
    "melody",
    levels=lambda spec: 2,
    codebook_size=lambda spec: 5,
    frames_per_semantic=lambda spec: 1,
    level_axis=True,
)


def test_paper_settings_are_declared_once():
    assert {n: s.paper_crop_seconds for n, s in R.STAGES.items()} == {
        "semantic": 30.0, "coarse": 10.0, "fine": 3.0,
    }  # fmt: skip
    assert [s.paper_temperature for s in R.STAGES.values()] == [1.0, 0.95, 0.4]
    assert [n for n, s in R.STAGES.items() if s.guided] == ["semantic", "coarse"]
    assert R.crop_seconds("semantic", None) == 30.0
    assert R.crop_seconds("fine", {"data": {"init_args": {"crop_seconds": 0.5}}}) == 0.5
    with pytest.raises(ValueError, match="stage must be one of"):
        R.get_stage("medium")


def test_a_new_stream_and_stage_are_one_declaration_each(monkeypatch):
    """A melody stream (2 levels x 5 codes, one frame per semantic frame) and a stage
    conditioned on MuLan + melody: vocabulary, sequence, crop and module follow."""
    monkeypatch.setitem(R.STREAMS, "melody", MELODY)
    stage = R.Stage(
        "melodic", (R.MULAN, R.Segment("melody", "melody")), R.SEMANTIC, 30.0, 1.0, "test"
    )
    monkeypatch.setitem(R.STAGES, "melodic", stage)
    layout = TokenLayout(SPEC, "melodic")
    plain = TokenLayout(SPEC, "semantic")
    # the new stream's ids come after the existing ones: the others keep theirs
    assert layout.offset("semantic") == plain.offset("semantic")
    assert layout.offset("melody") == plain.vocab_size
    assert layout.vocab_size == plain.vocab_size + 2 * 5
    g = torch.Generator().manual_seed(0)
    sample = {
        "mulan": np.array([1, 2, 3]),
        "semantic": np.arange(6) % 11,
        "acoustic": np.zeros((5, 12), dtype=np.int64),
        "melody": torch.randint(0, 5, (2, 6), generator=g).numpy(),
    }
    crop = crop_streams(sample, 4, SPEC, random_start=False)
    assert crop["melody"].shape == (2, 4)
    streams = {k: torch.from_numpy(np.asarray(v)).long()[None] for k, v in crop.items()}
    tokens, levels = layout.build(**streams)
    assert tokens.shape[1] == layout.sequence_length(4) == 1 + 3 + 1 + 8 + 1 + 4
    assert tokens[0, 0] == START and tokens[0, 4] == SEP and tokens[0, 13] == SEP
    assert (levels[0, :14] == -1).all() and (levels[0, 14:] == 0).all()
    melody = tokens[0, layout.segment_positions("melody", 4)] - layout.offset("melody")
    assert melody.tolist() == [
        m + 5 * q for t in range(4) for q, m in enumerate(crop["melody"][:, t])
    ]
    assert torch.equal(layout.parse_targets(tokens[:, 14:]), streams["semantic"])
    assert layout.drop_conditioning(tokens, torch.tensor([True]))[0, 1:4].tolist() == [3, 4, 5]
    module = stage_module("melodic")(dim=16, depth=1, heads=2, ff_dim=32, token_spec=SPEC.to_dict())
    assert module.model.config.vocab_size == layout.vocab_size
