"""Stage training throughput: tokens/s and FLOP utilization, and loader vs training speed.

Prints one JSON object. For each stage and size (``configs/stages/<stage>/<size>.yaml``
model widths and crops) it times a few optimizer steps of the stage module (bf16 autocast
on CUDA) and reports training tokens/s, the estimated training FLOPs per token
(``6 N + 6 L T d`` for N non-embedding parameters, L layers, T tokens, width d, plus the
target-range head), the achieved FLOP/s and its ratio to the device's measured dense
matmul peak (and to the spec-sheet peak on known GPUs). It also measures the data module
alone (samples/s of ``train_dataloader`` with the config's workers) against the samples/s
that training consumes (goal: loader >= 20 x training).

Data: ``--data OUT`` (a tokenized dataset), or by default shards of uniform random tokens
in the contract with the paper's token spec (throughput does not depend on token values).

    python benchmarks/train.py                     # small + paper, every stage
    python benchmarks/train.py --sizes small --steps 5 --data runs/tokens
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
import yaml
from musiclm.tokenizers.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    SHARD_DIR,
    TokenSpec,
    encode_sample,
    shard_name,
)
from musiclm.training.shard_data import CoarseData, FineData, SemanticData
from musiclm.training.stages import CoarseStage, FineStage, SemanticStage, level_losses

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


def config(stage: str, size: str) -> dict:
    return yaml.safe_load((REPO / f"configs/stages/{stage}/{size}.yaml").read_text())


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


def train_flops_per_token(module, seq_len: int, targets_per_seq: int) -> float:
    """Training FLOPs per sequence token: 6 N + 6 L T d, plus the target-range head."""
    cfg = module.model.config
    blocks = sum(p.numel() for p in module.model.blocks.parameters())
    start, stop = module.layout.target_range(0)
    head = 6 * cfg.dim * (stop - start)
    return 6 * blocks + 6 * cfg.depth * seq_len * cfg.dim + head * targets_per_seq / seq_len


def time_training(stage, size, data, device, steps, batch_size) -> dict:
    model_args = config(stage, size)["model"]
    module = STAGES[stage][0](**model_args)
    module._build(data.spec, data.fingerprint)
    module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = next(iter(data.train_dataloader()))
    tokens = batch["tokens"][:batch_size].to(device)
    levels = batch["levels"][:batch_size].to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

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
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    seq_len = tokens.shape[1] - 1
    targets = int((levels[:, 1:] >= 0).sum()) // tokens.shape[0]
    flops = train_flops_per_token(module, seq_len, targets)
    tokens_per_s = tokens.shape[0] * seq_len / seconds
    return {
        "params_million": round(module.model.num_parameters() / 1e6, 2),
        "batch_size": int(tokens.shape[0]),
        "sequence_tokens": seq_len,
        "crop_seconds": data.hparams.crop_seconds,
        "step_seconds": round(seconds, 4),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a tokenized dataset (default: random-token shards)")
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
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    spec_peak = next((v for k, v in SPEC_PEAK_BF16.items() if k in name), None)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or str(random_dataset(Path(tmp) / "tokens", TokenSpec(), 8, 12, 30.0))
        result = {
            "device": name,
            "torch_threads": torch.get_num_threads(),
            "matmul_peak_tflops": round(peak / 1e12, 4),
            "spec_peak_tflops": spec_peak and spec_peak / 1e12,
            "data": args.data or "random tokens, paper token spec, 96 clips of 30 s in 8 shards",
            "training": {},
            "loader_vs_training": {},
        }
        for stage in args.stages:
            for size in args.sizes:
                cfg = config(stage, size)["data"]
                crop = cfg["crop_seconds"]
                if size == "paper" and (args.paper_crop_seconds or device.type == "cpu"):
                    crop = args.paper_crop_seconds or 1.0
                batch = args.batch_size or (cfg["batch_size"] if device.type == "cuda" else 2)
                data = STAGES[stage][1](
                    root, crop_seconds=crop, batch_size=batch, num_workers=0, val_fraction=0
                )
                row = time_training(stage, size, data, device, args.steps, batch)
                row["mfu_vs_matmul_peak"] = round(row["achieved_tflops"] * 1e12 / peak, 4)
                if spec_peak:
                    row["mfu_vs_spec_peak"] = round(row["achieved_tflops"] * 1e12 / spec_peak, 4)
                result["training"][f"{stage}/{size}"] = row
                print(json.dumps({f"{stage}/{size}": row}), flush=True, file=sys.stderr)
            cfg = config(stage, "small")["data"]
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
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
