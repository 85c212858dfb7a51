"""Stage trainers: gradients reach every parameter, loss falls, conditioning is used,
the LR schedule completes within a step or time budget, checkpoints carry layout and
bundle, a killed run resumes, and 2-process DDP trains."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from musiclm.training.schedule import budget_progress, warmup_cosine
from musiclm.training.shard_data import CoarseData, FineData, SemanticData
from musiclm.training.stage_configs import stage_config_args
from musiclm.training.stage_eval import level_counts, unigram_baselines
from musiclm.training.stage_model import load_stage
from musiclm.training.stages import CoarseStage, FineStage, SemanticStage, StageCheckpointError

TINY = dict(dim=64, depth=2, heads=4, ff_dim=128, dropout=0.0, num_buckets=16, max_distance=64)
STAGES = {
    "semantic": (SemanticStage, SemanticData, 2.0),
    "coarse": (CoarseStage, CoarseData, 1.0),
    "fine": (FineStage, FineData, 0.5),
}
REPO = Path(__file__).resolve().parents[2]


def data_for(stage, root, **kw):
    _, data_class, crop = STAGES[stage]
    args = dict(crop_seconds=crop, batch_size=8, num_workers=0, val_fraction=0.2, epoch_samples=400)
    return data_class(str(root), **(args | kw))


def built(stage, data, **kw):
    module = STAGES[stage][0](**(TINY | kw))
    module._build(data.spec, data.fingerprint)
    return module


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_every_trainable_parameter_gets_a_gradient(stage, token_dataset):
    data = data_for(stage, token_dataset)
    batch = next(iter(data.train_dataloader()))
    module = built(stage, data, cond_dropout=0.5)
    torch.manual_seed(0)
    tokens = batch["tokens"]
    if module.layout.uses_mulan:  # half the rows with null conditioning, as dropout does
        tokens = module.layout.drop_conditioning(tokens, torch.arange(8) % 2 == 0)
    stats = module._losses(tokens, batch["levels"])
    (stats["loss"].sum() / stats["count"].sum()).backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    used = torch.unique(tokens)
    rows = module.model.embedding.weight.grad.abs().sum(1)
    assert bool((rows[used[used > 0]] > 0).all())  # every token in the batch (not PAD)


def test_condition_dropout_reaches_the_null_tokens(token_dataset):
    data = data_for("semantic", token_dataset)
    batch = next(iter(data.train_dataloader()))
    nulls = slice(data.layout.null_offset, data.layout.null_offset + data.spec.mulan_levels)
    for p, expect in ((1.0, True), (0.0, False)):
        module = built("semantic", data, cond_dropout=p)
        module.log = module.log_dict = lambda *a, **k: None
        sgd = torch.optim.SGD(module.parameters(), lr=0.1)
        module.optimizers = lambda sgd=sgd: sgd
        module.training_step(batch, 0).backward()
        assert bool(module.model.embedding.weight.grad[nulls].any()) == expect


def baselines(data) -> tuple[float, float]:
    """(held-out unigram entropy, train-unigram cross entropy) of ``data``'s targets."""
    held = level_counts(data.val_dataloader(), data.layout)
    return unigram_baselines(held, level_counts(data.train_dataloader(), data.layout), data.layout)


