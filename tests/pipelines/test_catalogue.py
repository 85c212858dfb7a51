"""Real catalogues through the tokenize pipeline: no playable track lost, one bad clip fails alone.

A small folder (the ``catalogue`` fixture) holds what real collections hold besides clean
files: an mp3 whose length is an estimate (no Xing header), a WAV cut at 99% (tokenized
from what decodes) and one cut in half (a failure), and a clip that overflows the models
(finite samples of 1e37: NaN model outputs) among good ones. The dataset is tokenized
with model batches of 4 and of 1. (Vorbis with an over-long final granule is decoded in
``tests/tokenizers/test_audio.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset

from .conftest import FAST_BEAM, THREADS

SHORT_HEADERS = ("estimate.mp3", "cut99.wav")  # header > decoded, by < 1 s


def _run(dataset: Path, bundle: Path, out: Path, batch: int) -> dict:
    config = TokenizeConfig(
        clip_seconds=2.0,  # every clip 2 s (shorter tails are dropped): one length per batch
        min_seconds=2.0,
        num_shards=2,
        expected_workers=1,
        semantic_batch_size=batch,
        acoustic_batch_size=batch,
        mulan_batch_size=batch,
        threads=THREADS,
    )
    return tokenize_dataset(str(dataset), str(bundle), str(out), config, FAST_BEAM)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, catalogue, tiny_bundle) -> dict[int, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("catalogue-out")
    return {b: (root / f"b{b}", _run(catalogue, tiny_bundle, root / f"b{b}", b)) for b in (4, 1)}


@pytest.mark.slow
def test_playable_files_are_tokenized_and_the_manifest_shows_the_shortfall(runs):
    out, summary = runs[4]
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    by_file: dict[str, list[dict]] = {}
    for row in manifest:
        by_file.setdefault(Path(row["path"]).name, []).append(row)
    assert set(by_file) == {f"good{i}.wav" for i in range(5)} | set(SHORT_HEADERS)
    for name, rows in by_file.items():
        header, decoded = rows[0]["header_frames"], rows[0]["decoded_frames"]
        assert all((r["header_frames"], r["decoded_frames"]) == (header, decoded) for r in rows)
        if name in SHORT_HEADERS:
            assert 0 < header - decoded < 44_100, (name, header, decoded)
        else:
            assert header == decoded == 4 * 24_000, name
            assert len(rows) == 2, name
    assert summary["counts"]["ok"] == 7 and summary["counts"]["failed"] == 2


@pytest.mark.slow
def test_a_cut_file_and_a_poisoned_clip_are_the_only_failures(runs):
    out, summary = runs[4]
    rows = {Path(r["path"]).name: r for r in pq.read_table(out / "failures.parquet").to_pylist()}
    assert set(rows) == {"cut50.wav", "poisoned.wav"}, rows
    assert rows["cut50.wav"]["step"] == "decode" and "6.00 s missing" in rows["cut50.wav"]["error"]
    poisoned = rows["poisoned.wav"]
    assert poisoned["step"] in ("semantic", "acoustic", "mulan")
    assert "poisoned.wav" in poisoned["error"] and "NaN or infinite" in poisoned["error"]
    # Its two clips shared batches of 4 with good clips: those were retried clip by clip.
    assert summary["last_run"]["retried_batches"] >= 1, (summary["last_run"], poisoned)


@pytest.mark.slow
def test_outputs_are_identical_whatever_the_batching(runs):
    (four, summary4), (one, summary1) = runs[4], runs[1]
    assert summary1["last_run"]["retried_batches"] == 0
    assert summary4["counts"] == summary1["counts"]
    for name in ("manifest.parquet", "failures.parquet"):
        assert pq.read_table(four / name).equals(pq.read_table(one / name)), name
    shards = sorted(p.name for p in (four / "shards").iterdir())
    assert shards == sorted(p.name for p in (one / "shards").iterdir()) and shards
    for shard in shards:
        assert (four / "shards" / shard).read_bytes() == (one / "shards" / shard).read_bytes()
