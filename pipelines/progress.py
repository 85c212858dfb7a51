"""A progress line for local runs: clips done, audio hours, clips per second.

Workers of the local runner (DirectRunner, in-memory or multi-processing) append one
line per tokenized clip to a file of their own in a shared temp directory
(:class:`ReportProgress`); the launcher sums those files every few seconds and prints
``clips 120 | audio 1.00 h | 3.2 clips/s`` to stderr (:class:`ProgressPrinter`).
Remote runners have their own monitoring (Dataflow's job page, Flink's web UI).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import apache_beam as beam
from musiclm.pipelines.clips import Clip


class ReportProgress(beam.DoFn):
    """Pass clips through unchanged, appending ``seconds`` per clip to ``directory/<pid>``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def process(self, clip: Clip) -> Iterator[Clip]:
        with open(os.path.join(self.directory, f"worker-{os.getpid()}"), "a") as log:
            log.write(f"{clip.seconds:.3f}\n")
        yield clip


def read_progress(directory: str | Path) -> tuple[int, float]:
    """``(clips, audio seconds)`` reported so far under ``directory``."""
    clips, seconds = 0, 0.0
    for path in Path(directory).glob("worker-*"):
        values = path.read_text().split()
        clips += len(values)
        seconds += sum(float(v) for v in values)
    return clips, seconds


class ProgressPrinter:
    """Context manager printing the progress of ``directory`` every ``interval`` seconds."""

    def __init__(
        self, directory: str | Path, interval: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.directory, self.interval = Path(directory), interval
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def line(self) -> str:
        clips, seconds = read_progress(self.directory)
        rate = clips / max(time.monotonic() - self._start, 1e-9)
        return f"clips {clips} | audio {seconds / 3600:.2f} h | {rate:.1f} clips/s"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> ProgressPrinter:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        print(self.line(), file=self.stream, flush=True)
