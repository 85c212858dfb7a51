"""Beam pipeline options shared by the fit and tokenize pipelines, and their dead letters.

Default runner: the DirectRunner in ``multi_processing`` mode with
``direct_num_workers`` worker processes. Any Beam option passes through unchanged
(``--runner DataflowRunner --project ... --region ... --temp_location gs://...``,
``--runner FlinkRunner --flink_master host:8081 --environment_type LOOPBACK``, ...);
:mod:`musiclm.pipelines.portable` runs them on ``PortableRunner`` against Beam's own job
service and an SDK worker pool on this machine (``make tokenize RUNNER=portable``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from musiclm.pipelines.clips import Clip
from musiclm.pipelines.shards import failure_row

LOCAL_RUNNERS = {"directrunner", "direct", "prismrunner", "prism", "swappingrunner"}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def pipeline_options(beam_args: Sequence[str], workers: int | None = None) -> PipelineOptions:
    """Pipeline options from ``beam_args``; unset runner -> multi-processing DirectRunner."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    if is_local(options) and not any(a.startswith("--direct_running_mode") for a in beam_args):
        direct.direct_running_mode = "multi_processing"
    if not any(a.startswith("--direct_num_workers") for a in beam_args):
        direct.direct_num_workers = workers or default_workers()
    return options


def is_local(options: PipelineOptions) -> bool:
    """Whether the pipeline runs on this machine (progress files work, paths are shared)."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.lower() in LOCAL_RUNNERS


def error_text(path: str, dead_letter: tuple[Any, str, list[str]]) -> str:
    """A one-line, readable error naming ``path`` from Beam's ``(type, repr, traceback)``."""
    exc_type, _, trace = dead_letter
    last = trace[-1].strip() if trace else ""
    message = last.split(": ", 1)[1] if ": " in last else last or exc_type.__name__
    return _named(path, f"{exc_type.__name__}: {message}")


def exception_text(path: str, err: BaseException) -> str:
    """A one-line, readable error naming ``path`` from an exception."""
    lines = str(err).strip().splitlines()
    return _named(path, f"{type(err).__name__}: {lines[0] if lines else type(err).__name__}")


def _named(path: str, text: str) -> str:
    return text if path in text else f"{path}: {text}"


def clip_failure(clip: Clip, step: str) -> dict[str, str]:
    """The failure row of a clip that a model step could not tokenize (``clip.error``)."""
    return failure_row(clip.source, clip.path, step, clip.error)


def inference_failures(
    item: tuple[Sequence[Clip], tuple[Any, str, list[str]]], step: str
) -> Iterator[dict[str, str]]:
    """Failure rows (source, path, step, error) for each clip of a batch RunInference dropped."""
    batch, dead = item
    for clip in batch:
        yield failure_row(clip.source, clip.path, step, error_text(clip.path, dead))
