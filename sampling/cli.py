"""``musiclm-sample``: text -> music with a tokenizer bundle and three trained stages.

::

    musiclm-sample --text "a slow Bach chorale played on a church organ" --seconds 10 \\
        --bundle runs/bundle --runs runs --out runs/samples/organ.wav

Stage checkpoints are the newest ``last.ckpt`` under ``RUNS/<stage>/`` (what
``make train-stage`` writes), or the files given by ``--semantic-ckpt`` etc. Several
``--text`` options generate a batch at once (``out_0.wav``, ``out_1.wav``, ...). Each output
is a 24 kHz wav, a spectrogram PNG and a JSON of the settings and every token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import soundfile as sf
import torch
import torchaudio
from musiclm.sampling.generate import SamplingSettings
from musiclm.sampling.sampler import Generation, Sampler, SamplerError, find_checkpoint
from musiclm.tokenizers.audio import AudioError, load_audio
from musiclm.tokenizers.bundle import BundleError
from musiclm.training.stage_registry import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musiclm-sample", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--text", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of new audio")
    parser.add_argument("--out", default="sample.wav", help="output wav (png/json beside it)")
    parser.add_argument("--bundle", default="runs/bundle", help="tokenizer bundle folder")
    parser.add_argument("--runs", default="runs", help="folder with <stage>/ training runs")
    for stage in STAGES:
        parser.add_argument(f"--{stage}-ckpt", help=f"{stage} stage checkpoint (default: newest)")
    parser.add_argument("--seed", type=int, default=0, help="row r of the batch uses seed + r")
    names = tuple(name.upper() for name in STAGES)
    paper = " ".join(str(s.paper_temperature) for s in STAGES.values())
    parser.add_argument(
        "--temperature",
        type=float,
        nargs=len(STAGES),
        default=[s.paper_temperature for s in STAGES.values()],
        metavar=names,
        help=f"per-stage temperature (paper: {paper})",
    )
    parser.add_argument(
        "--top-k", type=int, nargs=len(STAGES), default=[0] * len(STAGES), metavar=names,
        help="per-stage top-k (0 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--top-p", type=float, nargs=len(STAGES), default=[1.0] * len(STAGES), metavar=names,
        help="per-stage nucleus mass (1 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--guidance",
        type=float,
        default=3.0,
        help="classifier-free guidance scale of the MuLan-conditioned stages (1 = off)",
    )
    parser.add_argument("--candidates", type=int, default=1, help="keep best of N by MuLan")
    parser.add_argument("--prompt-audio", help="audio file to continue (tokenized by the bundle)")
    parser.add_argument(
        "--prefix-fraction",
        type=float,
        default=0.5,
        help="share of each window repeated from the previous one (paper: 15 of 30 s)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 is fastest for tiny models)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def stage_settings(args: argparse.Namespace) -> dict[str, SamplingSettings]:
    """Per-stage :class:`SamplingSettings` from the command line."""
    out = {}
    for i, (name, stage) in enumerate(STAGES.items()):
        out[name] = SamplingSettings(
            temperature=args.temperature[i],
            top_k=args.top_k[i] or None,
            top_p=args.top_p[i] if args.top_p[i] < 1 else None,
            guidance=args.guidance if stage.guided else 1.0,
        )
    return out


def output_paths(out: str | Path, count: int) -> list[Path]:
    """``out`` for one prompt, else ``out_0``, ``out_1``, ... (same folder and suffix)."""
    out = Path(out).with_suffix(".wav")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}.wav") for i in range(count)]


def write_spectrogram(audio: torch.Tensor, sample_rate: int, path: Path, title: str) -> None:
    """Log-mel spectrogram PNG of ``audio [N]``."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=2048, hop_length=480, n_mels=128)
    with torch.inference_mode():
        db = 10 * torch.log10(mel(audio.float()) + 1e-10)
    fig, ax = plt.subplots(figsize=(10, 4))
    seconds = audio.numel() / sample_rate
    ax.imshow(
        db.numpy(), origin="lower", aspect="auto", extent=(0, seconds, 0, 128), cmap="magma",
        vmin=float(db.max()) - 80,
    )  # fmt: skip
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel bin")
    ax.set_title(title[:100])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    generation: Generation, prompts: list[str], paths: list[Path], record: dict[str, Any]
) -> None:
    """Write wav, PNG and JSON for every prompt of ``generation``."""
    for i, (prompt, path) in enumerate(zip(prompts, paths, strict=True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = generation.audio[i].clamp(-1, 1)
        sf.write(path, audio.numpy(), generation.sample_rate, subtype="PCM_16")
        write_spectrogram(audio, generation.sample_rate, path.with_suffix(".png"), prompt)
        entry = {
            **record,
            "text": prompt,
            "seed": record["seed"] + i * record["candidates"],
            "prompt_seconds": generation.prompt_seconds,
            "tokens": {
                "mulan": generation.mulan[i].tolist(),
                "semantic": generation.semantic[i].tolist(),
                "acoustic": generation.acoustic[i].tolist(),
            },
        }
        if generation.scores is not None:
            entry["candidate_scores"] = generation.scores[i].tolist()
            entry["chosen_candidate"] = int(generation.chosen[i])
        path.with_suffix(".json").write_text(json.dumps(entry))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        prompts = [t.strip() for t in args.text]
        if any(not p for p in prompts):
            raise SamplerError(
                "a --text prompt is empty; describe the music, e.g. --text 'calm piano'"
            )
        checkpoints = {
            s: Path(getattr(args, f"{s}_ckpt") or find_checkpoint(args.runs, s)) for s in STAGES
        }
        started = time.perf_counter()
        sampler = Sampler.from_paths(
            args.bundle, checkpoints, device=args.device, prefix_fraction=args.prefix_fraction
        )
        sampler.frames_for(args.seconds)  # a duration out of reach fails before any work
        prompt_audio = None
        if args.prompt_audio:
            prompt_audio = load_audio(args.prompt_audio, sampler.spec.sample_rate)
        settings = stage_settings(args)
        loaded = time.perf_counter()
        generation = sampler.generate(
            prompts,
            args.seconds,
            settings,
            seed=args.seed,
            candidates=args.candidates,
            prompt_audio=prompt_audio,
            progress=not args.no_progress,
        )
    except (SamplerError, BundleError, AudioError, ValueError) as err:
        sys.exit(f"musiclm-sample: {err}")
    done = time.perf_counter()
    record = {
        "seconds": args.seconds,
        "seed": args.seed,
        "candidates": args.candidates,
        "prompt_audio": args.prompt_audio,
        "prefix_fraction": args.prefix_fraction,
        "settings": {s: dataclasses.asdict(v) for s, v in settings.items()},
        "bundle": str(args.bundle),
        "bundle_fingerprint": sampler.bundle.fingerprint,
        "checkpoints": {s: str(p) for s, p in checkpoints.items()},
        "windows_semantic_frames": {
            s: {"length": w.length, "prefix": w.prefix} for s, w in sampler.windows.items()
        },
        "load_seconds": round(loaded - started, 3),
        "generate_seconds": round(done - loaded, 3),
    }
    paths = output_paths(args.out, len(prompts))
    write_outputs(generation, prompts, paths, record)
    for path in paths:
        print(f"wrote {path} (+ {path.with_suffix('.png').name}, {path.with_suffix('.json').name})")


if __name__ == "__main__":
    main()
