"""``make demo``: the bundled demo music through every step, end to end, at one size.

::

    python -m musiclm.sampling.demo --demo data/demo --runs runs --size small

Steps (each a separate process, its output streamed; a step whose outputs exist is
skipped, and an interrupted training step resumes from its last checkpoint, so a rerun
continues where the last one stopped):

1. demo music             ``musiclm.pipelines.demo_data``          -> DEMO/{train,heldout}
2. three tokenizers       ``musiclm.training.cli tokenizer-<t>``    -> RUNS/tokenizers/<t>/model
3. codebooks + bundle     ``musiclm.pipelines.fit_cli``             -> RUNS/bundle
4. tokenize train/heldout ``musiclm.pipelines.tokenize_cli``        -> RUNS/tokens/<split>
5. three stages           ``musiclm.training.cli stage-<s>``        -> RUNS/<s>/.../last.ckpt
   each scored on the held-out tokens ``musiclm.training.stage_eval`` -> RUNS/eval/stage-<s>.json
   and at every saved step           ``musiclm.training.stage_curve`` -> RUNS/eval/curve-<s>.json
6. six prompts sampled    ``musiclm.sampling.cli``                  -> RUNS/samples/demo_<i>.wav
7. evaluation report      ``musiclm.sampling.eval_cli``             -> RUNS/eval/report.md

Training steps get a wall-clock budget (``--trainer.max_time``, from :data:`BUDGET_MINUTES`
times ``--time-scale``) on top of their config's ``max_steps``, so the whole demo fits in
about 30 minutes on 2 idle CPU cores at ``small`` size; each training's learning-rate schedule
ends with its budget (:mod:`musiclm.training.schedule`). The prompts are the captions of six
held-out pieces of different sources; the report compares each sample's MuLan score with
its own prompt against the other prompts (MCC), FAD of the samples and of white noise
against the held-out music, and plots each stage's held-out learning curve.

Tokenizer runs live under ``RUNS/tokenizers/`` so that the semantic *tokenizer* and the
semantic *stage* never share a run folder (both would otherwise be ``RUNS/semantic``, and
``--ckpt_path last`` or the sampler's checkpoint search could pick the other's file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from musiclm.training.stage_configs import stage_config_args
from musiclm.training.stage_registry import STAGES

TOKENIZERS = ("soundstream", "semantic", "mulan")
# Wall-clock minutes per training step at --time-scale 1 (2 idle cores, ~30-minute demo).
# Each run's LR schedule ends with its budget (musiclm.training.schedule), so a longer
# --time-scale trains longer at the same schedule shape. The stages are narrow (d=128) so
# that these minutes are hundreds of optimizer steps.
BUDGET_MINUTES = {
    "soundstream": 3.0,
    "semantic": 1.5,
    "mulan": 1.5,
    "stage-semantic": 2.0,
    "stage-coarse": 3.0,
    "stage-fine": 2.5,
}
DONE_MARK = "demo-done"
# held-out scoring of each trained stage: (module, output file prefix, step name)
HELDOUT_SCORES = (
    ("musiclm.training.stage_eval", "stage", "evaluate stage"),
    ("musiclm.training.stage_curve", "curve", "learning curve"),
)
PROMPTS = 6  # held-out captions sampled, one per source where possible
# fit_cli component flag -> tokenizer trainer whose exported model it takes
FIT_COMPONENTS = {"codec": "soundstream", "semantic": "semantic", "mulan": "mulan"}


@dataclass
class Step:
    """One command of the demo and the file whose existence means it is done."""

    name: str
    command: list[str]
    output: Path
    mark_done: bool = False  # write ``output`` ourselves after success (stage runs)
    seconds: float | None = field(default=None)
    status: str = "pending"


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``minutes``."""
    total = max(1, round(minutes * 60))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def pick_prompts(heldout: Path, count: int = PROMPTS) -> list[str]:
    """Captions of ``count`` held-out pieces, from different sources where possible."""
    by_source: dict[str, list[str]] = {}
    for side in sorted(heldout.rglob("*.json")):
        caption = json.loads(side.read_text()).get("caption", "").strip()
        if caption:
            by_source.setdefault(side.parent.name, []).append(caption)
    picked: list[str] = []
    while len(picked) < count and any(by_source.values()):
        for captions in by_source.values():
            if captions and len(picked) < count:
                picked.append(captions.pop(0))
    if len(picked) < count:
        sys.exit(f"demo: {heldout} has only {len(picked)} captioned pieces; need {count}")
    return picked


