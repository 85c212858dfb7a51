"""The in-project semantic model learns on real music, and its ids carry music structure."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.kmeans import fit_kmeans
from musiclm.tokenizers.semantic import SemanticTokenizer
from musiclm.tokenizers.semantic_model import SemanticModelConfig
from musiclm.training.audio_data import AudioCropDataModule
from musiclm.training.cli import main as train_cli
from musiclm.training.semantic_trainer import SemanticModule

SPEC = TokenSpec(semantic_vocab=64)
CROP = 4 * SPEC.sample_rate  # held-out crops: the first and last 4 s of each piece
STEPS = 300
MODEL = SemanticModelConfig(
    n_mels=48, n_fft=1024, dim=64, num_layers=3, num_heads=4, ffn_dim=128, conv_kernel=15,
    dropout=0.0, layer=2,
)  # fmt: skip


def pieces(root: Path) -> list[torch.Tensor]:
    """Every audio file under ``root`` as mono float [N] at 24 kHz, in a stable order."""
    records = sorted(read_sources(root), key=lambda r: r.key)
    return [load_audio(r.path, SPEC.sample_rate, r.start or 0.0, r.end) for r in records]


@pytest.fixture(scope="module")
def music(demo_music):
    return pieces(demo_music / "train"), pieces(demo_music / "heldout")


@pytest.fixture(scope="module")
def trained(demo_music, music):
    """(module, held-out accuracy untrained, trained, majority-class share), on demo crops."""
    _, heldout = music
    pl.seed_everything(0)
    module = SemanticModule(
        model=MODEL, spec=SPEC.to_dict(), num_targets=32, lr=3e-3, warmup_steps=10
    )
    data = AudioCropDataModule(
        str(demo_music), crop_seconds=2.0, batch_size=8, crops_per_epoch=1200, val_crops=0,
        return_text=False,
    )  # fmt: skip
    module.fit_targets(data.train_dataloader())
    held = torch.stack([p[:CROP] for p in heldout] + [p[-CROP:] for p in heldout])
    before = module.heldout_accuracy(held)
    counts = torch.bincount(module.targets(held).flatten())
    majority = float(counts.max() / counts.sum())  # accuracy of always guessing the commonest
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    return module, before, module.heldout_accuracy(held), majority


@pytest.mark.slow
def test_masked_prediction_accuracy_rises_on_heldout_music(trained):
    module, before, after, majority = trained
    print(
        f"held-out masked-prediction accuracy: untrained {before:.3f}, trained {after:.3f}, "
        f"majority-class share {majority:.3f}"
    )
    assert bool(module.targets_fitted)  # the targets fitted before training were kept
    # Learning means beating the untrained model and a constant guess of the commonest target.
    assert after >= before + 0.1 and after > majority


@pytest.mark.slow
def test_ids_of_the_same_piece_are_more_alike_than_of_different_pieces(trained, music):
    module = trained[0]
    train, heldout = music
    tok = module.tokenizer()
    feats = tok.features(torch.stack([p[: 8 * SPEC.sample_rate] for p in train]))
    tok.set_centroids(fit_kmeans(feats.reshape(-1, tok.dim).numpy(), SPEC.semantic_vocab))
    # Two non-overlapping crops of each held-out piece: its start and its end.
    ids = tok.encode(torch.stack([p[:CROP] for p in heldout] + [p[-CROP:] for p in heldout]))
    n = len(heldout)
    hist = np.stack([np.bincount(row, minlength=SPEC.semantic_vocab) for row in ids.numpy()])
    hist = hist / hist.sum(1, keepdims=True)

    def overlap(a: int, b: int) -> float:
        return float(np.minimum(hist[a], hist[b]).sum())

    same = np.mean([overlap(i, n + i) for i in range(n)])
    different = np.mean([overlap(i, n + j) for i, j in itertools.permutations(range(n), 2)])
    print(f"histogram overlap: same piece {same:.3f}, different pieces {different:.3f}")
    assert same >= different + 0.15


def test_exported_component_loads_as_a_semantic_tokenizer(tmp_path):
    module = SemanticModule(model=MODEL, spec=SPEC.to_dict(), num_targets=8)
    module.export_component(tmp_path / "model")
    tok = SemanticTokenizer.load(tmp_path / "model")
    assert tok.backend == "in-project" and tok.centroids is None
    assert len(tok.feature_model.blocks) == MODEL.layer  # blocks above the feature layer dropped
    wav = torch.randn(2, 3 * SPEC.samples_per_semantic + 17) * 0.1
    torch.testing.assert_close(tok.features(wav), module.tokenizer().features(wav))


def test_second_iteration_targets_come_from_the_teacher(tmp_path):
    SemanticModule(model=MODEL, spec=SPEC.to_dict(), num_targets=8).export_component(
        tmp_path / "first"
    )
    second = SemanticModule(
        model=MODEL, spec=SPEC.to_dict(), num_targets=8, teacher=str(tmp_path / "first")
    )
    assert second.target_centroids.shape == (8, MODEL.dim)
    wav = torch.randn(4, 24_000) * 0.1
    second.fit_targets([{"wav": wav}])
    targets = second.targets(wav)
    assert targets.shape == (4, 25) and int(targets.max()) < 8
    loss, accuracy = second.masked_prediction(wav)
    assert torch.isfinite(loss) and 0.0 <= float(accuracy) <= 1.0


def test_sample_rate_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"set model\.sample_rate to 24000"):
        SemanticModule(model=SemanticModelConfig(sample_rate=16_000), spec=SPEC.to_dict())


@pytest.mark.slow
def test_cli_trains_tiny_config_and_exports_a_tokenizer(demo_music, tmp_path):
    train_cli(
        [
            "tokenizer-semantic",
            "--config",
            str(Path(__file__).parents[2] / "configs/tokenizers/semantic/tiny.yaml"),
            "--data.root",
            str(demo_music),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
            "--data.val_crops",
            "4",
        ]
    )
    tok = SemanticTokenizer.load(tmp_path / "run" / "model")
    wav = torch.randn(1, SPEC.samples_per_semantic * 7) * 0.1
    assert tok.features(wav).shape == (1, 7, 32)
    assert list((tmp_path / "run").rglob("*.ckpt"))
