"""Stage training throughput: tokens/s and FLOP utilization, at config sizes and at the paper's crops.

Prints one JSON object, from two suites (``--suites stages crops``, both by default):

- ``stages``: for each stage and size (model widths and crops of
  ``configs/stages/<size>.yaml`` composed with ``configs/stages/<stage>/<size>.yaml``; the
  paper width at a 1 s crop on CPU) it times a few optimizer steps of the stage module (bf16
  autocast on CUDA) and reports training tokens/s, the training FLOPs per token (PaLM's
  ``6 N + 12 L T d``, see :func:`train_flops_per_token`), the achieved FLOP/s and its ratio to
  the device's measured dense matmul peak (and to the spec-sheet peak on known GPUs). It
  also measures the data module alone (samples/s of ``train_dataloader`` with the config's
  workers) against the samples/s that training consumes (goal: loader >= 20 x training).
- ``crops`` (``paper_crops_at_peer_width``): the paper's training crops (10 s coarse, 3 s
  fine, 30 s semantic) at the width of the peer comparison (d=512, 6 layers, 8 heads,
  ff 2048, the paper configs' dropout 0.1 and buckets), batch 2, back to back in one run:
  ``dense`` (before: SDPA with a dense ``[1, H, T, T]`` mask, the math path), ``blocked``
  (after, float32, the same numerics), ``blocked_bf16`` (bf16 autocast) and
  ``blocked_bf16_checkpointed`` (plus activation checkpointing). Each row runs in a fresh
  process, so ``peak_rss_gb`` is that row's own peak resident memory; ``cpu_seconds_per_step``
  (all threads) is less disturbed by other load than the wall time, and every row records
  the 1-minute load average before and after. ``<stage>/blocked_vs_dense`` gives the max abs
  differences of hidden states, loss and gradients between the two attentions on the same
  weights and batch. ``--peer DIR`` adds ``coarse/audiolm-pytorch``.

Data: ``--data OUT`` (a tokenized dataset), or by default shards of uniform random tokens
in the contract with the paper's token spec (throughput does not depend on token values).

    python benchmarks/train.py                     # both suites
    python benchmarks/train.py --suites stages --sizes small --steps 5 --data runs/tokens
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train.py --suites crops --threads 2 --peer /tmp/peer

On a CPU shared with other jobs, run with ``OMP_WAIT_POLICY=PASSIVE``: with OpenMP's default
spin-waiting, every parallel op waits at its barrier for a thread the scheduler has taken
away. Measured here at a load average of 10 on 2 cores, one blocked attention layer
(forward + backward, T=2265) took 26.6 s wall with 2 spinning threads, 2.4 s with 2 passive
ones and 2.2 s with one thread; the dense reference 9.8, 7.9 and 5.9 s.

The peer. The figure in issue 16 (audiolm-pytorch 2.4.0's ``CoarseTransformer``, d=512,
6 layers, 8 heads, relative position bias, batch 2 x 10 s of random tokens, 2 torch
threads: 157 tokens/s, 28.7 s/step) is reproduced by ``--peer DIR`` (the ``coarse/
audiolm-pytorch`` row, :func:`peers.audiolm.time_training`) after installing the peer into
``DIR`` as ``benchmarks/peers/audiolm.py`` says: ``pip install --no-deps --target DIR
audiolm-pytorch==2.4.0`` and its pure-Python dependencies, with empty stand-ins for
``fairseq`` and ``wandb`` and ``get_encoded_dim`` patched to 768 so it constructs offline.
It is timed on 250 semantic + 2000 coarse tokens per row (2,254 with its start and end
tokens), with its default dropout (0, where ours is 0.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from musiclm.tokenizers.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    SHARD_DIR,
    TokenSpec,
    encode_sample,
    shard_name,
)
from musiclm.training.shard_data import CoarseData, FineData, SemanticData
from musiclm.training.stage_configs import load_stage_config
from musiclm.training.stages import CoarseStage, FineStage, SemanticStage, level_losses
from musiclm.training.transformer import DecoderTransformer
from peers import audiolm as peer

REPO = Path(__file__).resolve().parents[1]
STAGES = {
    "semantic": (SemanticStage, SemanticData),
    "coarse": (CoarseStage, CoarseData),
    "fine": (FineStage, FineData),
}
SPEC_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, no sparsity


def random_dataset(root: Path, spec: TokenSpec, shards: int, clips: int, seconds: float) -> Path:
    """Shards of uniform random tokens in the exact contract (for throughput only)."""
    rng = np.random.default_rng(0)
    frames = round(seconds * spec.semantic_rate)
    (root / SHARD_DIR).mkdir(parents=True)
    rows = []
    for s in range(shards):
        with wds.TarWriter(str(root / SHARD_DIR / shard_name(s))) as sink:
            for c in range(clips):
                key = f"s{s}-{c}"
                sink.write(
                    encode_sample(
                        key,
                        rng.integers(0, spec.semantic_vocab, frames),
                        rng.integers(
                            0, spec.acoustic_codebook_size, (spec.acoustic_levels, 2 * frames)
                        ),
                        rng.integers(0, spec.mulan_codebook_size, spec.mulan_levels),
                        rng.standard_normal(spec.mulan_dim),
                        "",
                        {"source": key, "bundle": "benchmark"},
                    )
                )
                rows.append({"key": key, "shard": s, "source": key})
    pq.write_table(pa.Table.from_pylist(rows), root / MANIFEST_FILE)
    info = {"fingerprint": "benchmark", "spec": spec.to_dict()}
    (root / DATASET_FILE).write_text(json.dumps(info))
    return root


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s on ``device`` (the practical peak for utilization)."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_token(model: DecoderTransformer, layout, seq_len: int, targets: int) -> float:
    """Training FLOPs per sequence token, PaLM's count (Chowdhery et al. 2022, appendix B):
    ``6 N + 12 L T d`` for N non-embedding block parameters, L layers, T tokens, width d
    (the attention matmuls over all T keys), plus the target-range head for ``targets`` of
    the T positions. Causal attention needs about half the attention term; the blocked
    kernel skips the keys after each block, the dense reference computes them all."""
    cfg = model.config
    blocks = sum(p.numel() for p in model.blocks.parameters())
    start, stop = layout.target_range(0)
    head = 6 * cfg.dim * (stop - start)
    return 6 * blocks + 12 * cfg.depth * seq_len * cfg.dim + head * targets / seq_len


def time_training(
    stage: str,
    model_args: dict,
    data,
    device: torch.device,
    steps: int,
    batch_size: int,
    bf16: bool | None = None,
    options: dict | None = None,
) -> dict:
    """Time ``steps`` optimizer steps (after one warm-up) of a stage module built from
    ``model_args`` (a config's ``model`` section) with transformer ``options`` replaced
    (``attention``, ``activation_checkpointing``). ``bf16``: autocast (default: on CUDA)."""
    module = STAGES[stage][0](**model_args)
    module._build(data.spec, data.fingerprint)
    if options:
        module.model = DecoderTransformer(dataclasses.replace(module.model.config, **options))
    module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = next(iter(data.train_dataloader()))
    tokens = batch["tokens"][:batch_size].to(device)
    levels = batch["levels"][:batch_size].to(device)
    bf16 = device.type == "cuda" if bf16 is None else bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            stats = level_losses(module.model, module.layout, tokens, levels)
            loss = stats["loss"].sum() / stats["count"].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu_start) / steps
    seq_len = tokens.shape[1] - 1
    targets = int((levels[:, 1:] >= 0).sum()) // tokens.shape[0]
    flops = train_flops_per_token(module.model, module.layout, seq_len, targets)
    tokens_per_s = tokens.shape[0] * seq_len / seconds
    return {
        "params_million": round(module.model.num_parameters() / 1e6, 2),
        "batch_size": int(tokens.shape[0]),
        "sequence_tokens": seq_len,
        "crop_seconds": data.hparams.crop_seconds,
        "step_seconds": round(seconds, 4),
        "cpu_seconds_per_step": round(cpu_seconds, 4),  # all threads; less disturbed by load
        "tokens_per_s": round(tokens_per_s, 1),
        "samples_per_s": round(tokens.shape[0] / seconds, 3),
        "flops_per_token": round(flops),
        "achieved_tflops": round(flops * tokens_per_s / 1e12, 4),
    }


def time_loader(data, batches: int) -> float:
    """Samples/s of the data module's training loader alone."""
    loader = iter(data.train_dataloader())
    next(loader)  # start the workers
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(loader)["keys"])
    return n / (time.perf_counter() - start)


