"""Writing one shard (tar + bookkeeping), finding complete shards, merging the manifests.

Layout of a tokenized dataset (the contract in ``DESIGN.md``)::

    OUT/shards/shard-NNNNNN.tar     webdataset tar, samples sorted by (source, clip)
    OUT/manifest.parquet            one row per sample
    OUT/failures.parquet            one row per input that failed: source, path, step, error
    OUT/dataset.json                fingerprint, spec, configs, counts
    OUT/parts/run.json              settings of the run (a resume must use the same)
    OUT/parts/shard-NNNNNN.{manifest,failures}.parquet   per-shard rows, for resume

A shard is written in this order, each file under a temporary name renamed when whole:
tar (only if it has samples), failures part, manifest part. A shard is **complete**
when its manifest part exists and its parts name exactly the sources the dataset now
assigns to it; a rerun skips complete shards and their sources. All paths go through
Beam's ``FileSystems`` (local, ``gs://``, ``s3://``).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import webdataset as wds
from apache_beam.io.filesystems import FileSystems
from musiclm.pipelines.clips import Clip
from musiclm.tokenizers.contract import (
    FAILURES_FILE,
    MANIFEST_FILE,
    SHARD_DIR,
    encode_sample,
    shard_name,
)

PARTS_DIR = "parts"
RUN_FILE = "run.json"

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("clip", pa.int32()),
        ("start", pa.float64()),
        ("seconds", pa.float64()),
        ("caption", pa.string()),
        ("semantic_frames", pa.int32()),
        ("acoustic_frames", pa.int32()),
        ("rms_db", pa.float32()),
        ("header_frames", pa.int64()),
        ("decoded_frames", pa.int64()),
    ]
)
FAILURES_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("step", pa.string()),
        ("error", pa.string()),
    ]
)


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def shard_path(out: str, index: int) -> str:
    return join(out, SHARD_DIR, shard_name(index))


def part_path(out: str, index: int, kind: str) -> str:
    """``OUT/parts/shard-NNNNNN.<kind>.parquet`` (kind: manifest | failures)."""
    return join(out, PARTS_DIR, shard_name(index).replace(".tar", f".{kind}.parquet"))


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary name, then a rename."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as handle:
        handle.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def table_bytes(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), buffer)
    return buffer.getvalue()


def read_table(path: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)))


def failure_row(source: str, path: str, step: str, error: str) -> dict[str, str]:
    """One row of ``failures.parquet`` (:data:`FAILURES_SCHEMA`), the one place it is built."""
    return {"source": source, "path": path, "step": step, "error": error}


def manifest_row(clip: Clip, shard: int, frames: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The manifest row of ``clip``; ``frames``: its source's (header, decoded) native frames."""
    return {
        "key": clip.key,
        "shard": shard,
        "source": clip.source,
        "path": clip.path,
        "clip": clip.index,
        "start": clip.offset,
        "seconds": clip.seconds,
        "caption": clip.caption,
        "semantic_frames": int(clip.tokens["semantic"].shape[-1]),
        "acoustic_frames": int(clip.tokens["acoustic"].shape[-1]),
        "rms_db": clip.rms_db,
        "header_frames": frames[0],
        "decoded_frames": frames[1],
    }


def tar_bytes(clips: Sequence[Clip], fingerprint: str) -> bytes:
    """The webdataset tar of ``clips`` (byte-identical for identical clips: fixed mtime)."""
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, mtime=0.0) as sink:
        for clip in clips:
            meta = {
                "source": clip.source,
                "path": clip.path,
                "clip": clip.index,
                "offset": clip.offset,
                "seconds": clip.seconds,
                "bundle": fingerprint,
            }
            t = clip.tokens
            sink.write(
                encode_sample(
                    clip.key,
                    t["semantic"],
                    t["acoustic"],
                    t["mulan"],
                    t["mulan_emb"],
                    clip.caption,
                    meta,
                )
            )
    return buffer.getvalue()


