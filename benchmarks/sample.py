"""Sampling speed: KV cache vs recomputation, and seconds of audio per wall-second per stage.

    python benchmarks/sample.py [--sizes small paper] [--paper-max-tokens 300] [--full-no-cache]
    python benchmarks/sample.py --threads 2 --peer /tmp/peer    # with the peer's generate

Prints one JSON object:

- ``kv_cache``: generating a 1,500-token sequence (prompt + targets, batch 1) with the stage
  model of the small coarse config (``configs/stages/small.yaml`` composed with
  ``configs/stages/coarse/small.yaml``): tokens/s with the cache (a real run of the
  sampler's :func:`generate`) and without it. Without the cache each step re-runs the
  transformer over the whole prefix; its cost is measured at evenly spaced prefix lengths
  and integrated over the 1,500 steps (``--full-no-cache`` runs it whole).
- ``stages``: per stage and width (``small``/``paper`` configs: sizes and training crops),
  audio seconds generated per wall-second for one window of the stage's training crop,
  batch 1 with the sampler's defaults (paper temperatures, guidance 3 on the MuLan-
  conditioned stages, i.e. 2 rows). Paper width on CPU is measured over the first
  ``--paper-max-tokens`` tokens of the window (``tokens_measured`` says how many).

- ``peer_size_coarse``: cached generation of ``--peer-tokens`` (default 2000: 10 s) coarse
  tokens after a 10 s prompt, batch 1, no guidance, at the peer's size (d=512, 6 layers,
  8 heads, ff 2048): ``dense`` (before) and ``blocked`` attention on the same weights and
  seed (``same_tokens_as_dense``), and with ``--peer DIR`` audiolm-pytorch 2.4.0's
  ``CoarseTransformerWrapper.generate`` with its KV cache on the same 250 semantic frames
  (installed as ``benchmarks/peers/audiolm.py`` says; not a dependency).

Models are untrained (speed does not depend on the weights); the token spec is the paper's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch
from musiclm.sampling.generate import PAPER_TEMPERATURES, RowRandom, SamplingSettings, generate
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.layout import TokenLayout
from musiclm.training.stage_configs import load_stage_config
from musiclm.training.transformer import DecoderTransformer, TransformerConfig
from peers import audiolm as peer

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEYS = ("dim", "depth", "heads", "ff_dim", "position", "num_buckets", "max_distance")


def stage_config(stage: str, size: str) -> tuple[dict, float]:
    """Transformer sizes and training crop seconds of the composed stage config (size file +
    ``configs/stages/<stage>/<size>.yaml``)."""
    config = load_stage_config(stage, size)
    model = {k: config["model"][k] for k in MODEL_KEYS if k in config["model"]}
    return model, float(config["data"]["crop_seconds"])


def build(stage: str, size: str, spec: TokenSpec) -> tuple[DecoderTransformer, TokenLayout, float]:
    sizes, crop = stage_config(stage, size)
    layout = TokenLayout(spec, stage)
    config = TransformerConfig(vocab_size=layout.vocab_size, dropout=0.0, **sizes)
    return DecoderTransformer(config).eval(), layout, crop


def stage_prompt(layout: TokenLayout, frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Conditional prompt ``[1, P]`` for a window of ``frames`` semantic frames (+ null prompt)."""
    spec = layout.spec
    mulan = torch.randint(0, spec.mulan_codebook_size, (1, spec.mulan_levels))
    semantic = torch.randint(0, spec.semantic_vocab, (1, frames))
    if layout.stage == "semantic":
        return layout.prompt(mulan=mulan), layout.prompt(semantic=semantic[:, :0])
    if layout.stage == "coarse":
        return layout.prompt(mulan=mulan, semantic=semantic), layout.prompt(semantic=semantic)
    coarse = torch.randint(
        0, spec.acoustic_codebook_size, (1, spec.coarse_levels, frames * spec.acoustic_per_semantic)
    )
    return layout.prompt(coarse=coarse), None