# ----- the paper's crop lengths: before (dense attention) vs after, each row in its own process
CROPS = {"coarse": 10.0, "fine": 3.0, "semantic": 30.0}  # the paper's training crops, seconds
PEER_WIDTH = peer.WIDTH
VARIANTS = {  # name: (transformer options, bf16 autocast)
    "dense": ({"attention": "dense"}, False),  # before: SDPA with a dense [1, H, T, T] mask
    "blocked": ({}, False),  # after, float32: the same numerics
    "blocked_bf16": ({}, True),
    "blocked_bf16_checkpointed": ({"activation_checkpointing": True}, True),
}


def in_fresh_process(fn, *args) -> dict:
    """``fn(*args)`` (a dict) in a new process, with that process's peak RSS and the load."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn, *args) -> dict:
    load = os.getloadavg()[0]
    row = fn(*args)
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)
    row["load_1min_before_after"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return row


def crop_data(root: str, stage: str, batch: int):
    return STAGES[stage][1](
        root, crop_seconds=CROPS[stage], batch_size=batch, num_workers=0, val_fraction=0
    )


def crop_row(root: str, stage: str, variant: str, threads: int, steps: int, batch: int) -> dict:
    """One training row at the paper's crop for ``stage``, at the peer's width."""
    torch.set_num_threads(threads)
    options, bf16 = VARIANTS[variant]
    model_args = {**load_stage_config(stage, "paper")["model"], **PEER_WIDTH}
    data = crop_data(root, stage, batch)
    cpu = torch.device("cpu")
    row = time_training(stage, model_args, data, cpu, steps, batch, bf16, options)
    # the matmul peak of this process right after its steps, in the row's dtype (the load
    # changes during a run, so a peak measured once at the start can exceed a row's reach)
    peak = matmul_peak(cpu, torch.bfloat16 if bf16 else torch.float32)
    row["matmul_peak_tflops"] = round(peak / 1e12, 4)
    row["mfu_vs_matmul_peak"] = round(row["achieved_tflops"] * 1e12 / peak, 4)
    return {"variant": variant, **row}


def numerics_row(root: str, stage: str, threads: int, batch: int) -> dict:
    """Blocked vs dense attention on the same weights and batch (eval mode, float32): max abs
    differences of the final hidden states, the loss and every parameter gradient."""
    torch.set_num_threads(threads)
    data = crop_data(root, stage, batch)
    module = STAGES[stage][0](**{**load_stage_config(stage, "paper")["model"], **PEER_WIDTH})
    module._build(data.spec, data.fingerprint)
    blocked = module.model.eval()
    dense = DecoderTransformer(dataclasses.replace(blocked.config, attention="dense")).eval()
    dense.load_state_dict(blocked.state_dict())
    sample = next(iter(data.train_dataloader()))
    results = []
    for model in (blocked, dense):
        stats = level_losses(model, module.layout, sample["tokens"], sample["levels"])
        loss = stats["loss"].sum() / stats["count"].sum()
        loss.backward()
        with torch.no_grad():
            hidden = model.hidden(sample["tokens"])
        results.append((hidden, loss.detach(), [p.grad for p in model.parameters()]))
    (h, loss, grads), (h_ref, loss_ref, grads_ref) = results
    return {
        "max_abs_diff_hidden": float((h - h_ref).abs().max()),
        "loss": float(loss_ref),
        "abs_diff_loss": float((loss - loss_ref).abs()),
        "max_abs_diff_grad": max(
            float((g - r).abs().max()) for g, r in zip(grads, grads_ref, strict=True)
        ),
        "max_abs_grad": max(float(r.abs().max()) for r in grads_ref),
    }


def long_crops(root: str, args) -> dict:
    """Rows at the paper's crops, back to back: every variant, then the peer (coarse)."""
    rows = {}
    for stage in args.crop_stages:
        for variant in args.variants:
            row = in_fresh_process(crop_row, root, stage, variant, args.threads, args.crop_steps, 2)
            rows[f"{stage}/{variant}"] = row
            print(json.dumps({f"{stage}/{variant}": row}), flush=True, file=sys.stderr)
        if args.peer and stage == "coarse":
            width = PEER_WIDTH
            frames = round(CROPS["coarse"] * TokenSpec().semantic_rate)
            row = in_fresh_process(_peer_row, args.peer, width, frames, args)
            rows["coarse/audiolm-pytorch"] = row
            print(json.dumps({"coarse/audiolm-pytorch": row}), flush=True, file=sys.stderr)
        row = in_fresh_process(numerics_row, root, stage, args.threads, 2)
        rows[f"{stage}/blocked_vs_dense"] = row
        print(json.dumps({f"{stage}/blocked_vs_dense": row}), flush=True, file=sys.stderr)
    return rows


