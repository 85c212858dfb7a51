"""Stage configs are a size file plus a stage overlay, composed by LightningCLI's repeated
``--config``; every (stage, size) pair must compose to the values the trainer ran with when
each pair was one full YAML (recorded from those files before the split)."""

from __future__ import annotations

import sys
from unittest.mock import patch

import pytest
import yaml
from musiclm.training.cli import TrainCLI, entry_classes
from musiclm.training.stage_configs import load_stage_config, stage_config_args

# size -> (dim, depth, heads, ff_dim, dropout, lr, warmup_steps, batch_size, max_steps,
#          every_n_train_steps of the checkpoint callback)
SIZES = {
    "tiny": (64, 2, 4, 128, 0.0, 0.003, 10, 8, 60, 20),
    "small": (128, 3, 4, 512, 0.0, 0.002, 100, 8, 2000, 100),
    "paper": (1024, 24, 16, 4096, 0.1, 0.0002, 5000, 16, 500000, 5000),  # MusicLM's sizes
}
# (stage, size) -> crop_seconds
CROPS = {
    ("semantic", "tiny"): 2.0, ("coarse", "tiny"): 1.0, ("fine", "tiny"): 0.5,
    ("semantic", "small"): 10.0, ("coarse", "small"): 2.0, ("fine", "small"): 1.0,
    ("semantic", "paper"): 30.0, ("coarse", "paper"): 10.0, ("fine", "paper"): 3.0,
}  # fmt: skip


class ParseOnlyCLI(TrainCLI):
    """The trainer's own LightningCLI parser, stopped before it builds model/data/trainer."""

    def instantiate_classes(self) -> None:
        pass


def parsed(stage: str, args: list[str]) -> dict:
    classes = entry_classes(f"stage-{stage}")
    with patch.object(sys, "argv", ["cli"]):  # pytest's own argv is not the trainer's
        cli = ParseOnlyCLI(*classes, args=[*args, "--data.root", "x"], run=False)
    return cli.config.as_dict()


@pytest.mark.parametrize(("stage", "size"), list(CROPS))
def test_each_stage_and_size_composes_to_its_recorded_values(stage, size):
    config = parsed(stage, stage_config_args(stage, size))
    model, data, trainer = config["model"], config["data"], config["trainer"]
    dim, depth, heads, ff_dim, dropout, lr, warmup, batch, max_steps, every = SIZES[size]
    assert (model["dim"], model["depth"], model["heads"], model["ff_dim"]) == (
        dim, depth, heads, ff_dim,
    )  # fmt: skip
    assert (model["dropout"], model["lr"], model["warmup_steps"]) == (dropout, lr, warmup)
    assert model["cond_dropout"] == (0.0 if stage == "fine" else 0.1)  # fine has no MuLan
    assert data["crop_seconds"] == CROPS[stage, size]
    assert data["batch_size"] == batch and trainer["max_steps"] == max_steps
    assert config["seed_everything"] == 0 and trainer["gradient_clip_val"] == 1.0
    [checkpoint] = trainer["callbacks"]
    assert checkpoint["class_path"] == "pytorch_lightning.callbacks.ModelCheckpoint"
    assert checkpoint["init_args"]["every_n_train_steps"] == every
    assert checkpoint["init_args"]["save_top_k"] == (-1 if size == "small" else 1)
    # the plain-YAML composition (benchmarks) agrees with LightningCLI's on every set value
    merged = load_stage_config(stage, size)
    for section in ("model", "data"):
        assert merged[section] == {k: config[section][k] for k in merged[section]}


def test_a_later_config_merges_dicts_key_by_key_and_replaces_lists(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "model": {"dim": 32},
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "pytorch_lightning.callbacks.LearningRateMonitor",
                            "init_args": {"logging_interval": "step"},
                        }
                    ]
                },
            }
        )
    )
    config = parsed("coarse", [*stage_config_args("coarse", "tiny"), "--config", str(overlay)])
    assert config["model"]["dim"] == 32 and config["model"]["depth"] == 2  # merged
    assert config["data"]["crop_seconds"] == 1.0  # the stage overlay still applies
    [callback] = config["trainer"]["callbacks"]  # the size file's checkpoint callback is gone
    assert callback["class_path"].endswith("LearningRateMonitor")


def test_a_missing_size_names_the_file():
    with pytest.raises(FileNotFoundError, match=r"huge\.yaml"):
        stage_config_args("coarse", "huge")