@torch.inference_mode()
def kv_cache_benchmark(total: int, points: int, full_no_cache: bool) -> dict:
    spec = TokenSpec()
    model, layout, _ = build("coarse", "small", spec)
    prompt, _ = stage_prompt(layout, 10)
    n = total - prompt.shape[1]
    settings = SamplingSettings(temperature=PAPER_TEMPERATURES["coarse"])
    start = time.perf_counter()
    generate(model, layout, prompt, n, settings, RowRandom([0]))
    cached = time.perf_counter() - start
    result = {
        "model": "configs/stages/small.yaml + configs/stages/coarse/small.yaml",
        "sequence_tokens": total,
        "generated_tokens": n,
        "with_cache_tokens_per_s": n / cached,
        "with_cache_seconds": cached,
    }
    if full_no_cache:
        start = time.perf_counter()
        generate(model, layout, prompt, n, settings, RowRandom([0]), use_cache=False)
        uncached = time.perf_counter() - start
        result["no_cache_method"] = "full run"
    else:
        lengths = torch.linspace(prompt.shape[1], total - 1, points).round().long().tolist()
        costs = []
        for length in lengths:
            tokens = torch.randint(0, layout.vocab_size, (1, length))
            model.head(model.hidden(tokens)[:, -1])  # warm-up at this shape
            start = time.perf_counter()
            model.head(model.hidden(tokens)[:, -1])
            costs.append(time.perf_counter() - start)
        # trapezoid over the measured per-step costs, scaled to the n steps
        mean_cost = sum((a + b) / 2 for a, b in itertools.pairwise(costs)) / (len(costs) - 1)
        uncached = mean_cost * n
        result["no_cache_method"] = (
            f"per-step cost measured at prefix lengths {lengths}, integrated over {n} steps"
        )
        result["no_cache_step_seconds"] = dict(zip(map(str, lengths), costs, strict=True))
    result["no_cache_tokens_per_s"] = n / uncached
    result["no_cache_seconds"] = uncached
    result["speedup"] = uncached / cached
    return result


@torch.inference_mode()
def peer_size_benchmark(n: int, peer_path: str | None) -> dict:
    """Cached generation of ``n`` coarse tokens after a 10 s prompt (MuLan + 250 semantic
    frames), batch 1, no guidance, at the peer's size: dense (before) vs blocked attention on
    the same weights and seed, and the peer's own ``generate`` when ``peer_path`` is given."""
    spec = TokenSpec()
    layout = TokenLayout(spec, "coarse")
    frames = 250
    prompt, _ = stage_prompt(layout, frames)
    settings = SamplingSettings(temperature=PAPER_TEMPERATURES["coarse"])
    rows, tokens = {}, {}
    for attention in ("dense", "blocked"):
        torch.manual_seed(0)
        config = TransformerConfig(
            vocab_size=layout.vocab_size, dropout=0.0, max_distance=256, attention=attention,
            **peer.WIDTH,
        )  # fmt: skip
        model = DecoderTransformer(config).eval()
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens[attention] = generate(model, layout, prompt, n, settings, RowRandom([0]))
        seconds = time.perf_counter() - start
        rows[attention] = {
            "prompt_tokens": prompt.shape[1],
            "generated_tokens": n,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(time.process_time() - cpu_start, 2),
            "tokens_per_s": round(n / seconds, 1),
        }
    rows["blocked"]["same_tokens_as_dense"] = bool(torch.equal(tokens["dense"], tokens["blocked"]))
    if peer_path:
        rows["audiolm-pytorch"] = peer.time_generation(peer_path, peer.WIDTH, frames, n // 4)
    return rows


@torch.inference_mode()
def stage_benchmark(stage: str, size: str, max_tokens: int | None) -> dict:
    spec = TokenSpec()
    model, layout, crop = build(stage, size, spec)
    frames = round(crop * spec.semantic_rate)
    prompt, null = stage_prompt(layout, frames)
    window_tokens = layout.target_frames_to_tokens(frames)
    n = window_tokens if max_tokens is None else min(window_tokens, max_tokens)
    guidance = 3.0 if null is not None else 1.0
    settings = SamplingSettings(temperature=PAPER_TEMPERATURES[stage], guidance=guidance)
    start = time.perf_counter()
    generate(model, layout, prompt, n, settings, RowRandom([0]), null_prompt=null)
    seconds = time.perf_counter() - start
    tokens_per_audio_second = window_tokens / crop
    return {
        "window_seconds": crop,
        "tokens_per_audio_second": tokens_per_audio_second,
        "tokens_measured": n,
        "rows": 2 if guidance != 1 else 1,
        "tokens_per_s": n / seconds,
        "audio_seconds_per_wall_second": n / seconds / tokens_per_audio_second,
        "parameters_millions": model.num_parameters() / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"])
    parser.add_argument("--sequence", type=int, default=1500)
    parser.add_argument("--points", type=int, default=7, help="no-cache prefix lengths timed")
    parser.add_argument("--full-no-cache", action="store_true")
    parser.add_argument("--paper-max-tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peer-tokens", type=int, default=2000, help="0 skips the peer-size rows")
    parser.add_argument("--peer", help="a directory holding audiolm-pytorch (peers/audiolm.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)"),
        "machine": platform.processor() or platform.machine(),
        "load_1min_at_start": round(os.getloadavg()[0], 2),
        "kv_cache": kv_cache_benchmark(args.sequence, args.points, args.full_no_cache),
        "stages": {},
    }
    if args.peer_tokens:
        report["peer_size_coarse"] = peer_size_benchmark(args.peer_tokens, args.peer)
    for size in args.sizes:
        limit = args.paper_max_tokens if size == "paper" else None
        report["stages"][size] = {
            stage: stage_benchmark(stage, size, limit) for stage in ("semantic", "coarse", "fine")
        }
    report["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
