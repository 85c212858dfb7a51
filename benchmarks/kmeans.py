"""k-means benchmark: the project's fit vs scikit-learn's KMeans and MiniBatchKMeans; feature RTF.

Prints one JSON object. All three k-means fits run on the same clustered synthetic
features (default 200k x 128, 1024 centroids), each timed on the wall clock and scored by
inertia (sum of squared distances to the nearest centroid, computed the same way for all).
The goal (issue 4): scikit-learn KMeans' inertia (within 1%) in no more than
MiniBatchKMeans' time.

The feature real-time factor is seconds of compute per second of 24 kHz audio of the
in-project semantic feature model (``configs/tokenizers/semantic/{small,paper}.yaml``
architectures, random weights: the cost does not depend on them), on CPU.

Usage: ``python benchmarks/kmeans.py [--points 200000] [--dim 128] [--k 1024] [--quick]``.
Wall times depend on the machine's load; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from musiclm.tokenizers.kmeans import fit_kmeans, inertia
from sklearn.cluster import KMeans, MiniBatchKMeans


def clustered_features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """float32 [n, dim]: a mixture of 2048 anisotropic Gaussians of uneven sizes and spreads.

    More true clusters than centroids, of different weights and scales, so that the
    fit has to trade them off (as with real SSL features) and seeding quality shows.
    """
    rng = np.random.default_rng(seed)
    groups = 2048
    centers = rng.normal(0.0, 1.0, size=(groups, dim)).astype(np.float32)
    labels = rng.choice(groups, size=n, p=rng.dirichlet(np.ones(groups)))
    spread = rng.uniform(0.5, 2.0, size=(groups, 1)).astype(np.float32)
    axes = rng.uniform(0.2, 1.0, size=(groups, dim)).astype(np.float32)
    noise = rng.normal(size=(n, dim)).astype(np.float32)
    return centers[labels] + noise * axes[labels] * spread[labels]


def timed(fit) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    centroids = fit()
    return np.asarray(centroids, dtype=np.float32), time.perf_counter() - start


def feature_rtf(size: str, seconds: float, repeats: int = 2) -> dict:
    """Real-time factor of the in-project feature model at config ``size`` on CPU.

    Random weights: the cost does not depend on their values. Only the blocks up to the
    feature layer run, as in a saved semantic tokenizer.
    """
    import torch
    import yaml
    from musiclm.tokenizers.semantic_model import SemanticFeatureModel, SemanticModelConfig

    path = Path(__file__).parents[1] / "configs/tokenizers/semantic" / f"{size}.yaml"
    config = SemanticModelConfig(**yaml.safe_load(path.read_text())["model"]["model"])
    model = SemanticFeatureModel(config).truncated()
    wav = torch.randn(1, int(seconds * model.sample_rate)) * 0.1
    with torch.inference_mode():
        model.features(wav)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model.features(wav)
        elapsed = (time.perf_counter() - start) / repeats
    return {
        "model": f"in-project semantic model, {size} config (blocks 1..{config.layer})",
        "audio_seconds": seconds,
        "compute_seconds": round(elapsed, 3),
        "real_time_factor": round(elapsed / seconds, 4),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="skip scikit-learn's full KMeans")
    args = parser.parse_args()

    x = clustered_features(args.points, args.dim, seed=args.seed)
    fits = {
        "project_fit_kmeans": lambda: fit_kmeans(x, args.k, seed=args.seed),
        "sklearn_minibatch_kmeans": lambda: (
            MiniBatchKMeans(args.k, random_state=args.seed, n_init=1, batch_size=4096)
            .fit(x)
            .cluster_centers_
        ),
    }
    if not args.quick:
        fits["sklearn_kmeans_lloyd_kmeanspp"] = lambda: (
            KMeans(args.k, init="k-means++", algorithm="lloyd", n_init=1, random_state=args.seed)
            .fit(x)
            .cluster_centers_
        )
    results = {}
    for name, fit in fits.items():
        centroids, seconds = timed(fit)
        results[name] = {"seconds": round(seconds, 2), "inertia": inertia(x, centroids)}
    report = {
        "features": {"points": args.points, "dim": args.dim, "k": args.k, "kind": "clustered"},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), **_platform()},
        "kmeans": results,
    }
    if "sklearn_kmeans_lloyd_kmeanspp" in results:
        ours = results["project_fit_kmeans"]
        ref = results["sklearn_kmeans_lloyd_kmeanspp"]
        report["goal"] = {
            "inertia_vs_sklearn_kmeans": round(ours["inertia"] / ref["inertia"], 4),
            "within_1_percent": ours["inertia"] <= 1.01 * ref["inertia"],
            "time_vs_minibatch": round(
                ours["seconds"] / results["sklearn_minibatch_kmeans"]["seconds"], 3
            ),
        }
    report["feature_extraction"] = [feature_rtf("small", 30.0), feature_rtf("paper", 10.0)]
    print(json.dumps(report, indent=2))


def _platform() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine()}


if __name__ == "__main__":
    main()
