"""Which codec to export from a SoundStream run: EMA vs live weights, each with its codebooks.

Scores three codecs of one trainer checkpoint on held-out clips (the clips of
``benchmarks/codec.py``: the middle ``--clip-seconds`` of the audio files under
``--heldout``), at 1, 4 and 12 RVQ levels: mel distance, SI-SNR, and the RVQ's relative
error on the encoder's own latents (``||z - q(z)||^2 / ||z||^2``):

- ``live``: the live encoder, codebooks and decoder;
- ``ema``: the EMA encoder and decoder with the EMA codec's own codebooks, fitted to the
  EMA encoder's latents during training (what ``export_component`` writes);
- ``ema_with_live_codebooks``: the EMA encoder and decoder with the live codebooks (what
  the trainer exported before its EMA codebooks followed the EMA encoder).

Usage: ``python benchmarks/codec_export.py [CHECKPOINT] [--heldout data/demo/heldout]
[--clip-seconds 5] [--clips 12]``; without CHECKPOINT, the newest checkpoint of the run that
``make tokenizers`` and ``make demo`` leave (``runs/tokenizers/soundstream``). Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from musiclm.tokenizers.soundstream import SoundStream
from musiclm.training.checkpoints import newest_checkpoint
from musiclm.training.soundstream_trainer import load_trained_codec

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 12)


def _codec_benchmark():
    """``benchmarks/codec.py`` as a module (its held-out clips and quality scores)."""
    spec = importlib.util.spec_from_file_location("codec_benchmark", ROOT / "benchmarks/codec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def rvq_error(codec: SoundStream, clips: torch.Tensor) -> dict[str, float]:
    """Relative squared error of the RVQ on the encoder's latents of clips [C, 1, N]."""
    latent = codec.embed(clips)
    codes = codec.quantizer.encode(latent)
    energy = latent.pow(2).sum()
    return {
        f"q{q}": round(
            float((latent - codec.quantizer.decode(codes[:, :q])).pow(2).sum() / energy), 4
        )
        for q in LEVELS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--heldout", type=Path, default=ROOT / "data" / "demo" / "heldout")
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--clips", type=int, default=12)
    args = parser.parse_args()
    run = ROOT / "runs" / "tokenizers" / "soundstream"
    args.checkpoint = args.checkpoint or newest_checkpoint(run)
    if args.checkpoint is None:
        parser.exit(
            2,
            f"codec_export: no SoundStream checkpoint under {run}; train one with "
            "`make train-tokenizer TOKENIZER=soundstream` or pass its .ckpt path\n",
        )
    torch.set_num_threads(1)
    bench = _codec_benchmark()
    live = load_trained_codec(args.checkpoint, ema=False)
    ema = load_trained_codec(args.checkpoint, ema=True)
    mixed = load_trained_codec(args.checkpoint, ema=True)
    mixed.quantizer.load_state_dict(live.quantizer.state_dict())
    clips = bench.heldout_clips(args.heldout, args.clip_seconds, args.clips, live.sample_rate)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    report = {
        "benchmark": "codec_export",
        "checkpoint": str(args.checkpoint),
        "global_step": state.get("global_step"),
        "clips": int(clips.shape[0]),
        "clip_seconds": args.clip_seconds,
    }
    for name, codec in (("live", live), ("ema", ema), ("ema_with_live_codebooks", mixed)):
        report[name] = {
            "quality": bench.codec_quality(codec, clips, list(LEVELS)),
            "rvq_relative_error": rvq_error(codec, clips),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