def write_shard(
    out: str,
    index: int,
    sources: Iterable[tuple[str, str]],
    clips: Iterable[Clip],
    failures: Iterable[dict[str, str]],
    fingerprint: str,
    frames: Iterable[tuple[str, int, int]] = (),
) -> dict[str, Any]:
    """Write shard ``index`` from everything the pipeline produced for its sources.

    ``sources`` are the shard's ``(key, path)`` pairs; a source with any failure row
    keeps one (the first in (step, error) order, so reruns agree) and loses all its
    clips, so every source ends up either fully in the tar or in failures. ``frames``
    are ``(source, header_frames, decoded_frames)``, recorded in the manifest rows.
    Returns counts of what was written.
    """
    frame_counts = {key: (header, decoded) for key, header, decoded in frames}
    failed: dict[str, dict[str, str]] = {}
    for row in sorted(failures, key=lambda r: (r["source"], r["step"], r["error"])):
        failed.setdefault(row["source"], row)
    kept = sorted((c for c in clips if c.source not in failed), key=lambda c: (c.source, c.index))
    produced = {c.source for c in kept}
    for key, path in sources:
        if key not in produced and key not in failed:
            failed[key] = failure_row(key, path, "cut", f"{path}: gave no clips")
    if kept:
        write_bytes(shard_path(out, index), tar_bytes(kept, fingerprint))
    rows = [failed[k] for k in sorted(failed)]
    write_bytes(part_path(out, index, "failures"), table_bytes(rows, FAILURES_SCHEMA))
    manifest = [manifest_row(c, index, frame_counts.get(c.source, (0, 0))) for c in kept]
    write_bytes(part_path(out, index, "manifest"), table_bytes(manifest, MANIFEST_SCHEMA))
    return {"shard": index, "clips": len(kept), "failed": len(rows)}


def complete_shards(out: str, expected: dict[int, set[str]]) -> set[int]:
    """Shards whose parts exist and name exactly the sources ``expected[shard]``."""
    done = set()
    for index, sources in expected.items():
        manifest = part_path(out, index, "manifest")
        if not FileSystems.exists(manifest):
            continue
        have = set(read_table(manifest).column("source").to_pylist())
        failures = part_path(out, index, "failures")
        if FileSystems.exists(failures):
            have |= set(read_table(failures).column("source").to_pylist())
        tar_ok = not have or FileSystems.exists(shard_path(out, index))
        if have == sources and tar_ok:
            done.add(index)
    return done


def remove_stale(out: str) -> None:
    """Delete temporary files left by an interrupted run."""
    for folder in (SHARD_DIR, PARTS_DIR):
        found = FileSystems.match([join(out, folder, "*.tmp-*")])[0].metadata_list
        if found:
            FileSystems.delete([m.path for m in found])


def remove_outputs(out: str) -> None:
    """``--overwrite``: delete shards, parts and the dataset files of a previous run."""
    paths = [m.path for m in FileSystems.match([join(out, SHARD_DIR, "*")])[0].metadata_list]
    paths += [m.path for m in FileSystems.match([join(out, PARTS_DIR, "*")])[0].metadata_list]
    for name in (MANIFEST_FILE, FAILURES_FILE, "dataset.json"):
        if FileSystems.exists(join(out, name)):
            paths.append(join(out, name))
    if paths:
        FileSystems.delete(paths)


def merge_parts(out: str, shards: Iterable[int]) -> dict[str, float]:
    """Concatenate the per-shard parts into ``manifest.parquet`` and ``failures.parquet``.

    Streams one part at a time (memory: one shard's rows). Returns counts: ``clips``,
    ``ok`` (sources with clips), ``failed``, ``audio_seconds``, ``shards`` (non-empty tars).
    """
    counts = {"clips": 0, "ok": 0, "failed": 0, "audio_seconds": 0.0, "shards": 0}
    for kind, name, schema in (
        ("manifest", MANIFEST_FILE, MANIFEST_SCHEMA),
        ("failures", FAILURES_FILE, FAILURES_SCHEMA),
    ):
        tmp = join(out, f"{name}.tmp-{uuid.uuid4().hex[:8]}")
        with FileSystems.create(tmp) as handle, pq.ParquetWriter(handle, schema) as writer:
            for index in sorted(shards):
                table = read_table(part_path(out, index, kind)).cast(schema)
                writer.write_table(table)
                if kind == "failures":
                    counts["failed"] += table.num_rows
                elif table.num_rows:
                    counts["clips"] += table.num_rows
                    counts["ok"] += len(set(table.column("source").to_pylist()))
                    counts["audio_seconds"] += float(pc.sum(table.column("seconds")).as_py())
                    counts["shards"] += 1
        final = join(out, name)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([tmp], [final])
    return counts


def write_json(path: str, value: dict[str, Any]) -> None:
    write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(path: str) -> dict[str, Any] | None:
    return json.loads(read_bytes(path)) if FileSystems.exists(path) else None
