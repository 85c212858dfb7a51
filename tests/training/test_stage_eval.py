"""Stage evaluation: unigram baselines by hand, and the CLI's report on a trained checkpoint."""

import json
import math
from collections import Counter

import pytest
import pytorch_lightning as pl
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.layout import TokenLayout
from musiclm.training.shard_data import CoarseData
from musiclm.training.stage_eval import find_checkpoint, main, unigram_baselines
from musiclm.training.stages import CoarseStage, StageCheckpointError

TINY = dict(dim=32, depth=1, heads=2, ff_dim=64, dropout=0.0, num_buckets=8, max_distance=32)


def test_unigram_baselines_match_hand_computation() -> None:
    layout = TokenLayout(TokenSpec(semantic_vocab=4), "semantic")
    start = layout.target_range(0)[0]
    held = [Counter({start: 3, start + 1: 1})]
    train = [Counter({start: 1, start + 2: 5})]
    entropy, cross = unigram_baselines(held, train, layout)
    assert entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    # add-one smoothing over the level's 4 ids: (1+1)/(6+4) for id 0, (0+1)/10 for id 1
    assert cross == pytest.approx(-(3 * math.log(0.2) + math.log(0.1)) / 4)
    with pytest.raises(ValueError, match="no held-out"):
        unigram_baselines([Counter()], train, layout)


def test_cli_reports_losses_conditioning_and_baselines(
    token_dataset, tmp_path, quiet_trainer
) -> None:
    pl.seed_everything(0)
    data = CoarseData(str(token_dataset), crop_seconds=1.0, batch_size=4, num_workers=0)
    trainer = quiet_trainer(tmp_path, steps=3)
    trainer.fit(CoarseStage(**TINY), datamodule=data)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    out = tmp_path / "eval" / "coarse.json"

    main([str(tmp_path / "run"), "--heldout", str(token_dataset), "--train", str(token_dataset),
          "--crop-seconds", "1.0", "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["stage"] == "coarse"
    assert report["checkpoint"].endswith("last.ckpt")
    # every clip of the root is scored: 24 sources x 4 clips, 1 s = 50 frames x 4 levels
    assert report["heldout_target_tokens"] == 24 * 4 * 50 * data.layout.num_target_levels
    for key in ("loss", "loss_null", "loss_shuffled_mulan", "loss_shuffled_semantic"):
        assert 0 < report[key] < 20
    assert report["uniform"] == pytest.approx(math.log(data.spec.acoustic_codebook_size), abs=1e-4)
    # the same root on both sides: the train unigram scores no better than the oracle one
    assert report["train_unigram_cross_entropy"] >= report["heldout_unigram_entropy"]


def test_a_run_folder_without_checkpoint_is_refused(tmp_path) -> None:
    with pytest.raises(StageCheckpointError, match="no checkpoint under"):
        find_checkpoint(tmp_path)
