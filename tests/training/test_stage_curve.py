"""Held-out learning curve: one point per saved step of a stage run, scored on held-out clips."""

import json

import pytest
import pytorch_lightning as pl
from musiclm.training.shard_data import SemanticData
from musiclm.training.stage_curve import checkpoints_by_step, main
from musiclm.training.stages import SemanticStage
from pytorch_lightning.callbacks import ModelCheckpoint

TINY = dict(dim=64, depth=2, heads=4, ff_dim=128, dropout=0.0, num_buckets=16, max_distance=64)


def test_curve_scores_every_saved_step_and_falls_with_training(token_dataset, tmp_path):
    pl.seed_everything(0)
    data = SemanticData(str(token_dataset), crop_seconds=2.0, batch_size=8, num_workers=0,
                        val_fraction=0.25, epoch_samples=400)  # fmt: skip
    saves = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", filename="{step}",
                            every_n_train_steps=30, save_top_k=-1, save_last=True)  # fmt: skip
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=False, callbacks=[saves],
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(SemanticStage(**TINY, lr=3e-3, warmup_steps=5), datamodule=data)
    assert list(checkpoints_by_step(tmp_path / "run")) == [30, 60]  # last.ckpt is step 60 too
    out = tmp_path / "curve.json"
    main([str(tmp_path / "run"), "--heldout", str(token_dataset), "--train", str(token_dataset),
          "--out", str(out)])  # fmt: skip
    curve = json.loads(out.read_text())
    assert curve["stage"] == "semantic"
    points = curve["points"]
    assert [p["step"] for p in points] == [30, 60]
    assert points[-1]["loss"] < points[0]["loss"]
    assert points[-1]["loss"] < curve["train_unigram_cross_entropy"]
    assert {"loss_null", "loss_shuffled_mulan"} <= set(points[0])


def test_a_run_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main([str(tmp_path), "--heldout", str(tmp_path), "--train", str(tmp_path)])
