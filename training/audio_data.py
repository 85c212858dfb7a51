"""Random audio crops (+ captions) from a dataset root: the data of the three tokenizer trainers.

:class:`AudioCropDataModule` reads any dataset layout of :mod:`musiclm.tokenizers.dataset_layouts`
(a folder with sidecars, a JSONL manifest, a MusicCaps CSV, FMA's ``tracks.csv``) and
serves batches::

    {"wav": FloatTensor[B, N],      N = round(crop_seconds * sample_rate), mono
     "length": LongTensor[B],       valid samples per row (shorter clips are zero-padded)
     "caption": list[str],          only with return_text=True ('' when a source has none)
     "key": list[str]}              source key of each crop

Training crops are drawn at random (a source chosen in proportion to its length, a uniform
start inside it)
and only the crop is decoded (``load_audio(path, sr, start, end)``). A file that cannot be
decoded is skipped with a warning naming it and another source is drawn: a broken file
never stops training. Validation crops are fixed: the same held-out sources and offsets
for a given seed, every epoch and every run.

Held-out sources: ``heldout`` (any dataset path); else ``root/heldout`` when ``root`` has
``train/`` and ``heldout/`` folders (the demo music), or the sibling ``heldout/`` when
``root`` is a ``train/`` folder; else a deterministic ``heldout_fraction`` of the sources,
chosen by a hash of their keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from musiclm.tokenizers.audio import AudioError, audio_info, load_audio
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.source_records import SourceRecord, held_out
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 50


def source_seconds(records: list[SourceRecord]) -> np.ndarray:
    """[n] seconds of each source's segment: metadata ``duration``/``seconds``, else the header.

    A source whose header cannot be read gets weight 0 (it would be skipped anyway).
    """
    out = np.zeros(len(records))
    for i, record in enumerate(records):
        if record.start is not None and record.end is not None:
            out[i] = record.end - record.start
            continue
        known = record.metadata.get("duration") or record.metadata.get("seconds")
        try:
            total = float(known) if known else audio_info(record.path).seconds
        except (AudioError, TypeError, ValueError) as err:
            log.warning("skipping broken audio source %s: %s", record.key, err)
            continue
        out[i] = max(0.0, min(record.end or total, total) - (record.start or 0.0))
    if not out.any():
        raise RuntimeError(
            f"none of the {len(records)} audio sources could be decoded; check the dataset"
        )
    return out


class _Crops(Dataset):
    """Crops of ``crop_samples`` from ``records``; subclasses choose source and offset."""

    def __init__(
        self,
        records: list[SourceRecord],
        sample_rate: int,
        crop_samples: int,
        seed: int,
        return_text: bool,
    ) -> None:
        if not records:
            raise ValueError("no audio sources to crop from")
        self.records = records
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.seed = seed
        self.return_text = return_text
        self._seconds: dict[int, float] = {}
        self._broken: set[int] = set()

    def _segment(self, index: int) -> tuple[float, float]:
        """(start, end) seconds of source ``index`` (header read once per process)."""
        record = self.records[index]
        if index not in self._seconds:
            self._seconds[index] = audio_info(record.path).seconds
        start = record.start or 0.0
        end = min(record.end or self._seconds[index], self._seconds[index])
        if end <= start:
            raise AudioError(record.path, f"segment {start}-{end} s is outside the file")
        return start, end

    def _crop(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        start, end = self._segment(index)
        crop = self.crop_samples / self.sample_rate
        offset = start + rng.uniform(0.0, end - start - crop) if end - start > crop else start
        wav = load_audio(self.records[index].path, self.sample_rate, offset, offset + crop)
        wav = wav[: self.crop_samples]
        out = torch.zeros(self.crop_samples)
        out[: wav.numel()] = wav
        item: dict[str, Any] = {
            "wav": out,
            "length": wav.numel(),
            "key": self.records[index].key,
        }
        if self.return_text:
            item["caption"] = self.records[index].caption
        return item

    def _try(self, index: int, rng: np.random.Generator) -> dict[str, Any] | None:
        if index in self._broken:
            return None
        try:
            return self._crop(index, rng)
        except AudioError as err:
            self._broken.add(index)
            log.warning("skipping broken audio source %s: %s", self.records[index].key, err)
            return None


class RandomCrops(_Crops):
    """``length`` random crops per epoch; item ``i`` draws from (seed, process seed, i, call).

    A source is drawn with probability ``weights`` (default uniform), its offset uniformly.
    """

    def __init__(
        self,
        records: list[SourceRecord],
        length: int,
        weights: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(records, **kwargs)
        self.length = length
        self.weights = None if weights is None else np.asarray(weights) / np.sum(weights)
        self._calls = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._calls += 1
        # torch's process seed differs per worker and epoch, so crops differ between epochs
        rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**63, i, self._calls])
        for _ in range(MAX_ATTEMPTS):
            item = self._try(int(rng.choice(len(self.records), p=self.weights)), rng)
            if item is not None:
                return item
        raise RuntimeError(
            f"{MAX_ATTEMPTS} audio sources in a row could not be decoded "
            f"({len(self._broken)} of {len(self.records)} known broken); check the dataset"
        )


class FixedCrops(_Crops):
    """``count`` crops that are the same every epoch: source ``i % n`` at a seeded offset."""

    def __init__(self, records: list[SourceRecord], count: int, **kwargs: Any) -> None:
        super().__init__(records, **kwargs)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.records)
        for step in range(n):  # a broken source gives way to the next one, deterministically
            item = self._try((i + step) % n, np.random.default_rng([self.seed, i]))
            if item is not None:
                return item
        raise RuntimeError("no held-out audio source could be decoded; check the dataset")


class AudioCropDataModule(pl.LightningDataModule):
    """Random training crops and fixed validation crops of a dataset (see the module doc).

    Args:
        root: dataset root, manifest or CSV (any layout ``read_sources`` reads).
        sample_rate: rate of the returned audio (default: the token contract's 24 kHz).
        crop_seconds: crop length; shorter sources are zero-padded (see ``length``).
        batch_size, num_workers: of both loaders.
        crops_per_epoch: random training crops per epoch.
        val_crops: fixed validation crops (0: no validation).
        seed: seeds the crops and the held-out choice.
        heldout: a held-out dataset path; ``None`` finds one (see the module doc).
        heldout_fraction: share of sources held out when no held-out folder exists.
        return_text: put each crop's caption into the batch.
        weight_by_duration: draw sources in proportion to their length (every second of
            audio equally likely; lengths from the source's metadata ``duration``/``seconds``
            or the file header); else every source equally often.
    """

    def __init__(
        self,
        root: str,
        sample_rate: int = TokenSpec().sample_rate,
        crop_seconds: float = 2.0,
        batch_size: int = 8,
        num_workers: int = 0,
        crops_per_epoch: int = 1024,
        val_crops: int = 64,
        seed: int = 0,
        heldout: str | None = None,
        heldout_fraction: float = 0.1,
        return_text: bool = True,
        weight_by_duration: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.sample_rate = sample_rate
        self.crop_samples = round(crop_seconds * sample_rate)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.crops_per_epoch = crops_per_epoch
        self.val_crops = val_crops
        self.seed = seed
        self.heldout = heldout
        self.heldout_fraction = heldout_fraction
        self.return_text = return_text
        self.weight_by_duration = weight_by_duration
        self.train_records: list[SourceRecord] = []
        self.val_records: list[SourceRecord] = []

    def _split(self) -> tuple[list[SourceRecord], list[SourceRecord]]:
        root = Path(self.root)
        if self.heldout is not None:
            return list(read_sources(root)), list(read_sources(self.heldout))
        if (root / "train").is_dir() and (root / "heldout").is_dir():
            return list(read_sources(root / "train")), list(read_sources(root / "heldout"))
        if root.name == "train" and (root.parent / "heldout").is_dir():
            return list(read_sources(root)), list(read_sources(root.parent / "heldout"))
        train, val = [], []
        for record in read_sources(root):
            (val if held_out(record.key, self.heldout_fraction) else train).append(record)
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        self.train_records, self.val_records = self._split()
        if not self.train_records:
            raise ValueError(
                f"{self.root}: no training audio found (a folder of audio files, a JSONL "
                "manifest, a MusicCaps CSV or FMA's tracks.csv; see musiclm.tokenizers.dataset_layouts)"
            )
        log.info(
            "%s: %d training and %d held-out sources",
            self.root,
            len(self.train_records),
            len(self.val_records),
        )

    def captions(self) -> list[str]:
        """Captions of the training sources (empty strings included), e.g. to fit a tokenizer."""
        self.setup()
        return [record.caption for record in self.train_records]

    def _kwargs(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "crop_samples": self.crop_samples,
            "seed": self.seed,
            "return_text": self.return_text,
        }

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        weights = source_seconds(self.train_records) if self.weight_by_duration else None
        data = RandomCrops(self.train_records, self.crops_per_epoch, weights, **self._kwargs())
        return self._loader(data, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if not self.val_records or self.val_crops <= 0:
            log.warning("%s: no held-out sources; validation is skipped", self.root)
            return []
        return self._loader(FixedCrops(self.val_records, self.val_crops, **self._kwargs()), False)
