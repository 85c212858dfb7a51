"""The text -> audio sampler on tiny untrained parts: seeds, batching, length, windows, errors."""

from __future__ import annotations

import pytest
import torch
from musiclm.sampling import sampler as S
from musiclm.sampling.generate import SamplingSettings
from musiclm.sampling.metrics import join_discontinuity

from .conftest import SPEC, save_stage

PROMPTS = ["a slow organ chorale", "fast piano jazz"]


@pytest.fixture(scope="module")
def sampler(tiny_bundle, stage_checkpoints):
    stages = {n: S.load_stage_model(p, n) for n, p in stage_checkpoints.items()}
    return S.Sampler(tiny_bundle, stages)


def test_windows_come_from_the_checkpoints_crop(sampler):
    assert {n: w.length for n, w in sampler.windows.items()} == {
        "semantic": 50, "coarse": 25, "fine": 15,
    }  # fmt: skip
    assert sampler.windows["semantic"].prefix == 25


def test_same_seed_same_audio_different_seed_differs(sampler):
    a = sampler.generate(PROMPTS[:1], 0.6, seed=3, progress=False)
    b = sampler.generate(PROMPTS[:1], 0.6, seed=3, progress=False)
    c = sampler.generate(PROMPTS[:1], 0.6, seed=4, progress=False)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.acoustic, b.acoustic)
    assert not torch.equal(a.acoustic, c.acoustic)
    assert a.audio.shape == (1, round(0.6 * SPEC.sample_rate))


def test_batch_equals_one_at_a_time(sampler):
    settings = {"semantic": SamplingSettings(temperature=1.0, top_p=0.9, guidance=3.0)}
    batch = sampler.generate(PROMPTS, 0.6, settings, seed=5, progress=False)
    for i, prompt in enumerate(PROMPTS):
        one = sampler.generate([prompt], 0.6, settings, seed=5 + i, progress=False)
        assert torch.equal(batch.semantic[i], one.semantic[0])
        assert torch.equal(batch.acoustic[i], one.acoustic[0])
        torch.testing.assert_close(batch.audio[i], one.audio[0], atol=1e-5, rtol=0)


def test_long_generation_reaches_the_duration_with_smooth_joins(sampler):
    """6 s from 2 s semantic windows (1 s prefix), 1 s coarse and 0.6 s fine windows."""
    out = sampler.generate(PROMPTS[:1], 6.0, seed=0, progress=False)
    assert out.semantic.shape == (1, 6 * SPEC.semantic_rate)
    assert out.acoustic.shape == (1, SPEC.acoustic_levels, 6 * SPEC.acoustic_rate)
    assert out.audio.shape == (1, 6 * SPEC.sample_rate)
    joins = sampler.joins(6.0)
    assert joins["semantic"] == [2.0, 3.0, 4.0, 5.0]
    assert len(joins["coarse"]) == 10 and len(joins["fine"]) == 17  # strides 13 and 8 frames
    times = sorted({t for stage_joins in joins.values() for t in stage_joins})
    seams = join_discontinuity(out.audio[0], SPEC.sample_rate, times)
    # Spectral change at window joins is no larger than the typical change within windows.
    assert seams["join"] <= seams["within_p95"], seams


def test_candidates_keep_the_best_mulan_score(sampler):
    out = sampler.generate(PROMPTS, 0.6, seed=1, candidates=3, progress=False)
    assert out.scores.shape == (2, 3)
    assert torch.equal(out.chosen, out.scores.argmax(1))
    single = sampler.generate(PROMPTS, 0.6, seed=1, candidates=1, progress=False)
    best = out.chosen[0]
    # Candidate j of prompt 0 is row j, i.e. the single run with seed 1 + j.
    if best == 0:
        assert torch.equal(out.acoustic[0], single.acoustic[0])


def test_clear_errors(sampler, tiny_bundle, stage_checkpoints, tmp_path):
    with pytest.raises(S.SamplerError, match="prompt is empty"):
        sampler.generate(["  "], 1.0)
    with pytest.raises(S.SamplerError, match="shorter than one semantic frame"):
        sampler.generate(PROMPTS, 0.01)
    with pytest.raises(S.SamplerError, match="does not exist"):
        S.load_stage_model(tmp_path / "missing.ckpt", "coarse")
    with pytest.raises(S.SamplerError, match="not fine"):
        S.load_stage_model(stage_checkpoints["coarse"], "fine")
    with pytest.raises(S.SamplerError, match="no coarse stage checkpoint"):
        S.find_checkpoint(tmp_path, "coarse")


def test_refuses_a_checkpoint_of_another_bundle(tiny_bundle, stage_checkpoints, tmp_path):
    other = tmp_path / "other.ckpt"
    save_stage(other, "fine", SPEC, "ffffffffffffffff", 0.6)
    stages = {n: S.load_stage_model(p, n) for n, p in stage_checkpoints.items()}
    stages["fine"] = S.load_stage_model(other, "fine")
    with pytest.raises(ValueError, match="ffffffffffffffff") as err:
        S.Sampler(tiny_bundle, stages)
    assert tiny_bundle.fingerprint in str(err.value) and "bundle" in str(err.value)


def test_find_checkpoint_prefers_last(stage_checkpoints):
    runs = stage_checkpoints["coarse"].parents[2]
    assert S.find_checkpoint(runs, "coarse") == stage_checkpoints["coarse"]


@pytest.mark.slow
def test_sixty_seconds_from_paper_windows(tiny_bundle, tmp_path):
    """60 s from 30 s semantic windows (15 s prefix), 10 s coarse and 3 s fine windows."""
    stages = {}
    for stage, crop in {"semantic": 30.0, "coarse": 10.0, "fine": 3.0}.items():
        save_stage(tmp_path / f"{stage}.ckpt", stage, SPEC, tiny_bundle.fingerprint, crop)
        stages[stage] = S.load_stage_model(tmp_path / f"{stage}.ckpt", stage)
    sampler = S.Sampler(tiny_bundle, stages)
    out = sampler.generate(PROMPTS[:1], 60.0, seed=0, progress=False)
    assert out.audio.shape == (1, 60 * SPEC.sample_rate)
    joins = sampler.joins(60.0)
    assert joins["semantic"] == [30.0, 45.0]
    times = sorted({t for stage_joins in joins.values() for t in stage_joins})
    seams = join_discontinuity(out.audio[0], SPEC.sample_rate, times)
    print("join discontinuity (60 s, paper windows):", seams)
    assert seams["join"] <= seams["within_p95"], seams
