"""Fit-pipeline memory benchmark: peak memory and accumulator bytes against dataset size.

The fit pipeline samples feature rows with :class:`musiclm.pipelines.fit.ReservoirCombineFn`
under ``beam.CombineGlobally``: every bundle fills a partial accumulator (a
:class:`~musiclm.tokenizers.kmeans.FeatureReservoir`), which Beam pickles on its way to the
merge. This runs that step on synthetic semantic features of 30 s clips (750 frames x 1024,
the w2v-BERT width) for datasets of ``--clips`` sizes, each in a fresh process on the local
DirectRunner in ``multi_processing`` mode (as ``musiclm-fit`` runs locally) with
``--bundles`` worker processes: ``--bundles`` elements are spread by a ``Reshuffle`` and
each streams its share of the clips' features into the combine, one bundle per worker.
(The ``multi_threading`` mode's in-process buffering grew to 20 GB and was killed here.)
Per size it reports:

- ``peak_rss_mb``: the peak resident memory of the largest process, the pipeline's or a
  worker's (``ru_maxrss``); its floor is the imports (Beam, torch, faiss);
- ``accumulators``: the number of partial accumulators Beam shipped and their pickled
  bytes (mean, max, total), recorded in ``CombineFn.compact`` as a Beam metric;
- ``sample_rows``: the rows of the sample (at most ``--capacity`` rows).

The goal: both flat in dataset size, and accumulator bytes proportional to the rows a
bundle held (at most ``capacity x 1024 x 4`` bytes), not ``capacity x 1024 x 4`` always.

Usage: ``python benchmarks/fit_memory.py [--clips 4 32 128 512 2048] [--capacity 10000]
[--bundles 4]``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import resource
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from musiclm.pipelines.fit import ReservoirCombineFn
from musiclm.pipelines.runner import pipeline_options

FRAMES, DIM = 750, 1024  # 30 s at 25 Hz, w2v-BERT width


class MeasuredReservoir(ReservoirCombineFn):
    """The fit pipeline's reservoir CombineFn, recording each shipped accumulator's bytes."""

    def __init__(self, capacity: int, seed: int) -> None:
        super().__init__(capacity, seed)
        self.bytes = Metrics.distribution("fit_memory", "accumulator_bytes")

    def compact(self, accumulator: Any) -> Any:
        self.bytes.update(len(pickle.dumps(accumulator)))
        return accumulator


def record_sample(rows: np.ndarray) -> None:
    Metrics.distribution("fit_memory", "sample_rows").update(len(rows))


def bundle_features(bundle: int, clips: int, bundles: int) -> Iterator[np.ndarray]:
    """Feature rows of clips ``bundle, bundle + bundles, ...`` below ``clips``, one at a time."""
    for index in range(bundle, clips, bundles):
        yield clip_features(index)


def clip_features(index: int) -> np.ndarray:
    """Feature rows float32 [FRAMES, DIM] of synthetic clip ``index`` (made in the worker)."""
    return np.random.default_rng(index).standard_normal((FRAMES, DIM), dtype=np.float32)


def run_one(clips: int, capacity: int, bundles: int) -> dict[str, Any]:
    """Run the sampling step on ``clips`` clips in this process; return its figures."""
    options = pipeline_options([], bundles)  # multi_processing, one bundle per worker
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | beam.Create(range(bundles))
            | beam.Reshuffle()
            | beam.FlatMap(bundle_features, clips, bundles)
            | beam.CombineGlobally(MeasuredReservoir(capacity, seed=0))
            | beam.Map(record_sample)
        )
    found = pipeline.result.metrics().query(MetricsFilter().with_namespace("fit_memory"))
    dists = {d.key.metric.name: d.committed for d in found["distributions"]}
    committed = dists["accumulator_bytes"]
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,  # the largest worker
    )
    return {
        "clips": clips,
        "feature_rows": clips * FRAMES,
        "dataset_mb": round(clips * FRAMES * DIM * 4 / 2**20, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "accumulators": {
            "count": committed.count,
            "mean_bytes": round(committed.mean),
            "max_bytes": committed.max,
            "total_mb": round(committed.sum / 2**20, 2),
        },
        "sample_rows": dists["sample_rows"].max,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[4, 32, 128, 512, 2048])
    parser.add_argument("--capacity", type=int, default=10_000)
    parser.add_argument("--bundles", type=int, default=4)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size
    args = parser.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args.one, args.capacity, args.bundles)))
        return
    runs = []
    for clips in args.clips:  # a fresh process per size: its peak memory is its own
        command = [sys.executable, __file__, "--one", str(clips)]
        command += ["--capacity", str(args.capacity), "--bundles", str(args.bundles)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
    report = {
        "benchmark": "fit_memory",
        "capacity": args.capacity,
        "dim": DIM,
        "bundles": args.bundles,
        "capacity_mb": round(args.capacity * DIM * 4 / 2**20, 1),
        "runs": runs,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
