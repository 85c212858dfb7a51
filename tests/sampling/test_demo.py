"""make demo's plan: budgets, prompts from held-out captions, skip-if-done and resume."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from musiclm.sampling import demo


def args_for(tmp_path):
    return argparse.Namespace(
        demo=str(tmp_path / "demo"), runs=str(tmp_path / "runs"), size="small",
        time_scale=2.0, seconds=10.0, seed=0, eval_window=5.0, threads=1,
    )  # fmt: skip


def test_max_time_format():
    assert demo.max_time(1.5) == "00:00:01:30"
    assert demo.max_time(75) == "00:01:15:00"


def test_steps_cover_the_pipeline_with_budgets_and_resume(tmp_path):
    steps = demo.build_steps(args_for(tmp_path))
    names = [s.name for s in steps]
    assert names == [
        "demo music", "tokenizer soundstream", "tokenizer semantic", "tokenizer mulan",
        "codebooks + bundle", "tokenize train", "tokenize heldout",
        "stage semantic", "evaluate stage semantic", "learning curve semantic",
        "stage coarse", "evaluate stage coarse", "learning curve coarse",
        "stage fine", "evaluate stage fine", "learning curve fine",
    ]  # fmt: skip
    coarse = steps[names.index("stage coarse")].command
    assert coarse[:3] == [sys.executable, "-m", "musiclm.training.cli"]
    configs = [coarse[i + 1] for i, arg in enumerate(coarse) if arg == "--config"]
    assert configs == ["configs/stages/small.yaml", "configs/stages/coarse/small.yaml"]
    # budget x time_scale 2
    budget = demo.BUDGET_MINUTES["stage-coarse"] * 2.0
    assert coarse[coarse.index("--trainer.max_time") + 1] == demo.max_time(budget)
    assert coarse[coarse.index("--ckpt_path") + 1] == "last"  # a rerun resumes
    assert coarse[coarse.index("--seed_everything") + 1] == "0"  # --seed seeds every training
    # each stage is scored on the held-out tokens against the training split's unigram model
    scored = steps[names.index("evaluate stage coarse")]
    assert scored.command[3:5] == [str(tmp_path / "runs" / "coarse"), "--heldout"]
    assert scored.output == tmp_path / "runs" / "eval" / "stage-coarse.json"
    # and at every saved step; the report plots those curves
    curve = steps[names.index("learning curve coarse")]
    assert curve.command[2:4] == ["musiclm.training.stage_curve", str(tmp_path / "runs" / "coarse")]
    report = demo.eval_step(args_for(tmp_path)).command
    curves = report[report.index("--curves") + 1 :]
    assert curves == [str(tmp_path / "runs" / "eval" / f"curve-{s}.json") for s in demo.STAGES]
    # the semantic tokenizer and the semantic stage never share a run folder
    semantic_tok = steps[names.index("tokenizer semantic")].command
    root = semantic_tok[semantic_tok.index("--trainer.default_root_dir") + 1]
    assert root == str(tmp_path / "runs" / "tokenizers" / "semantic")
    fit = steps[names.index("codebooks + bundle")].command
    assert fit[fit.index("--semantic") + 1] == root + "/model"


def test_a_step_with_outputs_is_skipped_and_a_failure_stops_the_demo(tmp_path, capsys):
    out = tmp_path / "done.json"
    out.write_text("{}")
    step = demo.Step("x", [sys.executable, "-c", "raise SystemExit(3)"], out)
    demo.run_step(step)
    assert step.status.startswith("skipped")
    failing = demo.Step("y", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "no")
    with pytest.raises(SystemExit, match="step 'y' failed with exit code 3"):
        demo.run_step(failing)
    marked = demo.Step("z", [sys.executable, "-c", "print('hi')"], tmp_path / "z" / "mark", True)
    demo.run_step(marked)
    assert marked.status == "done" and json.loads(marked.output.read_text())["seconds"] >= 0


def test_steps_run_with_one_torch_thread_by_default(tmp_path):
    check = "import os, sys; sys.exit(0 if os.environ['OMP_NUM_THREADS'] == '1' else 5)"
    step = demo.Step("threads", [sys.executable, "-c", check], tmp_path / "mark", True)
    demo.run_step(step, demo.step_env(1))
    assert step.status == "done"
    again = demo.Step("threads", [sys.executable, "-c", check], tmp_path / "other", True)
    with pytest.raises(SystemExit, match="exit code 5"):
        demo.run_step(again, demo.step_env(2))


def test_prompts_come_from_different_sources(tmp_path):
    heldout = tmp_path / "heldout"
    for source, captions in {"bach": ["chorale A", "chorale B"], "folk": ["folk A"],
                             "wesnoth": ["game A"]}.items():  # fmt: skip
        (heldout / source).mkdir(parents=True)
        for i, caption in enumerate(captions):
            (heldout / source / f"{i}.json").write_text(json.dumps({"caption": caption}))
    assert demo.pick_prompts(heldout, count=3) == ["chorale A", "folk A", "game A"]
    with pytest.raises(SystemExit, match="only 4 captioned pieces"):
        demo.pick_prompts(heldout, count=5)
