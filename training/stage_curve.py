"""Held-out learning curve of a stage run: the ``stage_eval`` scores of every saved step.

    python -m musiclm.training.stage_curve runs/coarse --heldout runs/tokens/heldout \
        --train runs/tokens/train [--out runs/eval/curve-coarse.json]

Every checkpoint under the run folder (the periodic ``step=N.ckpt`` files of the stage
configs and the final ``last.ckpt``) is scored on the held-out clips as
:func:`musiclm.training.stage_eval.evaluate_stage` does, one point per optimizer step
count (the newest file of a step wins). Prints (and writes) JSON::

    {"stage": "coarse", "train_unigram_cross_entropy": 6.8, "heldout_unigram_entropy": 5.9,
     "points": [{"step": 100, "loss": 6.7, "loss_null": ..., "loss_shuffled_mulan": ...}, ...]}

The report of ``musiclm-eval --curves`` plots it against the unigram baseline.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from musiclm.training.stage_eval import emit_json, evaluate_stage

BASELINES = ("train_unigram_cross_entropy", "heldout_unigram_entropy", "uniform")


def checkpoints_by_step(run: str | Path) -> dict[int, Path]:
    """``{optimizer step: checkpoint}`` of every ``*.ckpt`` under ``run`` (newest per step)."""
    found: dict[int, Path] = {}
    for path in sorted(Path(run).rglob("*.ckpt"), key=lambda p: p.stat().st_mtime):
        state = torch.load(path, map_location="cpu", weights_only=True)
        found[int(state.get("global_step", 0))] = path
    return dict(sorted(found.items()))


def stage_curve(run: str | Path, heldout: str | Path, train: str | Path) -> dict[str, Any]:
    """Scores of each saved step of the stage run ``run`` (see the module docstring)."""
    steps = checkpoints_by_step(run)
    if not steps:
        raise FileNotFoundError(f"no checkpoint (*.ckpt) under {run}; train the stage first")
    curve: dict[str, Any] = {"run": str(run), "points": []}
    for step, path in steps.items():
        report = evaluate_stage(path, heldout, train)
        curve["stage"] = report["stage"]
        for key in BASELINES:
            curve[key] = report[key]
        losses = {k: v for k, v in report.items() if k.startswith("loss")}
        curve["points"].append({"step": step, "checkpoint": str(path), **losses})
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="stage run folder (its saved checkpoints)")
    parser.add_argument("--heldout", required=True, help="tokens root of the held-out clips")
    parser.add_argument("--train", required=True, help="tokens root the stage trained on")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    emit_json(stage_curve(args.run, args.heldout, args.train), args.out)


if __name__ == "__main__":
    main()
