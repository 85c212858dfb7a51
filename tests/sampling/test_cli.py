"""musiclm-sample end to end on a tiny bundle on disk and tiny stage checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from musiclm.sampling import cli
from musiclm.sampling.sampler import Sampler, load_stage_model

from .conftest import SPEC


def runs_of(stage_checkpoints):
    return stage_checkpoints["semantic"].parents[2]


def test_sample_writes_wav_png_json(bundle_dir, tiny_bundle, stage_checkpoints, tmp_path):
    out = tmp_path / "out" / "organ.wav"
    cli.main(
        ["--text", "a slow organ chorale", "--text", "fast piano jazz", "--seconds", "0.8",
         "--bundle", str(bundle_dir), "--runs", str(runs_of(stage_checkpoints)),
         "--out", str(out), "--seed", "3", "--top-k", "0", "8", "0", "--no-progress"]
    )  # fmt: skip
    for i, text in enumerate(["a slow organ chorale", "fast piano jazz"]):
        wav = out.with_name(f"organ_{i}.wav")
        audio, rate = sf.read(wav)
        assert rate == 24_000 and audio.shape == (round(0.8 * 24_000),)
        assert wav.with_suffix(".png").stat().st_size > 1000
        record = json.loads(wav.with_suffix(".json").read_text())
        assert record["text"] == text and record["seed"] == 3 + i
        assert record["settings"]["coarse"]["top_k"] == 8
        assert record["settings"]["fine"]["temperature"] == 0.4
        assert np.array(record["tokens"]["acoustic"]).shape == (SPEC.acoustic_levels, 40)
        assert len(record["tokens"]["semantic"]) == 20
        assert record["bundle_fingerprint"] == tiny_bundle.fingerprint
        assert record["checkpoints"]["fine"] == str(stage_checkpoints["fine"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text", " "], "prompt is empty"),
        (["--text", "piano", "--seconds", "0"], "shorter than one semantic frame"),
        (["--text", "piano", "--semantic-ckpt", "/nonexistent/x.ckpt"], "does not exist"),
    ],
)
def test_clear_errors(bundle_dir, stage_checkpoints, tmp_path, extra, message):
    args = ["--bundle", str(bundle_dir), "--runs", str(runs_of(stage_checkpoints))]
    with pytest.raises(SystemExit, match=message):
        cli.main([*args, "--out", str(tmp_path / "x.wav"), *extra])


def test_missing_runs_and_bundle_are_named(bundle_dir, tmp_path):
    with pytest.raises(SystemExit, match="no semantic stage checkpoint under"):
        cli.main(["--text", "piano", "--bundle", str(bundle_dir), "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a tokenizer bundle"):
        cli.main(["--text", "piano", "--bundle", str(tmp_path), "--semantic-ckpt", "a",
                  "--coarse-ckpt", "b", "--fine-ckpt", "c"])  # fmt: skip


def test_prompt_audio_is_continued(tiny_bundle, stage_checkpoints, tmp_path):
    stages = {n: load_stage_model(p, n) for n, p in stage_checkpoints.items()}
    sampler = Sampler(tiny_bundle, stages)
    t = torch.arange(24_000) / 24_000
    prompt = 0.4 * torch.sin(2 * torch.pi * 330 * t)
    semantic0, codes0 = sampler.prompt_streams(prompt)
    out = sampler.generate(["organ"], 0.6, seed=0, prompt_audio=prompt, progress=False)
    assert out.prompt_seconds == 1.0
    assert out.audio.shape == (1, round(1.6 * 24_000))
    assert torch.equal(out.semantic[0, :25], semantic0[0])
    assert torch.equal(out.acoustic[0, :, :50], codes0[0])
    path = tmp_path / "prompt.wav"
    sf.write(path, prompt.numpy(), 24_000)
    cli.main(
        ["--text", "organ", "--seconds", "0.4", "--prompt-audio", str(path),
         "--bundle", str(tiny_bundle.root), "--runs", str(runs_of(stage_checkpoints)),
         "--out", str(tmp_path / "cont.wav"), "--no-progress"]
    )  # fmt: skip
    assert sf.info(tmp_path / "cont.wav").frames == round(1.4 * 24_000)
