"""The tokenize pipeline end to end: demo music + broken/awkward inputs -> shards a trainer reads.

Checks what a user relies on: every good file has all its clips with the tokens the
tokenizers give when called directly; every broken file is one readable failure row;
the counts add up; the shards read with plain webdataset; a crashed run resumes to the
same bytes while tokenizing only what was missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from musiclm.pipelines import tokenize_cli
from musiclm.pipelines.clips import ClipConfig, clip_bounds
from musiclm.pipelines.shards import PARTS_DIR, part_path
from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.bundle import BundleError, load_bundle
from musiclm.tokenizers.contract import decode_sample
from musiclm.tokenizers.dataset_layouts import read_sources

from .conftest import AWKWARD_INPUTS, BAD_INPUTS, FAST_BEAM, THREADS

CLIP = {"clip_seconds": 10.0, "min_seconds": 2.0, "threads": THREADS}
FAILURE_REASONS = {
    "corrupt.wav": "cannot decode audio",
    "truncated.wav": "truncated",
    "empty.wav": "",  # libsndfile's own words; the file name is what matters
    "nan.wav": "NaN",
    "lyrics.flac": "cannot decode audio",
}


def direct_tokens(bundle, path: str, start, end, config: ClipConfig) -> list[dict]:
    """Tokens of each clip of a file by calling the three tokenizers directly (batched)."""
    spec = bundle.spec
    wav = load_audio(path, spec.sample_rate, start or 0.0, end)
    bounds = clip_bounds(len(wav), spec, config)
    out: list[dict] = []
    with torch.inference_mode():
        for first in range(0, len(bounds), 8):
            group = bounds[first : first + 8]
            lengths = {n for _, n in group}
            batches = [[b] for b in group] if len(lengths) > 1 else [group]
            for batch in batches:
                clips = torch.stack([wav[s : s + n] for s, n in batch])
                emb = bundle.mulan.audio_embedding(clips)
                semantic = bundle.semantic.encode(clips).numpy()
                acoustic = bundle.codec.encode(clips[:, None]).numpy()
                mulan = bundle.mulan.quantize(emb).numpy()
                for i in range(len(batch)):
                    out.append(
                        {
                            "semantic": semantic[i],
                            "acoustic": acoustic[i],
                            "mulan": mulan[i],
                            "mulan_emb": emb[i].numpy(),
                        }
                    )
    return out


def read_shards(out: Path) -> dict[str, dict]:
    """Raw samples of OUT/shards by key (bytes per member, as webdataset yields them)."""
    shards = sorted(glob.glob(str(out / "shards" / "shard-*.tar")))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, mixed_dataset, tiny_bundle) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "out"
    args = ["--dataset", str(mixed_dataset), "--bundle", str(tiny_bundle), "--out", str(out)]
    args += ["--clip_seconds", "10", "--min_seconds", "2", "--num_shards", "6", "--threads", "1"]
    tokenize_cli.main([*args, "--expected_workers", "2", *FAST_BEAM])
    return out


@pytest.mark.slow
def test_every_broken_file_is_one_readable_failure(tokenized):
    rows = pq.read_table(tokenized / "failures.parquet").to_pylist()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == set(BAD_INPUTS), rows
    for name, reason in FAILURE_REASONS.items():
        row = by_name[name]
        assert row["step"] == "decode"
        assert name in row["error"] and reason in row["error"], row
        assert "Traceback" not in row["error"] and "\n" not in row["error"]


def assert_same_frames(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Token frames [..., T] agree, but for rare ties between two nearest codes.

    The pipeline batches clips differently from the direct call, and a different batch
    changes the order of float sums inside the convolutions; a frame whose embedding lies
    on the boundary between two codes can then pick the neighbour (and, in an RVQ, every
    later level follows). At most 1% of frames may differ that way.
    """
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    differ = (got != want).reshape(-1, got.shape[-1]).any(axis=0)
    assert differ.mean() <= 0.01, f"{what}: {int(differ.sum())} of {differ.size} frames differ"


