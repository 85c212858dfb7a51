"""The portable route: Beam's job service + an external SDK worker pool, as a cluster runs it.

The fit and tokenize pipelines on ``PortableRunner`` give the DirectRunner's bundle and
shards byte for byte, with the same failures; a tokenize job killed mid-run (launcher, job
service and workers) resumes on fresh services to the same bytes. The services are
stopped by process id after each use, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from musiclm.pipelines import fit_cli, portable
from musiclm.pipelines.portable import portable_services
from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset

from .conftest import FAST_BEAM, THREADS, catalogue_music

TOKENIZE = {
    "clip_seconds": 2.0,
    "min_seconds": 2.0,
    "num_shards": 3,
    "expected_workers": 1,
    "semantic_batch_size": 4,
    "acoustic_batch_size": 4,
    "mulan_batch_size": 4,
    "threads": THREADS,
}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """Beam options of a job service and worker pool shared by this module's tests."""
    with portable_services(tmp_path_factory.mktemp("portable")) as beam_args:
        yield beam_args


def _fit(dataset: Path, components: dict[str, str], out: Path, beam_args, capsys) -> dict:
    args = ["--dataset", str(dataset), "--out", str(out), "--size", "tiny"]
    for name, directory in components.items():
        args += [f"--{name}", directory]
    # Model calls of one clip each: float features then do not depend on which clips the
    # runner happened to batch together (the tiny models differ by 1e-6 at batch 1 vs 4).
    args += ["--threads", str(THREADS), "--features_batch_size", "1", "--mulan_batch_size", "1"]
    fit_cli.main([*args, *beam_args])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_fit_on_the_portable_runner_writes_the_direct_runners_bundle(
    tmp_path, catalogue, tiny_components, services, capsys
):
    direct = _fit(catalogue, tiny_components, tmp_path / "direct", FAST_BEAM, capsys)
    portable = _fit(catalogue, tiny_components, tmp_path / "portable", services, capsys)
    assert direct["failed"] == portable["failed"] == 2  # the cut WAV and the poisoned clip
    assert portable["fingerprint"] == direct["fingerprint"]
    assert _files(tmp_path / "portable") == _files(tmp_path / "direct")


def _start_tokenize(dataset: Path, bundle: Path, out: Path, beam_args) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset
        tokenize_dataset({str(dataset)!r}, {str(bundle)!r}, {str(out)!r},
                         TokenizeConfig(**{TOKENIZE!r}), {list(beam_args)!r})
        """
    )
    return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)


def _reader_waiting(fifo: Path, launcher: subprocess.Popen, timeout: float = 120.0) -> int:
    """Open ``fifo`` for writing once a worker has it open for reading; return the fd."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and launcher.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.05)
    raise AssertionError(f"no worker opened {fifo} (launcher exit code {launcher.poll()})")


def _alive(pid: int, group: bool = False) -> bool:
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_services_are_stopped_when_the_run_fails(tmp_path):
    broke = pytest.raises(RuntimeError, match="the pipeline broke")
    with broke, portable_services(tmp_path) as beam_args:
        assert beam_args[0] == "--runner=PortableRunner"
        job = int((tmp_path / "job_service.pid").read_text())
        pool = int((tmp_path / "worker_pool.pid").read_text())
        assert _alive(job) and _alive(pool, group=True)
        raise RuntimeError("the pipeline broke")
    assert not _alive(job) and not _alive(pool, group=True)


@pytest.mark.slow
def test_tokenize_on_the_portable_runner_resumes_after_a_kill_to_the_direct_runners_shards(
    tmp_path, catalogue, tiny_bundle
):
    dataset = tmp_path / "dataset"
    shutil.copytree(catalogue, dataset)
    late = tmp_path / "late.wav"
    sf.write(late, catalogue_music(4.0, 24_000, 11), 24_000)
    shutil.copy(late, dataset / "late.wav")
    direct_out = tmp_path / "direct"
    direct = tokenize_dataset(
        str(dataset), str(tiny_bundle), str(direct_out), TokenizeConfig(**TOKENIZE), FAST_BEAM
    )

    # The killed run: one source is a FIFO, so a worker is mid-job (blocked decoding it)
    # when the launcher, the job service and the worker pool are killed.
    (dataset / "late.wav").unlink()
    os.mkfifo(dataset / "late.wav")
    out = tmp_path / "portable"
    with portable_services(tmp_path / "doomed") as doomed:
        launcher = _start_tokenize(dataset, tiny_bundle, out, doomed)
        writer = _reader_waiting(dataset / "late.wav", launcher)
        launcher.kill()
        launcher.wait()
        job = int((tmp_path / "doomed" / "job_service.pid").read_text())
        pool = int((tmp_path / "doomed" / "worker_pool.pid").read_text())
        assert _alive(job) and _alive(pool, group=True)
    os.close(writer)
    assert not (out / "dataset.json").exists() and (out / "parts" / "run.json").exists()
    assert not _alive(job) and not _alive(pool, group=True)  # its SDK workers too

    (dataset / "late.wav").unlink()
    shutil.copy(late, dataset / "late.wav")
    # The resume goes the `make tokenize RUNNER=portable` route: fresh services of its own.
    flags = [f"--{name}={value}" for name, value in TOKENIZE.items()]
    args = ["--dataset", str(dataset), "--bundle", str(tiny_bundle), "--out", str(out), *flags]
    portable.main(["musiclm.pipelines.tokenize_cli", *args])
    resumed = json.loads((out / "dataset.json").read_text())
    assert resumed["last_run"]["sources"] == resumed["counts"]["inputs"]  # no shard was whole
    assert resumed["counts"] == direct["counts"] and resumed["counts"]["failed"] == 2
    for name in ("manifest.parquet", "failures.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(direct_out / name)), name
    assert _files(out / "shards") == _files(direct_out / "shards") != {}