def fit(stage, root, tmp_path, steps, crop):
    pl.seed_everything(0)
    data = data_for(stage, root, crop_seconds=crop, val_fraction=0.25)
    module = STAGES[stage][0](**TINY, lr=3e-3, warmup_steps=10, cond_dropout=0.1)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    trainer.limit_val_batches = 1.0
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    return data, {k: round(float(v), 3) for k, v in metrics.items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_on_real_music_held_out_loss_beats_the_unigram_model(stage, demo_tokens, tmp_path):
    """Tokens of the demo music (real pipeline, tiny untrained tokenizers): held-out sources'
    loss is below what the training split's unigram distribution scores on them. (With
    untrained tokenizers and 100 steps the MuLan effect is within noise here; the
    conditioning test below uses tokens that depend on MuLan by construction.)"""
    crop = {"semantic": 4.0, "coarse": 1.0, "fine": 0.5}[stage]
    data, metrics = fit(stage, demo_tokens, tmp_path, steps=100, crop=crop)
    entropy, cross = baselines(data)
    print(
        f"real {stage}",
        metrics,
        f"held-out unigram entropy {entropy:.3f}, train unigram {cross:.3f}",
    )
    assert metrics["val/loss"] < cross


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["semantic", "coarse"])
def test_conditioning_is_used_on_structured_tokens(stage, token_dataset, tmp_path):
    """Synthetic clips whose tokens depend on their MuLan tokens by construction (conftest):
    own conditioning beats conditioning shuffled across clips and the null conditioning,
    and the loss falls well below the held-out unigram entropy."""
    crop = {"semantic": 2.0, "coarse": 0.2}[stage]
    data, metrics = fit(
        stage, token_dataset, tmp_path, steps=120 if stage == "coarse" else 80, crop=crop
    )
    entropy, _ = baselines(data)
    print(f"synthetic {stage}", metrics, f"held-out unigram entropy {entropy:.3f}")
    assert metrics["val/loss"] < 0.8 * entropy
    assert metrics["val/loss"] < metrics["val/loss_shuffled_mulan"] - 0.05
    assert metrics["val/loss"] < metrics["val/loss_null"]


