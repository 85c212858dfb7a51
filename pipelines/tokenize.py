"""The tokenize pipeline: a dataset -> webdataset shards of semantic, acoustic and MuLan tokens.

Steps (Beam)::

    pending sources (JSONL under OUT/parts) -> Reshuffle
      -> Decode: decode + resample in blocks, cut clips       (dead letter: step "decode")
                 + per source: header and decoded frame counts ("frames")
      -> RunInference(SemanticHandler)                       (failed clips: step "semantic")
      -> RunInference(AcousticHandler)                       (failed clips: step "acoustic")
      -> RunInference(MulanHandler)                          (failed clips: step "mulan")
      -> drop audio -> key by shard_index(source)
    CoGroupByKey(shard: sources, clips, frames, failures) -> write_shard

then, on the launcher, the per-shard parts are merged into ``manifest.parquet`` and
``failures.parquet`` and ``dataset.json`` is written. A source is either complete in its
shard or one row in the failures (a failure in any step drops its other clips). A model
call that fails is retried clip by clip (:mod:`~musiclm.pipelines.model_handlers`), so
only the clip that breaks the model fails, however Beam batched it.

Resume: shards already complete (see :mod:`musiclm.pipelines.shards`) are skipped with
all their sources; ``overwrite`` deletes the previous outputs first. A resume must use
the same bundle, clip settings and shard count as the run it continues.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from musiclm.pipelines.clips import Clip, ClipConfig
from musiclm.pipelines.decode import FRAMES_TAG, DecodeClips, decode_failure
from musiclm.pipelines.model_handlers import (
    AcousticHandler,
    ClipHandler,
    MulanHandler,
    SemanticHandler,
    local_directory,
)
from musiclm.pipelines.progress import ProgressPrinter, ReportProgress
from musiclm.pipelines.runner import (
    clip_failure,
    inference_failures,
    is_local,
    pipeline_options,
)
from musiclm.pipelines.shards import (
    PARTS_DIR,
    RUN_FILE,
    complete_shards,
    join,
    merge_parts,
    read_json,
    remove_outputs,
    remove_stale,
    write_bytes,
    write_json,
    write_shard,
)
from musiclm.tokenizers.audio import DEFAULT_MAX_MISSING_SECONDS
from musiclm.tokenizers.bundle import verified_manifest
from musiclm.tokenizers.contract import DATASET_FILE, TokenSpec, shard_index
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.source_records import SourceRecord

log = logging.getLogger(__name__)

PENDING_FILE = "pending-sources.jsonl"


@dataclasses.dataclass
class TokenizeConfig:
    """Options of the tokenize pipeline (CLI flags of the same names)."""

    clip_seconds: float = 30.0
    hop_seconds: float | None = None
    min_seconds: float = 3.0
    block_seconds: float = 60.0
    # Shortfall of decoded audio against the header that is not damage (mp3 length
    # estimates, Vorbis granule overshoot: well under 1 s); more is a truncated file.
    max_missing_seconds: float = DEFAULT_MAX_MISSING_SECONDS
    num_shards: int | None = None  # None: from the dataset size (sources_per_shard)
    sources_per_shard: int = 256
    min_shards: int = 8
    expected_workers: int = 8  # total DDP data workers that will read the shards
    semantic_batch_size: int = 8
    acoustic_batch_size: int = 8
    mulan_batch_size: int = 8
    threads: int | None = None  # torch threads per worker process
    workers: int | None = None  # DirectRunner worker processes
    overwrite: bool = False
    source_kind: str | None = None
    progress_seconds: float = 10.0

    @property
    def clips(self) -> ClipConfig:
        return ClipConfig(
            self.clip_seconds,
            self.hop_seconds,
            self.min_seconds,
            self.block_seconds,
            self.max_missing_seconds,
        )


def default_num_shards(num_sources: int, sources_per_shard: int, min_shards: int) -> int:
    """Enough shards for ``sources_per_shard`` sources each, at least ``min_shards``."""
    wanted = max(min_shards, math.ceil(num_sources / max(1, sources_per_shard)))
    return max(1, min(num_sources, wanted))


class WriteShard(beam.DoFn):
    """(shard, {sources, clips, failures}) -> the shard's tar and parts; yields its counts."""

    def __init__(self, out: str, fingerprint: str) -> None:
        self.out, self.fingerprint = out, fingerprint

    def process(self, item: tuple[int, dict[str, list]]) -> Iterator[dict[str, Any]]:
        index, groups = item
        yield write_shard(
            self.out,
            index,
            groups["sources"],
            groups["clips"],
            groups["failures"],
            self.fingerprint,
            groups["frames"],
        )


