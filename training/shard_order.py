"""Which clips each stage-training data reader reads, epoch after epoch and across resumes.

Held-out shards (:func:`heldout_shards`): whole shards, chosen by a stable hash of their
name, so a validation pass reads the held-out share of the data and no more.

A *reader* is one DataLoader worker of one DDP rank (``readers = world size x workers``).
Each reader owns a fixed set of training shards (:func:`assign_shards`, balanced by clip
count), so readers never read the same shard. A reader's stream of clips is endless and
deterministic in its shard order: pass 0 reads the reader's shards in an order drawn from
``(seed, reader, 0)``, pass 1 in an order drawn from ``(seed, reader, 1)``, and so on; every
pass reads every clip of those shards once.

Epochs are consecutive slices of that one stream (:class:`EpochSlices`), so ``k`` epochs of
``E`` clips read ``min(k E, N)`` distinct clips, up to the edges of the sample shuffle
buffer. (webdataset's ``WebDataset(shardshuffle=n, seed=s).with_epoch(...)`` instead makes
a fresh ``random.Random(s)`` at every ``iter()``, so every epoch replayed the same shards
from their first clip.) A stream can start at any position ``p`` (clips read so far): the
manifest's clip counts map ``p`` to a pass, a shard and a clip offset in it
(:meth:`ReaderStream.locate`), so a resumed run goes on where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from musiclm.tokenizers.contract import shard_index
from musiclm.tokenizers.source_records import held_out_share

HASH_BUCKETS = 1_000_000


def heldout_shards(names: list[str], counts: list[int], fraction: float) -> set[str]:
    """The shard file names held out for validation: ``round(fraction x n)`` of the ``n``
    non-empty shards (at least 1 and at most ``n - 1`` when ``n >= 2``, all of them at
    ``fraction >= 1``), those of lowest stable hash of their name."""
    nonempty = sorted(name for name, count in zip(names, counts, strict=True) if count > 0)
    return set(held_out_share(nonempty, fraction, lambda n: shard_index(n, HASH_BUCKETS)))


def assign_shards(counts: Sequence[int], readers: int) -> list[list[int]]:
    """Shard indices of each of ``readers`` readers, balanced by clip count.

    Largest shards first, each to the reader holding the fewest clips so far (ties: the
    lower reader index); deterministic. ``counts[i]`` is the number of clips of shard ``i``.
    """
    if readers < 1:
        raise ValueError(f"readers must be >= 1, got {readers}")
    totals = [(0, r) for r in range(readers)]
    assigned: list[list[int]] = [[] for _ in range(readers)]
    for shard in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        total, reader = heapq.heappop(totals)
        assigned[reader].append(shard)
        heapq.heappush(totals, (total + counts[shard], reader))
    return [sorted(shards) for shards in assigned]


@dataclasses.dataclass(frozen=True)
class ReaderStream:
    """The endless clip stream of one reader over its shards ``urls`` (``counts`` clips each).

    ``shuffle`` false reads the shards in the given order every pass.
    """

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    seed: int
    reader: int
    shuffle: bool = True

    def order(self, pass_index: int) -> np.ndarray:
        """Shard indices (into ``urls``) in the order pass ``pass_index`` reads them."""
        if not self.shuffle:
            return np.arange(len(self.urls))
        rng = np.random.default_rng((self.seed, self.reader, pass_index))
        return rng.permutation(len(self.urls))

    def locate(self, position: int) -> tuple[int, int, int]:
        """``(pass, slot in that pass's order, clips to skip in that shard)`` of ``position``."""
        per_pass = sum(self.counts)
        if per_pass < 1:
            raise ValueError(f"reader {self.reader}'s shards {list(self.urls)} hold no clips")
        pass_index, rest = divmod(position, per_pass)
        for slot, shard in enumerate(self.order(pass_index)):
            if rest < self.counts[shard]:
                return pass_index, slot, rest
            rest -= self.counts[shard]
        raise AssertionError("unreachable: rest < per_pass")

    def shard_sequence(self, position: int) -> Iterator[tuple[str, int]]:
        """Endless ``(shard url, clips to skip)`` from stream position ``position`` on."""
        pass_index, slot, skip = self.locate(position)
        while True:
            for shard in self.order(pass_index)[slot:]:
                yield self.urls[shard], skip
                skip = 0
            pass_index, slot = pass_index + 1, 0

    def samples(self, position: int) -> Iterator[dict[str, Any]]:
        """Endless raw webdataset samples (``__key__``, ``__url__``, files) from ``position``."""
        empty = 0
        for url, skip in self.shard_sequence(position):
            read = 0
            for sample in islice(wds.tarfile_samples([{"url": url}]), skip, None):
                read += 1
                yield sample
            empty = 0 if read else empty + 1
            if empty > len(self.urls):
                raise ValueError(
                    f"reader {self.reader} read no sample from any of its shards {list(self.urls)}, "
                    f"although manifest.parquet counts {sum(self.counts)} clips in them; the "
                    "manifest and the shards disagree: re-tokenize"
                )


def batches_read(batches_done: int, worker: int, workers: int) -> int:
    """Batches DataLoader worker ``worker`` of ``workers`` produced once a rank consumed
    ``batches_done`` (the DataLoader takes batches from its workers in turn)."""
    return batches_done // workers + int(worker < batches_done % workers)


class EpochSlices(torch.utils.data.IterableDataset):
    """Each ``iter()`` yields the next ``length`` items of one endless stream.

    The stream is opened on first use, in the process that iterates (a DataLoader worker,
    or the main process without workers), by ``open_stream(rank, world_size, worker,
    workers)``; it lives as long as this object, so with persistent workers epoch ``e + 1``
    goes on where epoch ``e`` stopped. ``open_stream`` must be picklable.
    """

    def __init__(
        self, open_stream: Callable[[int, int, int, int], Iterator[Any]], length: int
    ) -> None:
        super().__init__()
        self.open_stream, self.length = open_stream, length
        self._stream: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._stream is None:
            self._stream = self.open_stream(*wds.utils.pytorch_worker_info())
        return islice(self._stream, self.length)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}  # a worker opens its own stream