@pytest.mark.slow
def test_good_files_have_all_clips_with_direct_tokens(tokenized, mixed_dataset, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    config = ClipConfig(seconds=CLIP["clip_seconds"], min_seconds=CLIP["min_seconds"])
    torch.set_num_threads(THREADS)
    samples = read_shards(tokenized)
    manifest = pq.read_table(tokenized / "manifest.parquet").to_pylist()
    assert len(samples) == len(manifest) and {r["key"] for r in manifest} == set(samples)
    per_source = Counter(r["source"] for r in manifest)
    records = [r for r in read_sources(mixed_dataset) if Path(r.path).name not in BAD_INPUTS]
    assert {Path(r.path).name for r in records} >= set(AWKWARD_INPUTS)
    for record in records:
        expected = direct_tokens(bundle, record.path, record.start, record.end, config)
        assert per_source[record.key] == len(expected), record.path
        for index, want in enumerate(expected):
            got = decode_sample(samples[f"{record.key}-{index:05d}"])
            bundle.spec.check_sample(got)
            for name in ("semantic", "acoustic"):
                assert_same_frames(got[name], want[name], f"{record.path} {name}")
            np.testing.assert_array_equal(got["mulan"], want["mulan"], err_msg=str(record.path))
            np.testing.assert_allclose(got["mulan_emb"], want["mulan_emb"], rtol=1e-2, atol=1e-3)
            assert got["caption"] == record.caption
            assert got["meta"]["bundle"] == bundle.fingerprint


@pytest.mark.slow
def test_shards_load_with_plain_webdataset(tokenized, tiny_bundle):
    # The README's snippet, verbatim.
    import webdataset as wds

    urls = sorted(glob.glob(f"{tokenized}/shards/shard-*.tar"))
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        semantic, acoustic = sample["semantic.npy"], sample["acoustic.npy"]
        caption, meta = sample["txt"], sample["json"]
        assert acoustic.shape[1] == 2 * semantic.shape[0] and semantic.dtype == np.int16
        assert sample["mulan.npy"].shape == (3,) and meta["bundle"] and isinstance(caption, str)


@pytest.mark.slow
def test_silence_and_missing_caption_are_samples_not_failures(tokenized):
    manifest = pq.read_table(tokenized / "manifest.parquet").to_pylist()
    silence = [r for r in manifest if Path(r["path"]).name == "silence.wav"]
    assert silence and all(r["rms_db"] == -200.0 for r in silence)
    uncaptioned = [r for r in manifest if Path(r["path"]).name == "no_caption.wav"]
    assert uncaptioned and all(r["caption"] == "" for r in uncaptioned)
    long = [r for r in manifest if Path(r["path"]).name == "twenty_minutes.flac"]
    assert len(long) == 120 and sum(r["seconds"] for r in long) == 1200.0


@pytest.mark.slow
def test_dataset_json_counts_add_up(tokenized, mixed_dataset, tiny_bundle):
    info = json.loads((tokenized / "dataset.json").read_text())
    counts = info["counts"]
    inputs = len(list(read_sources(mixed_dataset)))
    assert counts["inputs"] == inputs == counts["ok"] + counts["failed"]
    assert counts["failed"] == len(BAD_INPUTS)
    assert counts["clips"] == len(read_shards(tokenized))
    assert (
        info["fingerprint"] == json.loads((tiny_bundle / "bundle.json").read_text())["fingerprint"]
    )
    assert info["configs"]["tokenize"]["clip_seconds"] == 10.0


def _crash_after_two_shards(dataset: Path, bundle: Path, out: Path, config: dict) -> int:
    """Run the pipeline in a child process that dies (os._exit) after writing 2 shards."""
    script = textwrap.dedent(
        f"""
        import os
        import musiclm.pipelines.tokenize as t
        real, written = t.write_shard, []
        def write_then_crash(*args, **kwargs):
            result = real(*args, **kwargs)
            written.append(result)
            if len(written) == 2:
                os._exit(9)
            return result
        t.write_shard = write_then_crash
        t.tokenize_dataset({str(dataset)!r}, {str(bundle)!r}, {str(out)!r},
                           t.TokenizeConfig(**{config!r}), {FAST_BEAM!r})
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True).returncode


SMALL_RUN = {**CLIP, "num_shards": 4, "expected_workers": 1}


@pytest.fixture(scope="module")
def small_tokenized(tmp_path_factory, small_demo, tiny_bundle) -> tuple[Path, dict]:
    """An uninterrupted in-memory run on six demo pieces: (OUT, dataset.json)."""
    out = tmp_path_factory.mktemp("small") / "whole"
    config = TokenizeConfig(**SMALL_RUN)
    return out, tokenize_dataset(str(small_demo), str(tiny_bundle), str(out), config, FAST_BEAM)


@pytest.mark.slow
def test_default_multiprocessing_runner_gives_the_same_shards(
    tmp_path, small_demo, tiny_bundle, small_tokenized, capsys
):
    whole, _ = small_tokenized
    out = tmp_path / "mp"
    args = ["--dataset", str(small_demo), "--bundle", str(tiny_bundle), "--out", str(out)]
    args += ["--clip_seconds", "10", "--min_seconds", "2", "--num_shards", "4"]
    tokenize_cli.main([*args, "--threads", "1", "--direct_num_workers", "2"])
    assert "clips/s" in capsys.readouterr().err  # the progress line of the local runner
    assert sorted(os.listdir(out / "shards")) == sorted(os.listdir(whole / "shards"))
    for shard in os.listdir(whole / "shards"):
        assert (out / "shards" / shard).read_bytes() == (whole / "shards" / shard).read_bytes()


@pytest.mark.slow
def test_crash_then_resume_equals_uninterrupted_run(
    tmp_path, small_demo, tiny_bundle, small_tokenized
):
    config = SMALL_RUN
    whole, full = small_tokenized
    written = sorted(glob.glob(str(whole / PARTS_DIR / "*.manifest.parquet")))
    assert len(written) >= 3, "the test needs sources in at least 3 shards"
    crashed = tmp_path / "crashed"
    assert _crash_after_two_shards(small_demo, tiny_bundle, crashed, config) == 9
    done = sorted(glob.glob(str(crashed / PARTS_DIR / "*.manifest.parquet")))
    assert len(done) == 2 and not (crashed / "dataset.json").exists()
    clips_done = sum(pq.read_table(p).num_rows for p in done)
    sources_done = sum(len(set(pq.read_table(p).column("source").to_pylist())) for p in done)
    (crashed / "shards" / "shard-000099.tar.tmp-dead").write_bytes(b"half a shard")

    resumed = tokenize_dataset(
        str(small_demo), str(tiny_bundle), str(crashed), TokenizeConfig(**config), FAST_BEAM
    )
    assert resumed["last_run"]["sources"] == full["counts"]["inputs"] - sources_done
    assert resumed["last_run"]["clips_tokenized"] == full["counts"]["clips"] - clips_done
    assert resumed["counts"] == full["counts"]
    for shard in sorted(os.listdir(whole / "shards")):
        assert (crashed / "shards" / shard).read_bytes() == (whole / "shards" / shard).read_bytes()
    assert sorted(os.listdir(crashed / "shards")) == sorted(os.listdir(whole / "shards"))
    assert pq.read_table(crashed / "manifest.parquet").equals(
        pq.read_table(whole / "manifest.parquet")
    )

    # A shard whose tar was renamed but whose parts were not (crash in between) is redone.
    victim = sorted(os.listdir(whole / "shards"))[0]
    index = int(victim.removeprefix("shard-").removesuffix(".tar"))
    os.remove(part_path(str(crashed), index, "manifest"))
    again = tokenize_dataset(
        str(small_demo), str(tiny_bundle), str(crashed), TokenizeConfig(**config), FAST_BEAM
    )
    redo = pq.read_table(part_path(str(whole), index, "manifest")).num_rows
    assert again["last_run"]["clips_tokenized"] == redo > 0
    assert (crashed / "shards" / victim).read_bytes() == (whole / "shards" / victim).read_bytes()


@pytest.mark.slow
def test_resume_refuses_other_settings_and_overwrite_starts_afresh(
    tmp_path, small_demo, tiny_bundle
):
    out = tmp_path / "out"
    config = {**CLIP, "num_shards": 3, "expected_workers": 1}
    tokenize_dataset(
        str(small_demo), str(tiny_bundle), str(out), TokenizeConfig(**config), FAST_BEAM
    )
    other = {**config, "clip_seconds": 5.0}
    with pytest.raises(ValueError, match="--overwrite"):
        tokenize_dataset(
            str(small_demo), str(tiny_bundle), str(out), TokenizeConfig(**other), FAST_BEAM
        )
    fresh = tokenize_dataset(
        str(small_demo),
        str(tiny_bundle),
        str(out),
        TokenizeConfig(**other, overwrite=True),
        FAST_BEAM,
    )
    assert fresh["last_run"]["sources"] == fresh["counts"]["inputs"]
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert max(r["seconds"] for r in manifest) == 5.0


def test_missing_bundle_is_a_plain_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a tokenizer bundle"):
        tokenize_cli.main(
            ["--dataset", str(tmp_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "o")]
        )


def test_a_changed_bundle_is_refused_by_the_pipeline_and_the_loader(tmp_path, tiny_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config = bundle / "semantic" / "config.json"
    config.write_text(config.read_text() + "\n")
    changed = rf"the files of bundle {bundle} changed since it was written .*make tokenizers"
    with pytest.raises(SystemExit, match=changed):
        tokenize_cli.main(
            ["--dataset", str(tmp_path), "--bundle", str(bundle), "--out", str(tmp_path / "o")]
        )
    with pytest.raises(BundleError, match=changed):
        load_bundle(bundle)


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_size_configs_load_into_the_pipeline_options(size):
    """``make tokenize SIZE=...`` and ``make tokenizers SIZE=...`` read these YAML files."""
    import argparse

    import yaml
    from musiclm.pipelines.cli_args import add_config_flags, parse_config
    from musiclm.pipelines.fit import FitConfig

    configs = Path(__file__).resolve().parents[2] / "configs" / "pipelines"
    for kind, config_class in (("tokenize", TokenizeConfig), ("fit", FitConfig)):
        parser = argparse.ArgumentParser()
        add_config_flags(parser, config_class)
        path = configs / kind / f"{size}.yaml"
        _, config, beam_args = parse_config(parser, config_class, ["--config", str(path)])
        assert beam_args == []
        for key, value in yaml.safe_load(path.read_text()).items():
            assert getattr(config, key) == value
