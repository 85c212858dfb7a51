"""Stage training data: aligned random crops from the token shards, streamed with webdataset.

Reads a dataset directory written by ``make tokenize`` (see ``shared/DESIGN.md``)::

    ROOT/shards/shard-*.tar   ROOT/manifest.parquet   ROOT/dataset.json

Validation: whole shards are held out, ``round(val_fraction x shards)`` of the non-empty
ones (at least one when there are two or more; all of them at ``val_fraction >= 1``),
chosen by a stable hash of the shard name. Shard membership is a stable hash of the
source, so held-out shards hold whole sources. Every rank reads the held-out shards (and
no other) with a deterministic crop (the first ``crop_seconds``): the I/O of a
validation pass is the held-out share, not every shard that holds a held-out clip.

Training stream, per data reader (DDP rank x DataLoader worker): the reader's own
training shards (:mod:`~musiclm.training.shard_order`: balanced by the manifest's clip
counts, a new shard order every pass, resumable at any clip) -> decode and check the
contract and bundle fingerprint -> sample shuffle buffer -> random aligned crop -> token
sequence of the stage (:class:`~musiclm.training.layout.TokenLayout`) -> batches. Each
epoch is the next ``batches_per_worker`` batches of that endless stream, so every rank
yields the same number of batches per epoch (unequal counts would hang DDP), epochs go on
through the data instead of replaying its start, and a run resumed from a checkpoint
starts each reader after the batches it had already produced.

Crops: ``crop_seconds`` is a whole number of semantic frames ``n_s``; a crop starting at
semantic frame ``s`` takes acoustic frames from ``s * acoustic_per_semantic`` (the acoustic
frame of that semantic frame), ``n_s * acoustic_per_semantic`` of them. Clips shorter than
the crop are used whole (batches are right-padded).
"""

from __future__ import annotations

import functools
import json
import math
import random
import warnings
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
    shard_name,
)
from musiclm.training.layout import TokenLayout
from musiclm.training.shard_order import (
    EpochSlices,
    ReaderStream,
    assign_shards,
    batches_read,
    heldout_shards,
)
from musiclm.training.stage_registry import STREAMS, get_stage, stage_class

FINGERPRINT_KEYS = ("fingerprint", "bundle_fingerprint", "bundle")
SPEC_KEYS = ("spec", "token_spec")


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


def _manifest(root: str | Path) -> Path:
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise ShardDataError(
            f"{path} does not exist; the stage trainers need it (clips per shard, held-out "
            "keys). It is written by `make tokenize`: re-tokenize into this directory."
        )
    return path


def _shard_file(value: Any) -> str:
    """A manifest ``shard`` value (index or path) as a shard file name."""
    return shard_name(int(value)) if isinstance(value, int | np.integer) else Path(str(value)).name


def manifest_shards(root: str | Path) -> dict[str, tuple[Any, int]]:
    """``{shard file name: (its value in the manifest's shard column, clips)}``."""
    column = pq.read_table(_manifest(root), columns=["shard"]).column("shard").to_numpy()
    values, counts = np.unique(column, return_counts=True)
    return {_shard_file(v): (v.item(), int(c)) for v, c in zip(values, counts, strict=True)}


def shard_keys(root: str | Path, values: list[Any]) -> set[str]:
    """Sample keys the manifest lists in the shards whose shard column value is in ``values``
    (read with a filter: memory grows with these shards, not with the dataset)."""
    if not values:
        return set()
    table = pq.read_table(_manifest(root), columns=["key"], filters=[("shard", "in", values)])
    return set(table.column("key").to_pylist())


def crop_streams(
    sample: Mapping[str, Any], frames: int, spec: TokenSpec, random_start: bool
) -> dict[str, np.ndarray]:
    """Aligned crop of ``frames`` semantic frames of every token stream of the registry
    that ``sample`` holds: ``mulan [L]`` whole, ``semantic [n]``, ``acoustic [Q, n * r]``.

    A stream at ``r`` frames per semantic frame (``acoustic_per_semantic`` for acoustic) is
    cut at ``[start * r, (start + n) * r)``; one without a time axis is kept whole. The
    start is uniform over valid semantic frames (or 0 when ``random_start`` is false);
    clips shorter than ``frames`` are kept whole.
    """
    length = sample["semantic"].shape[0]  # semantic frames: the clock of every stream
    n = min(frames, length)
    start = 0
    if random_start and length > n:
        start = int(torch.randint(0, length - n + 1, ()).item())
    crop = {}
    for name, stream in STREAMS.items():
        if name in sample:
            r = stream.frames_per_semantic(spec)
            crop[name] = sample[name] if r == 0 else sample[name][..., start * r : (start + n) * r]
    return crop


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