def build_steps(args: argparse.Namespace) -> list[Step]:
    demo, runs, size = Path(args.demo), Path(args.runs), args.size
    budget = {k: v * args.time_scale for k, v in BUDGET_MINUTES.items()}
    bundle, tokens = runs / "bundle", runs / "tokens"
    command = python("musiclm.pipelines.demo_data", "--out", str(demo))
    steps = [Step("demo music", command, demo / "demo.json")]
    for name in TOKENIZERS:
        command = python(
            "musiclm.training.cli", f"tokenizer-{name}",
            "--config", f"configs/tokenizers/{name}/{size}.yaml",
            "--data.root", str(demo / "train"),
            "--trainer.default_root_dir", str(runs / "tokenizers" / name),
            "--trainer.max_time", max_time(budget[name]),
            "--ckpt_path", "last", "--seed_everything", str(args.seed),
        )  # fmt: skip
        model = runs / "tokenizers" / name / "model"
        steps.append(Step(f"tokenizer {name}", command, model / "config.json"))
    models = {c: str(runs / "tokenizers" / n / "model") for c, n in FIT_COMPONENTS.items()}
    command = python(
        "musiclm.pipelines.fit_cli", "--dataset", str(demo / "train"), "--size", size,
        "--out", str(bundle), "--codec", models["codec"], "--semantic", models["semantic"],
        "--mulan", models["mulan"],
    )  # fmt: skip
    steps.append(Step("codebooks + bundle", command, bundle / "bundle.json"))
    for split in ("train", "heldout"):
        command = python(
            "musiclm.pipelines.tokenize_cli", "--dataset", str(demo / split),
            "--bundle", str(bundle), "--out", str(tokens / split),
            "--config", f"configs/pipelines/tokenize/{size}.yaml",
        )  # fmt: skip
        steps.append(Step(f"tokenize {split}", command, tokens / split / "dataset.json"))
    for stage in STAGES:
        command = python(
            "musiclm.training.cli", f"stage-{stage}",
            *stage_config_args(stage, size, Path("configs/stages")),
            "--data.root", str(tokens / "train"),
            "--trainer.default_root_dir", str(runs / stage),
            "--trainer.max_time", max_time(budget[f"stage-{stage}"]),
            "--ckpt_path", "last", "--seed_everything", str(args.seed),
        )  # fmt: skip
        steps.append(Step(f"stage {stage}", command, runs / stage / DONE_MARK, mark_done=True))
        for module, prefix, name in HELDOUT_SCORES:
            out = runs / "eval" / f"{prefix}-{stage}.json"
            command = python(
                module, str(runs / stage), "--heldout", str(tokens / "heldout"),
                "--train", str(tokens / "train"), "--out", str(out),
            )  # fmt: skip
            steps.append(Step(f"{name} {stage}", command, out))
    return steps


def sample_step(args: argparse.Namespace, prompts: list[str]) -> Step:
    runs = Path(args.runs)
    out = runs / "samples" / "demo" / "demo.wav"
    command = python(
        "musiclm.sampling.cli", "--bundle", str(runs / "bundle"), "--runs", str(runs),
        "--seconds", str(args.seconds), "--out", str(out), "--seed", str(args.seed),
        "--threads", str(args.threads),
    )  # fmt: skip
    for prompt in prompts:
        command += ["--text", prompt]
    last = out.with_name(f"demo_{len(prompts) - 1}.json")
    return Step(f"sample {len(prompts)} prompts", command, last)


def eval_step(args: argparse.Namespace) -> Step:
    runs = Path(args.runs)
    command = python(
        "musiclm.sampling.eval_cli", "--generated", str(runs / "samples" / "demo"),
        "--reference", str(Path(args.demo) / "heldout"), "--bundle", str(runs / "bundle"),
        "--noise-baseline", "--window-seconds", str(args.eval_window), "--out", str(runs / "eval"),
        "--curves", *(str(runs / "eval" / f"curve-{stage}.json") for stage in STAGES),
    )  # fmt: skip
    return Step("evaluation", command, runs / "eval" / "metrics.json")


