"""Codec benchmark: CPU real-time factors and quality per RVQ level count next to Opus 6 kbps.

Prints one JSON object:

* ``rtf``: seconds of compute per second of audio for ``encode`` and ``decode`` of the
  SoundStream architectures of ``configs/tokenizers/soundstream/{small,paper}.yaml``
  (random weights: the cost does not depend on them), batch 1, ``--rtf-seconds`` of audio,
  on the CPU with the process's torch threads.
* ``quality``: multi-scale mel distance (lower is better) and SI-SNR in dB (higher is
  better) on held-out clips, averaged over clips, at 1, 4 and 12 levels for the trained
  codec (``--codec``; default ``runs/tokenizers/soundstream/model``, which ``make demo``,
  ``make tokenizers`` and ``make train-tokenizer TOKENIZER=soundstream`` write; the
  benchmark stops with a message when there is none) and for the same architecture untrained, next to Opus at 6 kbps (``ffmpeg`` with
  ``libopus``; skipped with a note when ffmpeg lacks it) -- the SoundStream paper's anchor.

Usage: ``python benchmarks/codec.py [--codec runs/tokenizers/soundstream/model] [--heldout data/demo/heldout]
[--clip-seconds 5] [--clips 12] [--sizes small paper]``. Wall times depend on the load of
the machine (the JSON records its load average at the start); run it on a quiet one.
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
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.audio_metrics import mel_distance, round_trip, si_snr
from musiclm.tokenizers.bundle import load_codec
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.soundstream import SoundStream
from musiclm.tokenizers.source_records import is_audio_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CODEC = ROOT / "runs" / "tokenizers" / "soundstream" / "model"
CONFIGS = ROOT / "configs" / "tokenizers" / "soundstream"


def codec_config(size: str) -> dict:
    """The ``model.codec`` section of a SoundStream trainer config."""
    return yaml.safe_load((CONFIGS / f"{size}.yaml").read_text())["model"]["codec"]


def real_time_factors(codec: SoundStream, seconds: float) -> dict[str, float]:
    """Compute seconds per audio second of encode and decode (best of 3 runs)."""
    wav = torch.randn(1, 1, int(seconds * codec.sample_rate)) * 0.1
    times: dict[str, list[float]] = {"encode": [], "decode": []}
    with torch.inference_mode():
        codec.decode(codec.encode(wav[..., : codec.hop * 10]))  # warm-up
        for _ in range(3):
            start = time.perf_counter()
            codes = codec.encode(wav)
            times["encode"].append(time.perf_counter() - start)
            start = time.perf_counter()
            codec.decode(codes)
            times["decode"].append(time.perf_counter() - start)
    return {name: round(min(values) / seconds, 4) for name, values in times.items()}


def heldout_clips(folder: Path, seconds: float, count: int, sample_rate: int) -> torch.Tensor:
    """Up to ``count`` clips [C, 1, N] from the middle of the audio files under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if is_audio_name(p.name))
    if not files:
        raise SystemExit(f"no audio files under {folder}; build the demo with `make demo-data`")
    length = int(seconds * sample_rate)
    clips = []
    for path in files[:count]:
        wav = load_audio(path, sample_rate)
        if wav.numel() < length:
            continue
        start = (wav.numel() - length) // 2
        clips.append(wav[start : start + length])
    if not clips:
        raise SystemExit(f"no held-out file under {folder} is {seconds} s long")
    return torch.stack(clips)[:, None]


def codec_quality(codec: Codec, clips: torch.Tensor, levels: list[int]) -> dict[str, dict]:
    """{"q1": {"mel_distance", "si_snr"}, ...} of ``codec`` on clips [C, 1, N]."""
    with torch.inference_mode():
        scored = round_trip(codec, clips, levels)
    return {f"q{q}": _means(scored.mel_distance[q], scored.si_snr[q]) for q in levels}


def _means(mel: torch.Tensor, snr: torch.Tensor) -> dict[str, float]:
    """Rounded means over clips of per-clip mel distances and SI-SNRs ``[C]``."""
    return {"mel_distance": round(float(mel.mean()), 4), "si_snr": round(float(snr.mean()), 2)}


def opus_quality(clips: torch.Tensor, sample_rate: int, kbps: float) -> dict[str, float] | str:
    """Scores of an Opus round trip at ``kbps`` (ffmpeg + libopus), or why it was skipped."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "skipped: ffmpeg is not installed (apt-get install ffmpeg)"
    encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True)
    if "libopus" not in encoders.stdout:
        return "skipped: this ffmpeg has no libopus encoder"
    decoded = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, clip in enumerate(clips[:, 0].numpy()):
            src, opus, back = (Path(tmp) / f"{i}.{ext}" for ext in ("wav", "opus", "out.wav"))
            sf.write(src, clip, sample_rate, subtype="FLOAT")
            quiet = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y"]
            subprocess.run(
                [*quiet, "-i", src, "-c:a", "libopus", "-b:a", f"{kbps}k", opus], check=True
            )
            subprocess.run([*quiet, "-i", opus, "-ar", str(sample_rate), back], check=True)
            audio, _ = sf.read(back, dtype="float32")
            fitted = np.zeros(clip.shape[0], dtype=np.float32)
            fitted[: min(len(audio), len(fitted))] = audio[: len(fitted)]
            decoded.append(fitted)
    recon = torch.from_numpy(np.stack(decoded))[:, None]
    return _means(mel_distance(recon, clips, sample_rate), si_snr(recon, clips))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", default=str(DEFAULT_CODEC), help="saved codec directory")
    parser.add_argument("--heldout", default=str(ROOT / "data" / "demo" / "heldout"))
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--rtf-seconds", type=float, default=10.0)
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"])
    args = parser.parse_args()
    codec_dir, heldout = Path(args.codec), Path(args.heldout)
    if heldout.is_dir() and not (codec_dir / "config.json").is_file():
        sys.exit(
            f"codec benchmark: no saved codec at {codec_dir} (no config.json). Train one with "
            "`make demo`, `make tokenizers` or `make train-tokenizer TOKENIZER=soundstream` "
            "(they write runs/tokenizers/soundstream/model), or pass --codec DIR."
        )

    torch.manual_seed(0)
    report: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        },
        "rtf": {},
    }
    for size in args.sizes:
        codec = SoundStream(**codec_config(size)).eval()
        params = sum(p.numel() for p in codec.parameters())
        report["rtf"][size] = {"parameters": params, **real_time_factors(codec, args.rtf_seconds)}

    if heldout.is_dir():
        trained = load_codec(codec_dir)
        clips = heldout_clips(heldout, args.clip_seconds, args.clips, trained.sample_rate)
        levels = [q for q in args.levels if q <= trained.num_levels]
        quality: dict = {"clips": int(clips.shape[0]), "clip_seconds": args.clip_seconds}
        quality["trained"] = {"codec": str(codec_dir), **codec_quality(trained, clips, levels)}
        untrained = (
            SoundStream.from_config(trained.config).eval()
            if isinstance(trained, SoundStream)
            else None
        )
        if untrained is not None:
            quality["untrained"] = codec_quality(untrained, clips, levels)
        quality["opus_6kbps"] = opus_quality(clips, trained.sample_rate, 6)
        report["quality"] = quality
    else:
        report["quality"] = f"skipped: no held-out folder {heldout} (make demo-data)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
