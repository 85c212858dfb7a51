"""Stage training data: aligned random crops from the token shards, streamed with webdataset.

Reads a dataset directory written by ``make tokenize`` (see ``shared/DESIGN.md``)::

    ROOT/shards/shard-*.tar   ROOT/manifest.parquet   ROOT/dataset.json

Training stream, per process: shard list -> split by node (DDP rank) -> split by DataLoader
worker -> shard shuffle -> samples -> drop validation sources -> decode and check the
contract and bundle fingerprint -> sample shuffle buffer -> random aligned crop -> token
sequence of the stage (:class:`~musiclm.training.layout.TokenLayout`) -> batches. The
stream repeats and ``with_epoch`` cuts it so that every rank yields the same number of
batches per epoch (unequal counts would hang DDP).

Crops: ``crop_seconds`` is a whole number of semantic frames ``n_s``; a crop starting at
semantic frame ``s`` takes acoustic frames from ``s * acoustic_per_semantic`` (the acoustic
frame of that semantic frame), ``n_s * acoustic_per_semantic`` of them. Clips shorter than
the crop are used whole (batches are right-padded).

Validation: the sources whose stable hash falls below ``val_fraction`` (read from
``manifest.parquet``; at least one source when there are two or more) are held out; their
clips are read with a deterministic crop (the first ``crop_seconds``) by every rank.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
import webdataset as wds
from musiclm.tokenizers.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    SHARD_DIR,
    TokenSpec,
    decode_sample,
    shard_index,
    shard_name,
)
from musiclm.training.layout import TokenLayout

FINGERPRINT_KEYS = ("fingerprint", "bundle_fingerprint", "bundle")
SPEC_KEYS = ("spec", "token_spec")
VAL_HASH_BUCKETS = 1_000_000


class ShardDataError(ValueError):
    """A dataset directory or shard that the stage trainers cannot use (message says why)."""


def _first(values: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((values[k] for k in keys if k in values), None)


def read_dataset_info(root: str | Path) -> tuple[TokenSpec, str, dict[str, Any]]:
    """``(spec, bundle fingerprint, parsed dataset.json)`` of the dataset at ``root``."""
    path = Path(root) / DATASET_FILE
    if not path.is_file():
        raise ShardDataError(
            f"{path} does not exist: {root} is not a tokenized dataset. Make one with "
            "`make tokenize DATASET=... OUT=...` and pass OUT as --data.root."
        )
    info = json.loads(path.read_text())
    fingerprint, spec = _first(info, FINGERPRINT_KEYS), _first(info, SPEC_KEYS)
    if not fingerprint or spec is None:
        raise ShardDataError(f"{path} lacks the bundle fingerprint or the token spec; re-tokenize")
    return TokenSpec.from_dict(spec), str(fingerprint), info


def list_shards(root: str | Path) -> list[str]:
    """Sorted shard paths under ``root/shards``."""
    shards = sorted(str(p) for p in (Path(root) / SHARD_DIR).glob("*.tar"))
    if not shards:
        raise ShardDataError(f"no shards (*.tar) under {Path(root) / SHARD_DIR}; re-tokenize")
    return shards


def validation_keys(root: str | Path, fraction: float) -> tuple[set[str], set[str]]:
    """Sample keys and shard file names of the held-out sources (stable hash of the source)."""
    if fraction <= 0:
        return set(), set()
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise ShardDataError(
            f"{path} does not exist; it is needed for the validation split "
            "(or set --data.val_fraction 0)"
        )
    table = pq.read_table(path, columns=["key", "shard", "source"]).to_pydict()
    sources = sorted(set(table["source"]))
    score = {s: shard_index(s, VAL_HASH_BUCKETS) for s in sources}
    held = {s for s in sources if score[s] < fraction * VAL_HASH_BUCKETS}
    if not held and len(sources) > 1:
        held = {min(sources, key=score.__getitem__)}
    keys, shards = set(), set()
    for key, shard, source in zip(table["key"], table["shard"], table["source"], strict=True):
        if source in held:
            keys.add(key)
            shards.add(shard_name(shard) if isinstance(shard, int) else Path(str(shard)).name)
    return keys, shards


def crop_streams(
    sample: Mapping[str, Any], frames: int, spec: TokenSpec, random_start: bool
) -> dict[str, np.ndarray]:
    """Aligned crop of ``frames`` semantic frames: ``semantic [n]``, ``acoustic [Q, n * r]``.

    ``r = spec.acoustic_per_semantic``; the start is uniform over valid semantic frames
    (or 0 when ``random_start`` is false); clips shorter than ``frames`` are kept whole.
    """
    semantic, acoustic = sample["semantic"], sample["acoustic"]
    n = min(frames, semantic.shape[0])
    start = 0
    if random_start and semantic.shape[0] > n:
        start = int(torch.randint(0, semantic.shape[0] - n + 1, ()).item())
    r = spec.acoustic_per_semantic
    return {
        "mulan": sample["mulan"],
        "semantic": semantic[start : start + n],
        "acoustic": acoustic[:, start * r : (start + n) * r],
    }


class SampleDecoder:
    """Raw webdataset sample -> contract-checked arrays; refuses other bundle fingerprints."""

    def __init__(self, spec: TokenSpec, fingerprint: str, root: str) -> None:
        self.spec, self.fingerprint, self.root = spec, fingerprint, root

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        url = raw.get("__url__", "?")
        try:
            sample = decode_sample(raw)
            self.spec.check_sample(sample)
        except (KeyError, ValueError) as error:
            raise ShardDataError(f"sample {raw.get('__key__')} of {url}: {error}") from error
        found = _first(sample["meta"], FINGERPRINT_KEYS)
        if found != self.fingerprint:
            raise ShardDataError(
                f"shard {url} was tokenized with bundle {found}, but {self.root}/{DATASET_FILE} "
                f"says {self.fingerprint}. Remove the shard or re-tokenize it with the same bundle."
            )
        sample["shard"] = Path(url).name
        return sample


class SequenceBuilder:
    """Decoded sample -> ``{"tokens", "levels", "key", "shard"}`` of one stage sequence."""

    def __init__(self, layout: TokenLayout, frames: int, random_start: bool) -> None:
        self.layout, self.frames, self.random_start = layout, frames, random_start

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        crop = crop_streams(sample, self.frames, self.layout.spec, self.random_start)
        streams = {k: torch.from_numpy(v.astype(np.int64))[None] for k, v in crop.items()}
        tokens, levels = self.layout.build(**streams)
        return {
            "tokens": tokens[0],
            "levels": levels[0],
            "key": sample["key"],
            "shard": sample["shard"],
        }


def collate_sequences(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """List of sequences -> batch ``{"tokens" [B, T], "levels" [B, T], "keys", "shards"}``."""
    tokens, levels = TokenLayout.collate([(s["tokens"], s["levels"]) for s in samples])
    return {
        "tokens": tokens,
        "levels": levels,
        "keys": [s["key"] for s in samples],
        "shards": [s["shard"] for s in samples],
    }


def _keep_all(src: Iterator[Any]) -> Iterator[Any]:
    """Node splitter for validation: every rank reads every validation shard."""
    yield from src


class SeededShuffle:
    """Sample shuffle buffer seeded from torch's RNG when iteration starts.

    Reproducible under ``seed_everything`` (DataLoader workers get distinct torch seeds),
    and a new order every epoch; webdataset's own ``shuffle`` seeds from the clock.
    """

    def __init__(self, bufsize: int) -> None:
        self.bufsize = bufsize

    def __call__(self, src: Iterator[Any]) -> Iterator[Any]:
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        return wds.filters.shuffle(self.bufsize, min(self.bufsize, 100), rng=rng)(src)


class _KeySelect:
    def __init__(self, keys: set[str], keep: bool) -> None:
        self.keys, self.keep = keys, keep

    def __call__(self, raw: dict[str, Any]) -> bool:
        return (raw["__key__"] in self.keys) == self.keep


class StageData(pl.LightningDataModule):
    """Webdataset stream of one stage's training sequences (subclasses fix ``stage``).

    Args:
        root: dataset directory (``make tokenize`` OUT).
        crop_seconds: crop length (paper: 30 semantic, 10 coarse, 3 fine).
        batch_size: sequences per batch and process.
        num_workers: DataLoader workers per process (each reads its own shards).
        shuffle_buffer: samples in the shuffle buffer of each worker.
        shard_shuffle: shard shuffle buffer (0 = read shards in order).
        epoch_samples: training samples per epoch summed over all processes.
        val_fraction: share of sources held out for validation (0 = none).
        val_batch_size: batch size for validation (default: batch_size).
        seed: seed of the shard shuffle.
    """

    stage = ""

    def __init__(
        self,
        root: str,
        crop_seconds: float = 10.0,
        batch_size: int = 8,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        shard_shuffle: int = 100,
        epoch_samples: int = 10_000,
        val_fraction: float = 0.05,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = str(root)
        self.spec, self.fingerprint, self.dataset_info = read_dataset_info(root)
        self.layout = TokenLayout(self.spec, self.stage)
        self.crop_frames = max(1, round(crop_seconds * self.spec.semantic_rate))
        self.shards = list_shards(root)
        self.val_keys, val_shard_names = validation_keys(root, val_fraction)
        self.val_shards = [s for s in self.shards if Path(s).name in val_shard_names]

    # ----- sizes ------------------------------------------------------------------------
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def check_readers(self) -> None:
        """Raise if there are fewer shards than data readers (processes x workers)."""
        readers = self.world_size() * max(1, self.hparams.num_workers)
        if len(self.shards) < readers:
            raise ShardDataError(
                f"{self.root} has {len(self.shards)} shards but training uses {readers} data "
                f"readers ({self.world_size()} processes x {max(1, self.hparams.num_workers)} "
                "workers); webdataset needs at least one shard per reader or DDP hangs. Lower "
                "--data.num_workers, use fewer devices, or re-tokenize into more shards."
            )

    def batches_per_worker(self) -> int:
        """Batches each DataLoader worker yields per epoch (same on every rank)."""
        hp = self.hparams
        readers = self.world_size() * max(1, hp.num_workers)
        return max(1, math.ceil(hp.epoch_samples / (hp.batch_size * readers)))

    # ----- datasets -----------------------------------------------------------------------
    def train_dataset(self) -> wds.DataPipeline:
        hp = self.hparams
        dataset = (
            wds.WebDataset(
                self.shards,
                shardshuffle=hp.shard_shuffle if hp.shard_shuffle > 0 else False,
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                seed=hp.seed,
                empty_check=False,
            )
            .select(_KeySelect(self.val_keys, keep=False))
            .map(SampleDecoder(self.spec, self.fingerprint, self.root))
            .compose(SeededShuffle(hp.shuffle_buffer))
            .map(SequenceBuilder(self.layout, self.crop_frames, random_start=True))
            .batched(hp.batch_size, collation_fn=collate_sequences, partial=False)
        )
        return dataset.with_epoch(nbatches=self.batches_per_worker())

    def val_dataset(self) -> wds.DataPipeline:
        hp = self.hparams
        return (
            wds.WebDataset(
                self.val_shards,
                shardshuffle=False,
                nodesplitter=_keep_all,
                workersplitter=wds.split_by_worker,
                empty_check=False,
            )
            .select(_KeySelect(self.val_keys, keep=True))
            .map(SampleDecoder(self.spec, self.fingerprint, self.root))
            .map(SequenceBuilder(self.layout, self.crop_frames, random_start=False))
            .batched(hp.val_batch_size or hp.batch_size, collation_fn=collate_sequences)
        )

    def train_dataloader(self) -> wds.WebLoader:
        self.check_readers()
        workers = self.hparams.num_workers
        return wds.WebLoader(
            self.train_dataset(),
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> wds.WebLoader | list:
        if not self.val_shards:
            return []
        workers = min(self.hparams.num_workers, len(self.val_shards))
        return wds.WebLoader(self.val_dataset(), batch_size=None, num_workers=workers)


class SemanticData(StageData):
    """Semantic stage data: MuLan tokens -> semantic ids (paper crop 30 s)."""

    stage = "semantic"


class CoarseData(StageData):
    """Coarse stage data: MuLan + semantic -> RVQ levels 1..Qc (paper crop 10 s)."""

    stage = "coarse"


class FineData(StageData):
    """Fine stage data: RVQ levels 1..Qc -> Qc+1..Q (paper crop 3 s)."""

    stage = "fine"
