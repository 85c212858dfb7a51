"""Tokenize pipeline benchmark: throughput vs bare tokenizer calls, workers, peak memory.

Prints one JSON object with

- ``throughput``: audio seconds tokenized per wall second by the Beam pipeline (decode,
  resample, clip, three RunInference steps, shard writing, manifests) and by bare
  batched calls of the same three tokenizers on the same clips, already decoded in
  memory (the ceiling). ``ratio_pipeline_over_bare`` uses the pipeline on the
  in-memory DirectRunner (goal >= 0.85); the multi-processing runs also pay each worker
  process's start-up (imports, model loads), measured alone as ``worker_startup_s``.
  Everything runs with the same torch thread count (``--threads``). Each run also reports
  audio seconds per CPU second (user + system time of this process and its children),
  which a shared machine's load disturbs far less than wall time.
- ``workers``: pipeline throughput with 1 and 2 DirectRunner worker processes (goal:
  2 workers >= 1.7x one).
- ``memory``: peak memory of ``musiclm-tokenize`` (what ``make tokenize`` runs: launcher
  + its worker process, sampled every 50 ms; PSS and the plain RSS sum) tokenizing a
  catalogue of 200 and of 2,000 short files (``--memory_files``, ``--memory_seconds``
  each), and one 1-hour file (part ``long``) (goal: flat, under 2 GiB).

Tokenizers: untrained SoundStream, semantic model and MuLan at the paper's token spec
(12 x 1024 acoustic codes, 1024 semantic ids, MuLan 12 x 1024 / 128-d), sized by
``--size``: ``tiny`` (the test models) or ``small`` (the networks of
``configs/tokenizers/*/small.yaml``, as ``make demo`` trains them; MuLan's text tower is
the tiny one, since tokenizing never calls it). Cost does not depend on the weights;
centroids and codebooks are fitted by the fit pipeline on the benchmark audio. Audio:
synthetic music-like signals (decaying partials + noise) written as 44.1 kHz stereo FLAC,
so decoding, down-mixing and resampling are part of the pipeline's cost as with real
catalogues.

Usage: ``python benchmarks/tokenize_pipeline.py [--size small] [--files 8] [--seconds 60]
[--parts throughput,memory,long] [--memory_files 200,2000] [--quick]``.
Wall times depend on the machine's load; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from musiclm.pipelines.clips import ClipConfig, iter_clips
from musiclm.pipelines.fit import FitConfig, fit_bundle
from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset
from musiclm.tokenizers.bundle import load_bundle
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.mulan import TINY_TEXT, MuLanTokenizer
from musiclm.tokenizers.mulan_audio import AudioTowerConfig
from musiclm.tokenizers.mulan_text import TextTowerConfig
from musiclm.tokenizers.semantic import SemanticTokenizer
from musiclm.tokenizers.semantic_model import SemanticFeatureModel, SemanticModelConfig
from musiclm.tokenizers.soundstream import SoundStream

CLIP_SECONDS = 10.0
MIN_SECONDS = 1.0
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "tokenizers"


def write_music(path: Path, seconds: float, rate: int = 44_100, seed: int = 0) -> None:
    """Synthetic stereo music-like audio (decaying partials + noise), written in 30 s blocks."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", rate, 2, format="FLAC") as handle:
        for start in np.arange(0, seconds, 30.0):
            t = np.arange(int(min(30.0, seconds - start) * rate)) / rate
            base = rng.uniform(110, 440)
            wave = sum(
                np.sin(2 * np.pi * base * k * t) * np.exp(-(t % 0.4) * 5) / k for k in (1, 2, 3)
            )
            wave = 0.2 * wave + rng.normal(0, 0.01, t.size)
            handle.write(np.stack([wave, 0.8 * wave], axis=1).astype(np.float32))


def make_dataset(root: Path, files: int, seconds: float) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        write_music(root / f"track{i:04d}.flac", seconds, seed=i)
    return root