def step_env(threads: int) -> dict[str, str]:
    """The environment of every step: ``threads`` torch/OpenMP threads per process.

    One by default: a step's data workers and Beam workers need cores too, and a 2-thread
    OpenMP process on a busy 2-core machine spends most of its time waiting at barriers
    (the SoundStream trainer made 13 steps in its 3-minute budget at load 7 with 2 threads,
    against about 0.7 steps/s with one).
    """
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run_step(step: Step, env: dict[str, str] | None = None) -> None:
    """Run ``step`` unless its output exists (in ``env``, default: this process's);
    stream its output; stop the demo on failure."""
    if step.output.exists():
        step.status = "skipped (output exists)"
        print(f"\n=== {step.name}: skipped, {step.output} exists", flush=True)
        return
    print(f"\n=== {step.name}\n$ {' '.join(step.command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(step.command, check=False, env=env)
    step.seconds = round(time.perf_counter() - started, 1)
    if result.returncode != 0:
        step.status = f"failed (exit {result.returncode})"
        sys.exit(
            f"demo: step '{step.name}' failed with exit code {result.returncode} after "
            f"{step.seconds} s; fix the error above and rerun `make demo` (finished steps are kept)"
        )
    if step.mark_done:
        step.output.parent.mkdir(parents=True, exist_ok=True)
        step.output.write_text(json.dumps({"seconds": step.seconds}))
    step.status = "done"
    print(f"=== {step.name}: done in {step.seconds} s", flush=True)


def summary(args: argparse.Namespace, steps: list[Step], prompts: list[str]) -> dict:
    runs = Path(args.runs)
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    mcc = metrics.get("mcc") or {}
    return {
        "steps": {s.name: {"status": s.status, "seconds": s.seconds} for s in steps},
        "prompts": prompts,
        "figures": {
            "mcc_own_prompt": mcc.get("own"),
            "mcc_other_prompts": mcc.get("others"),
            "fad_generated_vs_heldout": metrics["fad"].get("generated"),
            "fad_noise_vs_heldout": metrics["fad"].get("noise"),
            "kld_tags": metrics.get("kld"),
            "mcc_ceiling_heldout_music": metrics.get("mcc_reference"),
            "stages_heldout": {
                stage: json.loads((runs / "eval" / f"stage-{stage}.json").read_text())
                for stage in STAGES
            },
            "stage_steps": {
                stage: [
                    p["step"] for p in metrics.get("curves", {}).get(stage, {}).get("points", [])
                ]
                for stage in STAGES
            },
        },
        "outputs": {
            "demo music": str(Path(args.demo)),
            "bundle": str(runs / "bundle"),
            "shards": str(runs / "tokens"),
            "stages": {s: str(runs / s) for s in STAGES},
            "samples": [
                str(runs / "samples" / "demo" / f"demo_{i}.wav") for i in range(len(prompts))
            ],
            "report": str(runs / "eval" / "report.md"),
            "plot": str(runs / "eval" / "report.png"),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="musiclm-demo", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--demo", default="data/demo", help="demo music folder")
    parser.add_argument("--runs", default="runs", help="folder for every output")
    parser.add_argument("--size", default="small", help="config size: tiny | small | paper")
    parser.add_argument("--time-scale", type=float, default=1.0, help="x training budgets")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per sample")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every training and of sampling"
    )
    parser.add_argument("--eval-window", type=float, default=5.0, help="FAD window seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per step process")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    steps, env = build_steps(args), step_env(args.threads)
    for step in steps:
        run_step(step, env)
    prompts = pick_prompts(Path(args.demo) / "heldout")
    for step in (sample_step(args, prompts), eval_step(args)):
        steps.append(step)
        run_step(step, env)
    report = summary(args, steps, prompts)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    path = Path(args.runs) / "demo-summary.json"
    path.write_text(json.dumps(report, indent=2))
    print("\n=== demo finished\n" + json.dumps(report, indent=2))
    print(f"\nsummary: {path}\nreport:  {report['outputs']['report']}")


if __name__ == "__main__":
    main()
