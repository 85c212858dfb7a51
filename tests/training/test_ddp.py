"""The coarse and fine stages and the MuLan trainer under 2-process CPU DDP (gloo), run
through the training CLI: each rank reads its own data, and the first step's loss and
DDP-averaged gradients equal those of one process on both ranks' batches.

A callback (written beside the run, loaded by class path) saves the model before the
first step, each rank's first batch and loss, and rank 0's gradients after the DDP
all-reduce; the test then replays that step in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from musiclm.training.layout import IGNORE_LEVEL
from musiclm.training.mulan_eval import text_groups
from musiclm.training.mulan_trainer import MuLanModule, contrastive_loss
from musiclm.training.stage_configs import stage_config_files
from musiclm.training.stages import CoarseStage, FineStage

REPO = Path(__file__).resolve().parents[2]
RECORDER = '''
import torch
import pytorch_lightning as pl


class RecordFirstStep(pl.Callback):
    """Saves what the first step of each rank saw; every batch's keys per rank."""

    def __init__(self, out: str):
        self.out = out

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        rank = trainer.global_rank
        if trainer.global_step == 0:
            trainer.save_checkpoint(f"{self.out}/init.ckpt")  # every rank calls it
            torch.save(batch, f"{self.out}/batch{rank}.pt")
        with open(f"{self.out}/keys{rank}.txt", "a") as f:
            f.write("\\n".join(batch.get("keys") or batch.get("key")) + "\\n")

    def on_after_backward(self, trainer, module):
        if trainer.global_step == 0:
            grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
            torch.save(grads, f"{self.out}/grads{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            torch.save(outputs["loss"].detach(), f"{self.out}/loss{trainer.global_rank}.pt")
'''


def run_ddp(entry: str, configs: list[Path], out: Path, *args: str) -> None:
    """Run ``entry`` of the training CLI with ``configs`` (in order) on 2 CPU processes (DDP,
    gloo) with the recorder."""
    (out / "record_first_step.py").write_text(RECORDER)
    callbacks = out / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: record_first_step.RecordFirstStep\n"
        f"      init_args:\n        out: {out}\n"
    )
    command = [
        sys.executable, "-m", "musiclm.training.cli", entry,
        *(arg for config in configs for arg in ("--config", str(config))),
        "--config", str(callbacks),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.logger", "false",
        "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(out / "run"),
        *args,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(out))
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_same_gradients(module: torch.nn.Module, ddp: dict[str, torch.Tensor]) -> None:
    single = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert single.keys() == ddp.keys()
    for name, grad in ddp.items():
        torch.testing.assert_close(single[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def targets(batch: dict) -> int:
    return int((batch["levels"][:, 1:] != IGNORE_LEVEL).sum())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_a_stage_under_ddp_reads_disjoint_shards_and_steps_as_one_process(
    stage, token_dataset, tmp_path
):
    run_ddp(
        f"stage-{stage}", stage_config_files(stage, "tiny"), tmp_path,
        "--data.root", str(token_dataset), "--trainer.max_steps", "3",
        "--model.cond_dropout", "0", "--model.dropout", "0", "--data.epoch_samples", "48",
    )  # fmt: skip
    keys = [(tmp_path / f"keys{r}.txt").read_text().split() for r in (0, 1)]
    batches = [torch.load(tmp_path / f"batch{r}.pt", weights_only=False) for r in (0, 1)]
    shards = [{s for s in b["shards"]} for b in batches]
    assert len(keys[0]) == len(keys[1]) == 3 * 8  # 3 steps of batch 8 on each rank
    assert not set(keys[0]) & set(keys[1]) and not shards[0] & shards[1]
    module = {"coarse": CoarseStage, "fine": FineStage}[stage].load_from_checkpoint(
        tmp_path / "init.ckpt"
    )
    assert module.stage == stage
    tokens = torch.cat([b["tokens"] for b in batches])
    levels = torch.cat([b["levels"] for b in batches])
    stats = module._losses(tokens, levels)
    loss = stats["loss"].sum() / stats["count"].sum()  # one process, both ranks' rows
    loss.backward()
    counts = [targets(b) for b in batches]
    rank_losses = [torch.load(tmp_path / f"loss{r}.pt") for r in (0, 1)]
    gathered = sum(c * x for c, x in zip(counts, rank_losses, strict=True)) / sum(counts)
    torch.testing.assert_close(loss.detach(), gathered, rtol=1e-5, atol=1e-6)
    assert counts[0] == counts[1]  # so DDP's mean of rank gradients is the one-process one
    assert_same_gradients(module, torch.load(tmp_path / "grads0.pt"))


@pytest.mark.slow
def test_mulan_under_ddp_scores_each_rank_against_both_ranks_negatives(demo_music, tmp_path):
    config = REPO / "configs/tokenizers/mulan/tiny.yaml"
    run_ddp(
        "tokenizer-mulan", [config], tmp_path,
        "--data.root", str(demo_music / "train"), "--trainer.max_steps", "2",
        "--data.batch_size", "4", "--data.crop_seconds", "2.0", "--model.text.dropout", "0",
        "--trainer.gradient_clip_val", "null",
    )  # fmt: skip
    batches = [torch.load(tmp_path / f"batch{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(len(b["key"]) == 4 for b in batches)
    assert not torch.equal(batches[0]["wav"], batches[1]["wav"])  # each rank its own crops
    module = MuLanModule.load_from_checkpoint(tmp_path / "init.ckpt").train()
    # BatchNorm normalizes over each rank's rows, so each rank's rows are embedded apart
    parts = [module._embed(b) for b in batches]
    audio, text = (torch.cat([p[i] for p in parts]) for i in (0, 1))
    valid = torch.cat([p[2] for p in parts])
    sources = [text_groups(b["key"], "cpu") for b in batches]
    losses = [
        contrastive_loss(
            parts[r][0], parts[r][1], audio, text, 4 * r, module.scale,
            parts[r][2], valid, sources[r], torch.cat(sources),
        )
        for r in (0, 1)
    ]  # fmt: skip
    rank_losses = [torch.load(tmp_path / f"loss{r}.pt") for r in (0, 1)]
    for r in (0, 1):
        torch.testing.assert_close(losses[r].detach(), rank_losses[r], rtol=1e-5, atol=1e-6)
    own = (parts[0][2], parts[0][2], sources[0], sources[0])
    alone = contrastive_loss(*parts[0][:2], *parts[0][:2], 0, module.scale, *own)
    assert alone < losses[0]  # the other rank's rows are real negatives
    (sum(losses) / 2).backward()  # DDP averages the ranks' gradients
    assert_same_gradients(module, torch.load(tmp_path / "grads0.pt"))