def components(root: Path, spec: TokenSpec, size: str, captions: list[str]) -> dict[str, str]:
    """Untrained codec, semantic model and MuLan saved under ``root``."""
    if size == "tiny":
        codec = SoundStream(channels=4, dim=32, num_levels=spec.acoustic_levels)
        semantic = SemanticTokenizer.tiny(spec)
        mulan = MuLanTokenizer.tiny(captions, spec)
    else:

        def model_config(name: str) -> dict:
            return yaml.safe_load((CONFIGS / name / f"{size}.yaml").read_text())["model"]

        codec = SoundStream.from_config(model_config("soundstream")["codec"])
        model = SemanticFeatureModel(SemanticModelConfig(**model_config("semantic")["model"]))
        semantic = SemanticTokenizer(model.eval(), spec)
        audio = {**model_config("mulan")["audio"], "sample_rate": spec.sample_rate}
        mulan = MuLanTokenizer.build(
            AudioTowerConfig(**{**audio, "dim": spec.mulan_dim}),
            TextTowerConfig(**{**TINY_TEXT.to_dict(), "dim": spec.mulan_dim}),
            spec,
            captions,
        )
    dirs = {"codec": codec, "semantic": semantic, "mulan": mulan}
    for name, model in dirs.items():
        model.save(root / name)
    return {name: str(root / name) for name in dirs}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def rates(audio_seconds: float, wall_start: float, cpu_start: float) -> dict[str, float]:
    """Audio seconds per wall second and per CPU second since the given starts."""
    wall, cpu = time.perf_counter() - wall_start, cpu_seconds() - cpu_start
    return {
        "audio_s_per_wall_s": round(audio_seconds / wall, 2),
        "audio_s_per_cpu_s": round(audio_seconds / cpu, 2),
        "wall_s": round(wall, 1),
    }


def bare_throughput(bundle_dir: Path, dataset: Path, batch: int) -> dict[str, float]:
    """Rates of the three tokenizers called directly on the clips (decoded beforehand)."""
    bundle = load_bundle(bundle_dir)
    config = ClipConfig(seconds=CLIP_SECONDS, min_seconds=MIN_SECONDS)
    clips = [c.wav for r in read_sources(dataset) for c in iter_clips(r, bundle.spec, config)]
    by_length: dict[int, list[np.ndarray]] = {}
    for wav in clips:
        by_length.setdefault(len(wav), []).append(wav)
    seconds = sum(len(w) for w in clips) / bundle.spec.sample_rate

    def tokenize(wav: torch.Tensor) -> None:
        bundle.semantic.encode(wav)
        bundle.codec.encode(wav[:, None])
        bundle.mulan.quantize(bundle.mulan.audio_embedding(wav))

    with torch.inference_mode():
        tokenize(torch.from_numpy(np.stack(clips[:batch])))  # first-call set-up, untimed
        start, cpu = time.perf_counter(), cpu_seconds()
        for group in by_length.values():
            for i in range(0, len(group), batch):
                tokenize(torch.from_numpy(np.stack(group[i : i + batch])))
    return rates(seconds, start, cpu)


def pipeline_run(
    dataset: Path, bundle: Path, out: Path, workers: int, threads: int, batch: int
) -> dict[str, float]:
    """Rates of the tokenize pipeline (audio seconds per wall and per CPU second).

    ``workers=0``: DirectRunner in-memory (this process); else multi-processing with
    ``workers`` worker processes (their start-up, imports and model loads included).
    """
    config = TokenizeConfig(
        clip_seconds=CLIP_SECONDS,
        min_seconds=MIN_SECONDS,
        num_shards=8,
        expected_workers=1,
        semantic_batch_size=batch,
        acoustic_batch_size=batch,
        mulan_batch_size=batch,
        threads=threads,
        overwrite=True,
        progress_seconds=1e9,
    )
    start, cpu = time.perf_counter(), cpu_seconds()
    runner = (
        ["--direct_running_mode=in_memory"]
        if workers == 0
        else ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    )
    summary = tokenize_dataset(str(dataset), str(bundle), str(out), config, runner)
    return rates(summary["counts"]["audio_seconds"], start, cpu)