def _peer_row(path: str, width: dict, frames: int, args) -> dict:
    torch.set_num_threads(args.threads)
    return peer.time_training(path, width, 2, frames, args.crop_steps)


def stage_rows(root: str, args, device: torch.device, peak: float, spec_peak) -> dict:
    """Every stage at each config size (paper width at a 1 s crop on CPU), and the loader."""
    result = {"training": {}, "loader_vs_training": {}}
    for stage in args.stages:
        for size in args.sizes:
            cfg = load_stage_config(stage, size)["data"]
            crop = cfg["crop_seconds"]
            if size == "paper" and (args.paper_crop_seconds or device.type == "cpu"):
                crop = args.paper_crop_seconds or 1.0
            batch = args.batch_size or (cfg["batch_size"] if device.type == "cuda" else 2)
            data = STAGES[stage][1](
                root, crop_seconds=crop, batch_size=batch, num_workers=0, val_fraction=0
            )
            model_args = load_stage_config(stage, size)["model"]
            row = time_training(stage, model_args, data, device, args.steps, batch)
            row["mfu_vs_matmul_peak"] = round(row["achieved_tflops"] * 1e12 / peak, 4)
            if spec_peak:
                row["mfu_vs_spec_peak"] = round(row["achieved_tflops"] * 1e12 / spec_peak, 4)
            result["training"][f"{stage}/{size}"] = row
            print(json.dumps({f"{stage}/{size}": row}), flush=True, file=sys.stderr)
        cfg = load_stage_config(stage, "small")["data"]
        data = STAGES[stage][1](
            root,
            crop_seconds=cfg["crop_seconds"],
            batch_size=cfg["batch_size"],
            num_workers=cfg["num_workers"],
            val_fraction=0,
            epoch_samples=10**6,
        )
        loader = time_loader(data, args.loader_batches)
        trained = result["training"].get(f"{stage}/small", {}).get("samples_per_s")
        result["loader_vs_training"][stage] = {
            "loader_samples_per_s": round(loader, 1),
            "training_samples_per_s": trained,
            "ratio": trained and round(loader / trained, 1),
            "num_workers": cfg["num_workers"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a tokenized dataset (default: random-token shards)")
    parser.add_argument("--suites", nargs="+", default=["stages", "crops"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument(
        "--paper-crop-seconds",
        type=float,
        default=None,
        help="crop for the paper width (default: the config's on CUDA, 1 s on CPU)",
    )
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--crop-stages", nargs="+", default=list(CROPS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--crop-steps", type=int, default=2)
    parser.add_argument("--peer", help="a directory holding audiolm-pytorch (see peers/audiolm.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    spec_peak = next((v for k, v in SPEC_PEAK_BF16.items() if k in name), None)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or str(random_dataset(Path(tmp) / "tokens", TokenSpec(), 8, 12, 30.0))
        result = {
            "device": name,
            "torch_threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)"),
            "matmul_peak_tflops": round(peak / 1e12, 4),
            "spec_peak_tflops": spec_peak and spec_peak / 1e12,
            "data": args.data or "random tokens, paper token spec, 96 clips of 30 s in 8 shards",
            "load_1min_at_start": round(os.getloadavg()[0], 2),
        }
        if "stages" in args.suites:
            result.update(stage_rows(root, args, device, peak, spec_peak))
        if "crops" in args.suites:
            result["paper_crops_at_peer_width"] = long_crops(root, args)
        result["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
