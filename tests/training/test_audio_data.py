"""Audio crops for the tokenizer trainers: shapes, padding, fixed validation, broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from musiclm.tokenizers.source_records import held_out
from musiclm.training.audio_data import AudioCropDataModule


def _tone(path: Path, seconds: float, sr: int = 16000, freq: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)


def test_batches_from_the_demo_music(demo_music: Path) -> None:
    dm = AudioCropDataModule(
        str(demo_music), crop_seconds=1.5, batch_size=4, crops_per_epoch=8, val_crops=6
    )
    dm.setup("fit")
    assert all("/heldout/" in r.path for r in dm.val_records)
    assert not {r.key for r in dm.val_records} & {r.key for r in dm.train_records}
    assert len(dm.captions()) == len(dm.train_records) and all(dm.captions())

    batch = next(iter(dm.train_dataloader()))
    n = round(1.5 * dm.sample_rate)
    assert batch["wav"].shape == (4, n) and batch["wav"].dtype == torch.float32
    assert batch["length"].dtype == torch.int64 and (batch["length"] == n).all()
    assert len(batch["caption"]) == 4 and all(batch["caption"])
    assert len(batch["key"]) == 4
    assert (batch["wav"].abs().amax(dim=1) > 0).all()

    # validation crops are the same for the same seed, and differ for another seed
    val = [b["wav"] for b in dm.val_dataloader()]
    again = AudioCropDataModule(str(demo_music), crop_seconds=1.5, batch_size=4, val_crops=6)
    assert all(
        torch.equal(a, b)
        for a, b in zip(val, [b["wav"] for b in again.val_dataloader()], strict=True)
    )
    other = AudioCropDataModule(
        str(demo_music), crop_seconds=1.5, batch_size=4, val_crops=6, seed=1
    )
    assert not torch.equal(val[0], next(iter(other.val_dataloader()))["wav"])
    assert sum(b.shape[0] for b in val) == 6


def test_train_folder_finds_sibling_heldout(demo_music: Path) -> None:
    dm = AudioCropDataModule(str(demo_music / "train"), return_text=False)
    dm.setup()
    assert dm.val_records and all("/heldout/" in r.path for r in dm.val_records)


def test_training_crops_differ_between_epochs(tmp_path: Path) -> None:
    _tone(tmp_path / "a.wav", 5.0)
    dm = AudioCropDataModule(
        str(tmp_path),
        16000,
        crop_seconds=0.5,
        batch_size=4,
        crops_per_epoch=4,
        heldout_fraction=0.0,
    )
    loader = dm.train_dataloader()
    first, second = (next(iter(loader))["wav"] for _ in range(2))
    assert not torch.equal(first, second)


def test_short_clip_is_zero_padded(tmp_path: Path) -> None:
    _tone(tmp_path / "short.wav", 0.3)
    dm = AudioCropDataModule(
        str(tmp_path),
        16000,
        crop_seconds=1.0,
        batch_size=2,
        crops_per_epoch=2,
        heldout_fraction=0.0,
        return_text=False,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["wav"].shape == (2, 16000) and "caption" not in batch
    assert (batch["length"] == 4800).all()
    assert batch["wav"][:, 4800:].abs().max() == 0 and batch["wav"][:, :4800].abs().max() > 0.1


def test_broken_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _tone(tmp_path / "good.wav", 2.0)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    (tmp_path / "empty.flac").write_bytes(b"")
    dm = AudioCropDataModule(
        str(tmp_path),
        16000,
        crop_seconds=0.5,
        batch_size=8,
        crops_per_epoch=32,
        heldout_fraction=0.0,
    )
    with caplog.at_level(logging.WARNING, logger="musiclm.training.audio_data"):
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 32 and all(k.startswith("good-") for k in keys)
    text = caplog.text
    assert "broken" in text and "empty" in text and "cannot decode" in text


def test_nothing_decodable_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    dm = AudioCropDataModule(str(tmp_path), 16000, heldout_fraction=0.0, crops_per_epoch=1)
    with pytest.raises(RuntimeError, match="none of the 1 audio sources could be decoded"):
        next(iter(dm.train_dataloader()))
    dm = AudioCropDataModule(
        str(tmp_path), 16000, heldout_fraction=0.0, crops_per_epoch=1, weight_by_duration=False
    )
    with pytest.raises(RuntimeError, match="in a row could not be decoded"):
        next(iter(dm.train_dataloader()))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no training audio"):
        AudioCropDataModule(str(tmp_path / "empty_dir")).setup()


def test_heldout_fraction_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    for i in range(40):
        _tone(tmp_path / f"t{i:02d}.wav", 0.1)
    splits = []
    for _ in range(2):
        dm = AudioCropDataModule(str(tmp_path), 16000, heldout_fraction=0.25)
        dm.setup()
        splits.append(({r.key for r in dm.train_records}, {r.key for r in dm.val_records}))
    (train, val), again = splits
    assert (train, val) == again and not train & val and len(train) + len(val) == 40
    assert 3 <= len(val) <= 18
    assert all(held_out(k, 0.25) for k in val)


def test_sources_are_drawn_in_proportion_to_their_length(tmp_path: Path) -> None:
    _tone(tmp_path / "long.wav", 9.0)
    _tone(tmp_path / "short.wav", 1.0)
    common = dict(crop_seconds=0.2, batch_size=50, crops_per_epoch=400, heldout_fraction=0.0)
    weighted = AudioCropDataModule(str(tmp_path), 16000, **common)
    keys = [k for b in weighted.train_dataloader() for k in b["key"]]
    assert 0.8 < sum(k.startswith("long-") for k in keys) / len(keys) < 0.98
    uniform = AudioCropDataModule(str(tmp_path), 16000, weight_by_duration=False, **common)
    keys = [k for b in uniform.train_dataloader() for k in b["key"]]
    assert 0.38 < sum(k.startswith("long-") for k in keys) / len(keys) < 0.62