def run_step(
    clips: beam.PCollection, handler: ClipHandler, failures: list[beam.PCollection]
) -> beam.PCollection:
    """``clips`` through ``RunInference(handler)``; failure rows of what failed go to ``failures``.

    Clips that the handler could not tokenize (``clip.error``) and whole batches that
    Beam's RunInference dropped become failure rows of step ``handler.step``.
    """
    name = handler.step.capitalize()
    results, dead = clips | name >> RunInference(handler).with_exception_handling()
    failures.append(
        dead.failed_inferences | f"{name}Failures" >> beam.FlatMap(inference_failures, handler.step)
    )
    done, failed = results | f"{name}Split" >> beam.Partition(lambda c, _: int(bool(c.error)), 2)
    failures.append(failed | f"{name}FailedClips" >> beam.Map(clip_failure, handler.step))
    return done


def build_pipeline(
    pipeline: beam.Pipeline,
    pending: str,
    bundle: str,
    out: str,
    spec: TokenSpec,
    fingerprint: str,
    num_shards: int,
    config: TokenizeConfig,
    progress_dir: str | None,
) -> beam.PCollection:
    """Add the tokenize steps to ``pipeline``; ``pending`` is a JSONL file of SourceRecords."""

    def by_shard(source: str) -> int:
        return shard_index(source, num_shards)

    records = (
        pipeline
        | "ReadSources" >> beam.io.ReadFromText(pending)
        | "ParseSources" >> beam.Map(lambda line: SourceRecord.from_dict(json.loads(line)))
        | "Spread" >> beam.Reshuffle()
    )
    decoded = records | "Decode" >> beam.ParDo(
        DecodeClips(spec, config.clips, report_frames=True)
    ).with_exception_handling(partial=True).with_outputs(FRAMES_TAG)
    clips = decoded["good"]
    failures = [decoded["bad"] | "DecodeFailures" >> beam.Map(decode_failure)]
    handlers = (
        SemanticHandler(join(bundle, "semantic"), config.semantic_batch_size, config.threads),
        AcousticHandler(join(bundle, "codec"), config.acoustic_batch_size, config.threads),
        MulanHandler(join(bundle, "mulan"), config.mulan_batch_size, config.threads),
    )
    for handler in handlers:
        clips = run_step(clips, handler, failures)
    clips = clips | "DropAudio" >> beam.Map(Clip.without_audio)
    if progress_dir:
        clips = clips | "Progress" >> beam.ParDo(ReportProgress(progress_dir))
    grouped = {
        "sources": records | "KeySources" >> beam.Map(lambda r: (by_shard(r.key), (r.key, r.path))),
        "clips": clips | "KeyClips" >> beam.Map(lambda c: (by_shard(c.source), c)),
        "frames": decoded[FRAMES_TAG] | "KeyFrames" >> beam.Map(lambda f: (by_shard(f[0]), f)),
        "failures": (
            failures
            | "AllFailures" >> beam.Flatten()
            | "KeyFailures" >> beam.Map(lambda f: (by_shard(f["source"]), f))
        ),
    } | "GroupByShard" >> beam.CoGroupByKey()
    return grouped | "WriteShards" >> beam.ParDo(WriteShard(out, fingerprint))


