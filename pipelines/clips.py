"""Cutting decoded audio into clips: the rule, and a streaming cutter for long files.

A clip is a run of whole semantic frames (``TokenSpec.samples_per_semantic`` samples
each), so its semantic, acoustic and MuLan tokens line up exactly. The rule, for a
segment of ``N`` samples at the spec's rate, clip length ``L`` and hop ``H`` (both
whole semantic frames, from :class:`ClipConfig`):

- whole clips start at ``0, H, 2H, ...`` while ``start + L <= N``;
- the **tail** (audio from the next start ``s`` to ``N``) becomes one shorter clip of
  ``(N - s)`` samples rounded down to whole semantic frames when that is at least
  ``min_seconds`` long and reaches past the end of the last whole clip; otherwise it is
  dropped. A source shorter than one clip is therefore one shorter clip;
- a source shorter than ``min_seconds`` gives no clip and is reported as a failure.

:func:`clip_bounds` states the rule on a known length; :func:`iter_clips` applies it
while the file is decoded block by block, holding at most one clip plus one block.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from musiclm.tokenizers.audio import (
    DEFAULT_BLOCK_SECONDS,
    DEFAULT_MAX_MISSING_SECONDS,
    AudioError,
    DecodeStats,
    iter_blocks,
)
from musiclm.tokenizers.contract import TokenSpec


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Clip length, hop and the shortest clip kept, in seconds (rounded to semantic frames).

    ``max_missing_seconds``: how far decoding may fall short of the header's length before
    the file counts as truncated (see :mod:`musiclm.tokenizers.audio`).
    """

    seconds: float = 30.0
    hop_seconds: float | None = None  # None: equal to ``seconds`` (no overlap)
    min_seconds: float = 3.0
    block_seconds: float = DEFAULT_BLOCK_SECONDS  # decoding block for long files
    max_missing_seconds: float = DEFAULT_MAX_MISSING_SECONDS

    def samples(self, spec: TokenSpec) -> tuple[int, int, int]:
        """``(clip, hop, minimum)`` lengths in samples at ``spec.sample_rate``."""
        clip = spec.clip_samples(self.seconds)
        hop = spec.clip_samples(self.seconds if self.hop_seconds is None else self.hop_seconds)
        minimum = max(spec.samples_per_semantic, spec.clip_samples(self.min_seconds))
        if clip <= 0 or hop <= 0:
            raise ValueError(
                f"clip seconds {self.seconds} and hop {self.hop_seconds} must be at least "
                f"one semantic frame ({1 / spec.semantic_rate} s)"
            )
        if minimum > clip:
            raise ValueError(f"min_seconds {self.min_seconds} exceeds clip seconds {self.seconds}")
        return clip, hop, minimum


@dataclasses.dataclass(frozen=True)
class Clip:
    """One clip of one source on its way through the pipeline.

    ``wav`` is mono float32 [samples] at the spec's rate; ``tokens`` collects the model
    outputs (``semantic`` [T_s], ``acoustic`` [Q, T_a], ``mulan`` [L], ``mulan_emb`` [D],
    or ``features`` [T, D] in the fit pipeline) as they are added. ``error`` is set (one
    line naming the file) when a model step could not tokenize this clip.
    """

    key: str
    source: str
    path: str
    index: int
    offset: float  # seconds from the start of the file
    seconds: float
    caption: str
    wav: np.ndarray
    rms_db: float = 0.0  # loudness of the clip (dBFS; -200 for digital silence)
    tokens: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    error: str = ""

    def with_tokens(self, **tokens: np.ndarray) -> Clip:
        return dataclasses.replace(self, tokens={**self.tokens, **tokens})

    def failed(self, error: str) -> Clip:
        return dataclasses.replace(self, error=error)

    def without_audio(self) -> Clip:
        return dataclasses.replace(self, wav=np.zeros(0, np.float32))