def test_schedule_warms_up_then_ends_at_its_floor_on_the_last_step_of_either_budget():
    assert warmup_cosine(0.05, 0.1, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert budget_progress(99, 100, None, None) == 1.0  # the last of 100 steps
    # a 60 s budget at 1 s a step: step 59 (59 s spent) is the last one
    assert budget_progress(59, 10_000, 59.0, 60.0) == pytest.approx(1.0)
    assert budget_progress(29, 10_000, 29.0, 60.0) == pytest.approx(0.5)


class LearningRates(pl.Callback):
    """The learning rate each optimizer step runs with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_a_run_without_a_step_budget_is_refused_with_the_fix(
    token_dataset, quiet_trainer, tmp_path
):
    """Stage data never ends, so without ``max_steps`` the schedule has no length: a plain
    error naming the flag, not an OverflowError from deep inside Lightning."""
    data = data_for("semantic", token_dataset)
    trainer = quiet_trainer(tmp_path, -1, max_time="00:00:00:04", enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"--trainer\.max_steps"):
        trainer.fit(built("semantic", data), datamodule=data)


@pytest.mark.parametrize("budget", ["steps", "time"])
def test_a_budgeted_run_finishes_its_schedule(budget, token_dataset, quiet_trainer, tmp_path):
    """The LR warms up to its peak and reaches its floor at the budget's last step, whether
    the run stops at ``max_steps`` or at ``max_time`` long before ``max_steps``."""
    data = data_for("semantic", token_dataset)
    lr, floor = 2e-3, 0.1
    module = built("semantic", data, lr=lr, warmup_steps=40, min_lr_ratio=floor)
    rates = LearningRates()
    limits = {"steps": 400} if budget == "steps" else {"steps": 10**6, "max_time": "00:00:00:04"}
    trainer = quiet_trainer(tmp_path, **limits, enable_checkpointing=False, callbacks=[rates])
    trainer.fit(module, datamodule=data)
    steps = len(rates.rates)
    assert steps == 400 if budget == "steps" else 10 < steps < 10**6
    assert max(rates.rates) > 0.95 * lr  # warm-up ended
    assert rates.rates[-1] == pytest.approx(floor * lr, rel=0.2)
    assert rates.rates[-1] < 0.15 * lr


def test_checkpoint_carries_layout_and_bundle_and_loads_for_sampling(
    token_dataset, tmp_path, quiet_trainer
):
    data = data_for("coarse", token_dataset)
    module = STAGES["coarse"][0](**TINY)
    trainer = quiet_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "coarse.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_stage(path)
    assert loaded.layout == data.layout and loaded.bundle_fingerprint == data.fingerprint
    batch = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch["tokens"]), module.model(batch["tokens"]))
    again = CoarseStage.load_from_checkpoint(path)
    assert again.layout == data.layout
    with pytest.raises(StageCheckpointError, match="coarse stage, not fine"):
        FineStage.load_from_checkpoint(path)
    with pytest.raises(StageCheckpointError, match="not a MusicLM stage checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        load_stage(tmp_path / "other.ckpt")


def test_resuming_on_data_of_another_bundle_is_refused(token_dataset, make_tokens, tmp_path):
    data = data_for("semantic", token_dataset)
    module = built("semantic", data)
    other = make_tokens(tmp_path / "other", sources=4, num_shards=2, fingerprint="0123456789abcdef")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(StageCheckpointError, match="bundle 0123456789abcdef"):
        trainer.fit(module, datamodule=data_for("semantic", other, val_fraction=0))


def cli(*args, root, run_dir, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(extra_env or {}))
    command = [
        sys.executable,
        "-m",
        "musiclm.training.cli",
        "stage-semantic",
        *stage_config_args("semantic", "tiny"),
        "--data.root",
        str(root),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        *args,
    ]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def logged_steps(run_dir):
    steps = []
    for path in sorted(Path(run_dir).rglob("metrics.csv")):
        lines = path.read_text().splitlines()
        column = lines[0].split(",").index("step")
        steps.append(
            [int(line.split(",")[column]) for line in lines[1:] if line.split(",")[column]]
        )
    return steps


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_step(token_dataset, tmp_path):
    run = tmp_path / "run"
    every = ["--trainer.callbacks.init_args.every_n_train_steps", "10"]
    first = cli(
        "--trainer.max_steps",
        "400",
        "--trainer.log_every_n_steps",
        "1",
        *every,
        root=token_dataset,
        run_dir=run,
    )
    deadline = time.time() + 120
    while not list(run.rglob("step=20.ckpt")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    checkpoint = next(run.rglob("step=20.ckpt"))
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 20
    assert state["musiclm"]["config"]["data"]["root"] == str(token_dataset)
    second = cli(
        "--trainer.max_steps",
        "35",
        "--trainer.log_every_n_steps",
        "1",
        *every,
        "--ckpt_path",
        str(checkpoint),
        root=token_dataset,
        run_dir=run,
    )
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    resumed = logged_steps(run)[-1]
    assert resumed[0] == 20 and max(resumed) == 34  # steps 20..34 (0-based) after the resume
    last = max(run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert (
        torch.load(last, weights_only=True)["global_step"] == 35
    )  # last.ckpt is the final step, not the last periodic save


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_and_ranks_read_different_shards(token_dataset, tmp_path):
    recorder = tmp_path / "record_shards.py"
    recorder.write_text(
        "import pytorch_lightning as pl\n"
        "class RecordShards(pl.Callback):\n"
        "    def __init__(self, out: str):\n"
        "        self.out = out\n"
        "    def on_train_batch_start(self, trainer, module, batch, batch_idx):\n"
        "        with open(f'{self.out}/rank{trainer.global_rank}.txt', 'a') as f:\n"
        "            f.write('\\n'.join(batch['shards']) + '\\n')\n"
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: record_shards.RecordShards\n"
        f"      init_args:\n        out: {tmp_path}\n"
        "    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        "      init_args:\n        save_last: true\n"
    )
    run = cli(
        "--config",
        str(config),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "8",
        "--data.epoch_samples",
        "64",
        root=token_dataset,
        run_dir=tmp_path / "run",
        extra_env={"PYTHONPATH": str(tmp_path)},
    )
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    shards = [set((tmp_path / f"rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert (
        torch.load(next((tmp_path / "run").rglob("last.ckpt")), weights_only=True)["global_step"]
        == 8
    )