def tree_memory(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` bytes summed over ``pid`` and its descendants (Linux /proc).

    RSS counts the shared library pages (torch's are ~0.6 GiB) once per process; PSS
    splits shared pages between the processes that map them (the fair total).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    rss = pss = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def peak_memory(dataset: Path, bundle: Path, out: Path, workers: int) -> dict[str, float]:
    """Peak memory (GiB) of a ``musiclm-tokenize`` process tree, its wall time and counts."""
    command = [
        sys.executable,
        "-m",
        "musiclm.pipelines.tokenize_cli",
        "--dataset",
        str(dataset),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--clip_seconds",
        str(CLIP_SECONDS),
        "--min_seconds",
        str(MIN_SECONDS),
        "--num_shards",
        "8",
        "--expected_workers",
        "1",
        "--overwrite",
        f"--direct_num_workers={workers}",
        "--threads",
        "1",
    ]
    start = time.perf_counter()
    peak_rss = peak_pss = 0
    done = threading.Event()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

        def sample() -> None:
            nonlocal peak_rss, peak_pss
            while not done.is_set():
                rss, pss = tree_memory(process.pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        if code:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-1500:]
            return {"error": f"exit code {code}", "stderr_tail": tail}
    counts = json.loads((out / "dataset.json").read_text())["counts"]
    return {
        "peak_pss_gib": round(peak_pss / 2**30, 3),
        "peak_rss_sum_gib": round(peak_rss / 2**30, 3),
        "wall_s": round(time.perf_counter() - start, 1),
        "inputs": counts["inputs"],
        "failed": counts["failed"],
        "clips": counts["clips"],
        "audio_hours": round(counts["audio_seconds"] / 3600, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8, help="files for the throughput runs")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model call")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--parts", default="throughput,memory,long", help="which measurements")
    parser.add_argument("--memory_files", default="200,2000", help="catalogue sizes (files)")
    parser.add_argument("--memory_seconds", type=float, default=4.0, help="length of each")
    parser.add_argument("--quick", action="store_true", help="fewer/shorter files, no 1-hour file")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.files, args.seconds, args.memory_files = 4, 30.0, "10,100"
        parts.discard("long")
    cores = os.cpu_count() or 1
    spec = TokenSpec()
    result: dict = {
        "machine": {
            "cpus": cores,
            "load_average_1min": round(os.getloadavg()[0], 1),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "setup": {
            "size": args.size,
            "clip_seconds": CLIP_SECONDS,
            "batch": args.batch,
            "threads": args.threads,
            "files": args.files,
            "file_seconds": args.seconds,
            "input": "44.1 kHz stereo FLAC",
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "data", args.files, args.seconds)
        components_dirs = components(root / "components", spec, args.size, ["synthetic music"])
        fit_bundle(
            str(data),
            components_dirs,
            str(root / "bundle"),
            FitConfig(clip_seconds=CLIP_SECONDS, rvq_min_points_per_code=1),
            ["--direct_running_mode=in_memory"],
        )
        bundle = root / "bundle"
        if "throughput" in parts:
            torch.set_num_threads(args.threads)
            bare = bare_throughput(bundle, data, args.batch)
            inproc = pipeline_run(data, bundle, root / "o0", 0, args.threads, args.batch)
            one = pipeline_run(data, bundle, root / "o1", 1, args.threads, args.batch)
            two = pipeline_run(data, bundle, root / "o2", 2, args.threads, args.batch)
            startup = root / "startup"
            write_music(make_dataset(startup, 0, 0) / "short.flac", CLIP_SECONDS)
            startup_run = pipeline_run(startup, bundle, root / "o3", 1, args.threads, args.batch)
            wall, cpu = "audio_s_per_wall_s", "audio_s_per_cpu_s"
            result["throughput"] = {
                "bare_batched_calls": bare,
                "pipeline_in_process": inproc,
                "ratio_pipeline_over_bare": round(inproc[wall] / bare[wall], 3),
                "ratio_pipeline_over_bare_cpu": round(inproc[cpu] / bare[cpu], 3),
                "goal_ratio": 0.85,
                "pipeline_1_worker_process": one,
                "ratio_1_worker_process_over_bare": round(one[wall] / bare[wall], 3),
                "worker_startup_s": startup_run["wall_s"],
            }
            result["workers"] = {
                "pipeline_1_worker": one,
                "pipeline_2_workers": two,
                "speedup": round(two[wall] / one[wall], 3),
                "cpu_efficiency_2_over_1": round(two[cpu] / one[cpu], 3),
                "goal_speedup": 1.7,
            }
        if "memory" in parts:
            memory: dict = {}
            seconds = args.memory_seconds
            for count in map(int, args.memory_files.split(",")):
                files = make_dataset(root / f"mem{count}", count, seconds)
                name = f"{count}_files_of_{seconds:g}s"
                memory[name] = peak_memory(files, bundle, root / "mem", 1)
                shutil.rmtree(files)
            memory["goal"] = "flat across sizes, < 2 GiB"
            result["memory"] = memory
        if "long" in parts:
            hour = root / "hour"
            hour.mkdir()
            write_music(hour / "one_hour.flac", 3600.0)
            result.setdefault("memory", {})["one_file_of_1h"] = peak_memory(
                hour, bundle, root / "mem", 1
            )
    result["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