def _tail(start: int, last_end: int, n: int, frame: int, minimum: int) -> int:
    """Length of the tail clip starting at ``start`` (0: dropped)."""
    length = (n - start) // frame * frame
    return length if length >= minimum and start + length > last_end else 0


def clip_bounds(num_samples: int, spec: TokenSpec, config: ClipConfig) -> list[tuple[int, int]]:
    """``[(start, length), ...]`` in samples of the clips of a segment of ``num_samples``."""
    clip, hop, minimum = config.samples(spec)
    bounds = [(s, clip) for s in range(0, num_samples - clip + 1, hop)]
    start = bounds[-1][0] + hop if bounds else 0
    last_end = bounds[-1][0] + clip if bounds else 0
    tail = _tail(start, last_end, num_samples, spec.samples_per_semantic, minimum)
    return [*bounds, (start, tail)] if tail else bounds


def rms_db(wav: np.ndarray) -> float:
    """Root-mean-square level of ``wav`` [n] in dBFS (-200 for digital silence)."""
    power = float(np.mean(np.square(wav, dtype=np.float64))) if wav.size else 0.0
    return round(10 * np.log10(power), 2) if power > 1e-20 else -200.0


def sample_key(source_key: str, index: int) -> str:
    """Webdataset key of clip ``index`` of a source (source keys are unique and dot-free)."""
    return f"{source_key}-{index:05d}"


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file path for ``path``; remote paths (gs://, s3://) are copied via FileSystems."""
    if "://" not in path or path.startswith("file://"):
        yield path.removeprefix("file://")
        return
    if not FileSystems.exists(path):
        raise AudioError(path, "file not found")
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as local:
        with FileSystems.open(path) as remote:
            shutil.copyfileobj(remote, local, 1 << 22)
        local.flush()
        yield local.name


def iter_clips(
    record: Any, spec: TokenSpec, config: ClipConfig, stats: DecodeStats | None = None
) -> Iterator[Clip]:
    """Decode ``record`` (a :class:`~musiclm.tokenizers.source_records.SourceRecord`) and yield its clips.

    Equal to cutting ``load_audio(path, spec.sample_rate, start, end)`` by
    :func:`clip_bounds`, but streamed: the file is decoded in blocks of
    ``config.block_seconds``. Raises :class:`AudioError` (naming the file) for unreadable
    audio and for a source too short to give one clip. ``stats``, if given, receives the
    header's and the decoded frame counts (native rate) once decoding is done.
    """
    clip, hop, minimum = config.samples(spec)
    rate, frame = spec.sample_rate, spec.samples_per_semantic
    begin = float(record.start or 0.0)
    path = str(record.path)
    pending = np.zeros(0, np.float32)  # decoded audio from sample `base` on
    base = total = index = next_start = last_end = 0

    def make(start: int, length: int) -> Clip:
        wav = pending[start - base : start - base + length].copy()
        return Clip(
            key=sample_key(record.key, index),
            source=record.key,
            path=path,
            index=index,
            offset=begin + start / rate,
            seconds=length / rate,
            caption=record.caption or "",
            wav=wav,
            rms_db=rms_db(wav),
        )

    if "://" not in path and not os.path.exists(path):
        raise AudioError(path, "file not found; check the path in the dataset's source list")
    with local_copy(path) as local:
        blocks = iter_blocks(
            local, rate, begin, record.end, config.block_seconds, config.max_missing_seconds, stats
        )
        for block in blocks:
            pending = np.concatenate([pending, block.numpy()])
            total += block.numel()
            while next_start + clip <= total:
                yield make(next_start, clip)
                index += 1
                last_end, next_start = next_start + clip, next_start + hop
            drop = min(next_start, total) - base
            pending, base = pending[drop:], base + drop
    tail = _tail(next_start, last_end, total, frame, minimum)
    if tail:
        yield make(next_start, tail)
    elif not index:
        raise AudioError(
            path,
            f"only {total / rate:.2f} s of audio, shorter than the shortest clip "
            f"({config.min_seconds} s); lower --min_seconds to keep it",
        )