class TrainReader:
    """Opens one data reader's endless stream of training batches (runs in its worker).

    ``shards``/``counts``: every training shard and its clips; ``batches_done``: batches
    the rank had consumed when the loader was made (a resumed run), so each worker starts
    after the clips it had already read. Picklable, for DataLoader workers.
    """

    def __init__(
        self,
        shards: list[str],
        counts: list[int],
        hparams: Mapping[str, Any],
        decoder: SampleDecoder,
        builder: SequenceBuilder,
        batches_done: int,
    ) -> None:
        self.shards, self.counts, self.decoder, self.builder = shards, counts, decoder, builder
        self.seed, self.shuffle = int(hparams["seed"]), hparams["shard_shuffle"] > 0
        self.batch_size, self.shuffle_buffer = hparams["batch_size"], hparams["shuffle_buffer"]
        self.batches_done = batches_done

    def __call__(self, rank: int, world: int, worker: int, workers: int) -> Iterator[Any]:
        reader, readers = rank * workers + worker, world * workers
        mine = assign_shards(self.counts, readers)[reader]
        stream = ReaderStream(
            tuple(self.shards[i] for i in mine),
            tuple(self.counts[i] for i in mine),
            self.seed,
            reader,
            self.shuffle,
        )
        start = batches_read(self.batches_done, worker, workers) * self.batch_size
        pipeline = wds.DataPipeline(
            functools.partial(stream.samples, start),
            wds.map(self.decoder),
            SeededShuffle(self.shuffle_buffer),
            wds.map(self.builder),
            wds.batched(self.batch_size, collation_fn=collate_sequences, partial=False),
        )
        return iter(pipeline)


class StageData(pl.LightningDataModule):
    """Webdataset stream of one stage's training sequences (the classes of
    :func:`stage_data` fix ``stage``, a name in the stage registry).

    Args:
        root: dataset directory (``make tokenize`` OUT).
        crop_seconds: crop length (default: the stage's paper crop, 30 semantic, 10
            coarse, 3 fine).
        batch_size: sequences per batch and process.
        num_workers: DataLoader workers per process (each reads its own shards).
        shuffle_buffer: samples in the shuffle buffer of each worker.
        shard_shuffle: > 0 reads each reader's shards in a new seeded order every pass
            (any positive value: the whole list is permuted); 0 reads them in name order.
        epoch_samples: training samples per epoch summed over all processes.
        val_fraction: share of the (non-empty) shards held out for validation (0 = none).
        val_batch_size: batch size for validation (default: batch_size).
        seed: seed of the shard orders.
    """

    stage = ""

    def __init__(
        self,
        root: str,
        crop_seconds: float | None = None,
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
        crop = get_stage(self.stage).paper_crop_seconds if crop_seconds is None else crop_seconds
        self.crop_frames = max(1, round(crop * self.spec.semantic_rate))
        self.shards = list_shards(root)
        listed = manifest_shards(root)
        counts = [listed.get(Path(s).name, (None, 0))[1] for s in self.shards]
        held = heldout_shards([Path(s).name for s in self.shards], counts, val_fraction)
        if val_fraction > 0 and not held:
            warnings.warn(
                f"{root} has one shard with clips, so no shard is held out for validation; "
                "re-tokenize into more shards (--num_shards) for a validation split",
                stacklevel=2,
            )
        self.val_shards = [s for s in self.shards if Path(s).name in held]
        self.val_keys = shard_keys(root, [listed[name][0] for name in sorted(held)])
        kept = [i for i, s in enumerate(self.shards) if Path(s).name not in held]
        self.train_shards = [self.shards[i] for i in kept]
        self.train_counts = [counts[i] for i in kept]

    # ----- sizes ------------------------------------------------------------------------
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def check_readers(self) -> None:
        """Raise unless every data reader (processes x workers) gets a non-empty shard."""
        readers = self.world_size() * max(1, self.hparams.num_workers)
        usable = sum(count > 0 for count in self.train_counts)
        if usable < readers:
            raise ShardDataError(
                f"{self.root} has {len(self.shards)} shards but training uses {readers} data "
                f"readers ({self.world_size()} processes x {max(1, self.hparams.num_workers)} "
                f"workers) and needs a shard with clips for each: {usable} are left after "
                f"holding out {len(self.val_shards)} for validation (otherwise DDP hangs). "
                "Lower --data.num_workers or --data.val_fraction, use fewer devices, or "
                "re-tokenize into more shards."
            )

    def batches_per_worker(self) -> int:
        """Batches each DataLoader worker yields per epoch (same on every rank)."""
        hp = self.hparams
        readers = self.world_size() * max(1, hp.num_workers)
        return max(1, math.ceil(hp.epoch_samples / (hp.batch_size * readers)))

    def batches_done(self) -> int:
        """Training batches this rank has consumed in the trainer's run (restored on resume)."""
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.total_batch_idx + 1

    # ----- datasets -----------------------------------------------------------------------
    def train_dataset(self, batches_done: int = 0) -> EpochSlices:
        """Each ``iter()``: this reader's next ``batches_per_worker()`` training batches."""
        reader = TrainReader(
            self.train_shards,
            self.train_counts,
            self.hparams,
            SampleDecoder(self.spec, self.fingerprint, self.root),
            SequenceBuilder(self.layout, self.crop_frames, random_start=True),
            batches_done,
        )
        return EpochSlices(reader, self.batches_per_worker())

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
            .map(SampleDecoder(self.spec, self.fingerprint, self.root))
            .map(SequenceBuilder(self.layout, self.crop_frames, random_start=False))
            .batched(hp.val_batch_size or hp.batch_size, collation_fn=collate_sequences)
        )

    def train_dataloader(self) -> wds.WebLoader:
        self.check_readers()
        workers = self.hparams.num_workers
        return wds.WebLoader(
            self.train_dataset(self.batches_done()),
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


def stage_data(stage: str) -> type[StageData]:
    """The data module class of the registry's stage ``stage`` (what its CLI entry trains on)."""
    return stage_class(StageData, stage, "Data")


# the paper's stages by name (kept importable; every other stage is reached by stage_data)
SemanticData, CoarseData, FineData = (stage_data(s) for s in ("semantic", "coarse", "fine"))
