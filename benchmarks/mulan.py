"""MuLan benchmark: CPU embedding throughput, RVQ codebook fit time, quantization error per level.

Prints one JSON object::

    python benchmarks/mulan.py [--size small|tiny|paper] [--model DIR] [--clips 4]
        [--points 16384] [--codebook-size 1024] [--embeddings emb.npy]

* ``embedding``: windows/s and clips/s of ``audio_embedding`` on 30 s clips (21 windows of
  10 s each) on CPU, for the audio tower of the ``--size`` config (untrained weights:
  speed does not depend on them) or a saved MuLan (``--model``).
* ``rvq_fit``: seconds of :func:`fit_codebooks` for ``--points`` embeddings, 12 levels.
* ``quantization``: per level, the mean squared error of the first ``q`` levels'
  reconstruction relative to the embeddings' mean squared norm, on held-out embeddings.
  Embeddings are ``--embeddings`` (``[N, 128]`` .npy, e.g. stacked ``mulan_emb`` of a
  tokenized dataset) or, by default, synthetic unit vectors on a 16-d manifold.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.mulan import MuLanTokenizer, fit_codebooks
from musiclm.tokenizers.mulan_audio import AudioTower, AudioTowerConfig
from musiclm.tokenizers.mulan_text import TextTower, TextTowerConfig
from musiclm.tokenizers.rvq import rvq_decode, rvq_encode

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "tokenizers" / "mulan"


def audio_config(size: str) -> AudioTowerConfig:
    """The audio tower config of ``configs/tokenizers/mulan/<size>.yaml``."""
    config = yaml.safe_load((CONFIGS / f"{size}.yaml").read_text())
    return AudioTowerConfig(**config["model"]["audio"])


def synthetic_embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors ``[n, dim]`` on a curved 16-d manifold plus slight noise.

    Real embeddings fill a low-dimensional part of the space, which is what lets later
    RVQ levels keep reducing the error; isotropic noise in 128-d would not.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 16))
    hidden = np.tanh(latent @ rng.standard_normal((16, 64)) / 2)
    x = hidden @ rng.standard_normal((64, dim)) + 0.05 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embedding_throughput(model: MuLanTokenizer, clips: int, repeats: int) -> dict:
    wav = 0.1 * torch.randn(clips, 30 * model.spec.sample_rate)
    model.audio_embedding(wav[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.audio_embedding(wav)
    seconds = (time.perf_counter() - start) / repeats
    windows = clips * model.num_windows(wav.shape[1])
    return {
        "clip_seconds": 30,
        "clips_per_call": clips,
        "windows_per_call": windows,
        "seconds_per_call": round(seconds, 4),
        "windows_per_s": round(windows / seconds, 2),
        "clips_per_s": round(clips / seconds, 3),
        "audio_tower_parameters": sum(p.numel() for p in model.audio_tower.parameters()),
    }


def quantization_error(books: np.ndarray, x: np.ndarray) -> list[float]:
    """Relative MSE after 1..L levels on ``x`` [N, D] (the tokenizers' RVQ, codebooks [L, K, D])."""
    codes = rvq_encode(x, books)
    energy = float(np.square(x, dtype=np.float64).sum())
    return [
        round(
            float(np.square(x - rvq_decode(codes[:, :level], books), dtype=np.float64).sum())
            / energy,
            5,
        )
        for level in range(1, books.shape[0] + 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--model", type=Path, help="a saved MuLan directory instead of --size")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--points", type=int, default=8192)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--embeddings", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = TokenSpec()

    if args.model:
        model = MuLanTokenizer.load(args.model)
    else:
        text = TextTower(TextTowerConfig(kind="small", width=32, layers=1, heads=2, ff=64))
        model = MuLanTokenizer(AudioTower(audio_config(args.size)), text, spec).eval()
    throughput = embedding_throughput(model, args.clips, args.repeats)

    if args.embeddings:
        emb = np.load(args.embeddings).astype(np.float32)
    else:
        emb = synthetic_embeddings(args.points + 2048, spec.mulan_dim)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(emb))
    held_out, fit = emb[order[:2048]], emb[order[2048:]]
    start = time.perf_counter()
    books = fit_codebooks(fit, spec.mulan_levels, args.codebook_size)
    fit_seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                "benchmark": "mulan",
                "device": "cpu",
                "torch_threads": args.threads,
                "machine": platform.processor() or platform.machine(),
                "audio_tower": str(args.model) if args.model else f"configs {args.size}",
                "embedding": throughput,
                "rvq_fit": {
                    "points": len(fit),
                    "levels": spec.mulan_levels,
                    "codebook_size": int(books.shape[1]),
                    "seconds": round(fit_seconds, 3),
                    "embeddings": str(args.embeddings) if args.embeddings else "synthetic",
                },
                "quantization": {
                    "held_out_points": len(held_out),
                    "relative_mse_after_levels": quantization_error(books, held_out),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
