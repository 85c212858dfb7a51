"""Sampling speed: KV cache vs recomputation, and seconds of audio per wall-second per stage.

    python benchmarks/sample.py [--sizes small paper] [--paper-max-tokens 300] [--full-no-cache]

Prints one JSON object:

- ``kv_cache``: generating a 1,500-token sequence (prompt + targets, batch 1) with the
  stage model of ``configs/stages/coarse/small.yaml``: tokens/s with the cache (a real
  run of the sampler's :func:`generate`) and without it. Without the cache each step
  re-runs the transformer over the whole prefix; its cost is measured at evenly spaced
  prefix lengths and integrated over the 1,500 steps (``--full-no-cache`` runs it whole).
- ``stages``: per stage and width (``small``/``paper`` configs: sizes and training crops),
  audio seconds generated per wall-second for one window of the stage's training crop,
  batch 1 with the sampler's defaults (paper temperatures, guidance 3 on the MuLan-
  conditioned stages, i.e. 2 rows). Paper width on CPU is measured over the first
  ``--paper-max-tokens`` tokens of the window (``tokens_measured`` says how many).

Models are untrained (speed does not depend on the weights); the token spec is the paper's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch
import yaml
from musiclm.sampling.generate import PAPER_TEMPERATURES, RowRandom, SamplingSettings, generate
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.layout import TokenLayout
from musiclm.training.transformer import DecoderTransformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEYS = ("dim", "depth", "heads", "ff_dim", "position", "num_buckets", "max_distance")


def stage_config(stage: str, size: str) -> tuple[dict, float]:
    """Transformer sizes and training crop seconds from ``configs/stages/<stage>/<size>.yaml``."""
    config = yaml.safe_load((ROOT / "configs" / "stages" / stage / f"{size}.yaml").read_text())
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
        "model": "configs/stages/coarse/small.yaml",
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "kv_cache": kv_cache_benchmark(args.sequence, args.points, args.full_no_cache),
        "stages": {},
    }
    for size in args.sizes:
        limit = args.paper_max_tokens if size == "paper" else None
        report["stages"][size] = {
            stage: stage_benchmark(stage, size, limit) for stage in ("semantic", "coarse", "fine")
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