def _metric(result: Any, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return int(sum(c.committed if c.committed is not None else c.attempted or 0 for c in counters))


def _check_resume(out: str, run: dict[str, Any], overwrite: bool) -> None:
    previous = read_json(join(out, PARTS_DIR, RUN_FILE))
    if overwrite:
        remove_outputs(out)
        return
    if previous is not None and previous != run:
        changed = sorted(k for k in run if previous.get(k) != run[k])
        raise ValueError(
            f"{out} holds a tokenization with other settings ({', '.join(changed)} differ). "
            "Rerun with the same settings to resume it, or pass --overwrite to start afresh."
        )
    remove_stale(out)


def tokenize_dataset(
    dataset: str,
    bundle: str,
    out: str,
    config: TokenizeConfig | None = None,
    beam_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Tokenize ``dataset`` with the bundle at ``bundle`` into ``out``; return dataset.json's dict.

    ``beam_args`` are Beam pipeline options (runner, workers, cloud settings).
    """
    config = config or TokenizeConfig()
    started = time.monotonic()
    local_bundle = local_directory(bundle)  # a gs:// bundle is copied once to verify it
    manifest = verified_manifest(local_bundle, name=bundle)
    spec = TokenSpec.from_dict(manifest["spec"])
    fingerprint = manifest["fingerprint"]
    config.clips.samples(spec)  # validate clip settings early

    records = list(read_sources(dataset, kind=config.source_kind))
    if not records:
        raise ValueError(
            f"{dataset} holds no audio sources; see musiclm.tokenizers.dataset_layouts"
        )
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{dataset} lists some sources twice (duplicate keys)")
    num_shards = config.num_shards or default_num_shards(
        len(records), config.sources_per_shard, config.min_shards
    )
    if num_shards < config.expected_workers:
        log.warning(
            "%d shards for %d expected data workers: webdataset under DDP hangs when a worker "
            "gets no shard. Pass --num_shards >= the total number of data workers.",
            num_shards,
            config.expected_workers,
        )

    run = {
        "fingerprint": fingerprint,
        "num_shards": num_shards,
        "clips": dataclasses.asdict(config.clips),
    }
    _check_resume(out, run, config.overwrite)
    write_json(join(out, PARTS_DIR, RUN_FILE), run)

    expected: dict[int, set[str]] = defaultdict(set)
    for record in records:
        expected[shard_index(record.key, num_shards)].add(record.key)
    done = complete_shards(out, expected)
    pending = [r for r in records if shard_index(r.key, num_shards) not in done]
    log.info(
        "%d sources in %d shards; %d shards complete, %d sources to tokenize",
        len(records),
        len(expected),
        len(done),
        len(pending),
    )

    metrics = {
        "sources": len(pending),
        "clips_tokenized": 0,
        "model_calls": 0,
        "retried_batches": 0,
    }
    if pending:
        pending_path = join(out, PARTS_DIR, PENDING_FILE)
        lines = "".join(json.dumps(r.to_dict()) + "\n" for r in pending)
        write_bytes(pending_path, lines.encode())
        options = pipeline_options(beam_args, config.workers)
        with tempfile.TemporaryDirectory(prefix="musiclm-progress-") as progress_dir:
            local = is_local(options)
            pipeline = beam.Pipeline(options=options)
            build_pipeline(
                pipeline,
                pending_path,
                bundle,
                out,
                spec,
                fingerprint,
                num_shards,
                config,
                progress_dir if local else None,
            )
            if local:
                with ProgressPrinter(progress_dir, config.progress_seconds):
                    result = pipeline.run()
                    result.wait_until_finish()
            else:
                result = pipeline.run()
                result.wait_until_finish()
        for step in ("semantic", "acoustic", "mulan"):
            metrics[f"{step}_clips"] = _metric(result, f"{step}_clips")
            metrics["model_calls"] += _metric(result, f"{step}_calls")
            metrics["retried_batches"] += _metric(result, f"{step}_retried_batches")
        metrics["clips_tokenized"] = metrics["semantic_clips"]
        metrics["decoded_sources"] = _metric(result, "decoded_sources")
        FileSystems.delete([pending_path])

    counts = merge_parts(out, expected)
    counts["inputs"] = len(records)
    if counts["ok"] + counts["failed"] != counts["inputs"]:
        raise RuntimeError(
            f"bookkeeping error: {counts['inputs']} inputs but {counts['ok']} ok + "
            f"{counts['failed']} failed"
        )
    if counts["shards"] < config.expected_workers:
        log.warning(
            "only %d non-empty shards for %d expected data workers (DDP hangs when a worker "
            "gets no shard); tokenize with more --num_shards or train with fewer workers",
            counts["shards"],
            config.expected_workers,
        )
    summary = {
        "fingerprint": fingerprint,
        "spec": spec.to_dict(),
        "configs": {
            "tokenize": dataclasses.asdict(config),
            "bundle": manifest["configs"],
            "num_shards": num_shards,
            "dataset": str(dataset),
        },
        "counts": {**counts, "audio_hours": counts["audio_seconds"] / 3600},
        "last_run": {**metrics, "wall_seconds": round(time.monotonic() - started, 2)},
    }
    write_json(join(out, DATASET_FILE), summary)
    return summary
