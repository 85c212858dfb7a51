"""The decode step that the fit and tokenize pipelines share: sources -> clips, or a failure.

:class:`DecodeClips` decodes, resamples and cuts one
:class:`~musiclm.tokenizers.source_records.SourceRecord` (see :mod:`~musiclm.pipelines.clips`);
applied ``with_exception_handling``, a source that cannot be read becomes a dead letter
that :func:`decode_failure` turns into one failure row (step ``decode``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from musiclm.pipelines.clips import ClipConfig, iter_clips
from musiclm.pipelines.model_handlers import METRICS_NAMESPACE
from musiclm.pipelines.runner import error_text
from musiclm.pipelines.shards import failure_row
from musiclm.tokenizers.audio import DecodeStats
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.source_records import SourceRecord

FRAMES_TAG = "frames"


class DecodeClips(beam.DoFn):
    """SourceRecord -> its clips (decoded, resampled, cut; see :mod:`~musiclm.pipelines.clips`).

    With ``report_frames``, each decoded source also gives ``(key, header_frames,
    decoded_frames)`` on the ``frames`` output (native frames, once its last clip is out).
    """

    def __init__(self, spec: TokenSpec, config: ClipConfig, report_frames: bool = False) -> None:
        self.spec, self.config, self.report_frames = spec, config, report_frames

    def process(self, record: SourceRecord) -> Iterator[Any]:
        stats = DecodeStats()
        yield from iter_clips(record, self.spec, self.config, stats)
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "decoded_sources").inc()
        if self.report_frames:
            frames = (record.key, stats.header_frames, stats.decoded_frames)
            yield beam.pvalue.TaggedOutput(FRAMES_TAG, frames)


def decode_failure(item: tuple[SourceRecord, tuple[Any, str, list[str]]]) -> dict[str, str]:
    """The failure row (source, path, step ``decode``, error) of a source's dead letter."""
    record, dead = item
    return failure_row(record.key, record.path, "decode", error_text(record.path, dead))
