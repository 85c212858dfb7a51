"""k-means with faiss: k-means++ seeding, Lloyd iterations, batched assignment, reservoir sampling.

Used for the semantic centroids (k-means of SSL features) and for MuLan's RVQ codebooks.
Shapes: features ``x`` are float32 ``[N, D]``; centroids are float32 ``[k, D]``; ids are
int64 ``[N]``.

Why not plain ``faiss.Kmeans``: its random initialization costs quality (a few percent of
inertia on clustered data). :func:`fit_kmeans` seeds with greedy k-means++ on a subsample
(vectorized: one matrix product per centroid), refines with Lloyd iterations on a larger
subsample, then runs a few Lloyd iterations on all points, each in faiss.

:class:`FeatureReservoir` keeps a fixed-size uniform sample of the rows of a stream of
feature batches, so a pipeline can fit centroids without holding the dataset in memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import faiss
import numpy as np

ASSIGN_BATCH = 65_536


def fit_kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 3,
    seed_points: int = 16_384,
    refine_points: int | None = None,
    refine_niter: int = 3,
    too_few: Literal["error", "shrink"] = "error",
    verbose: bool = False,
) -> np.ndarray:
    """Fit ``k`` centroids to the rows of ``x`` [N, D]; return float32 [k, D].

    1. greedy k-means++ seeding on ``seed_points`` random rows (at least ``k``);
    2. Lloyd iterations on growing random subsamples: ``refine_niter`` iterations on
       ``refine_points`` rows (default ``32 k``), then on twice as many, and so on while
       the subsample is smaller than ``x`` -- the early, large moves of the centroids cost
       a fraction of a full pass;
    3. ``niter`` Lloyd iterations on all rows (faiss).

    The result depends only on ``x``, ``k`` and the parameters (same ``seed``, same
    centroids up to the floating-point summation order of the faiss threads).

    With fewer rows than ``k``: ``too_few="error"`` raises ``ValueError``; ``"shrink"``
    warns and returns ``N`` centroids (callers that can live with a smaller codebook,
    e.g. an RVQ fitted on a tiny demo set, opt in). See :func:`usable_k`.
    """
    x = _as_features(x)
    n = x.shape[0]
    k = usable_k(n, k, too_few=too_few)
    rng = np.random.default_rng(seed)
    centroids = kmeans_plusplus(_subsample(x, max(seed_points, k), rng), k, rng=rng)
    size = max(refine_points or 32 * k, k)
    while refine_niter > 0 and size < n:
        centroids = _lloyd(_subsample(x, size, rng), centroids, refine_niter, seed, verbose)
        size *= 2
    if niter > 0:
        centroids = _lloyd(x, centroids, niter, seed, verbose)
    return centroids


def usable_k(n: int, k: int, *, too_few: Literal["error", "shrink"] = "error") -> int:
    """The number of centroids that ``n`` rows can support: ``k``, or ``n`` when ``n < k``.

    ``too_few="error"`` raises instead of shrinking; ``"shrink"`` warns (never silently).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 1:
        raise ValueError("cannot fit k-means on zero feature rows; feed at least one batch")
    if n >= k:
        return k
    message = (
        f"only {n} feature rows for {k} centroids; add more audio, lower k, "
        f"or pass too_few='shrink' to fit {n} centroids instead"
    )
    if too_few == "error":
        raise ValueError(message)
    if too_few != "shrink":
        raise ValueError(f"too_few must be 'error' or 'shrink', got {too_few!r}")
    warnings.warn(f"k-means: fitting {n} centroids instead of {k}: {message}", stacklevel=3)
    return n


def kmeans_plusplus(
    x: np.ndarray, k: int, *, rng: np.random.Generator, local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding: ``k`` rows of ``x`` [N, D] (N >= k) as float32 [k, D].

    Each new centroid is the best (lowest total squared distance) of ``local_trials``
    candidates drawn with probability proportional to the squared distance to the nearest
    centroid so far (default ``2 + ln k``, as in Arthur & Vassilvitskii and scikit-learn).
    """
    x = _as_features(x)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means++ needs at least k={k} rows, got {n}")
    trials = local_trials or 2 + int(np.log(k))
    sq_norms = np.einsum("nd,nd->n", x, x)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = _sq_dist_to(x, sq_norms, chosen[:1])[:, 0]
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # every row coincides with a centroid: pick unused rows
            unused = np.setdiff1d(np.arange(n), chosen[:i])
            chosen[i:] = rng.choice(unused, size=k - i, replace=False)
            break
        cumulative = np.cumsum(closest, dtype=np.float64)
        picks = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
        picks = np.minimum(picks, n - 1)
        candidate = np.minimum(closest[:, None], _sq_dist_to(x, sq_norms, picks))
        best = int(np.argmin(candidate.sum(axis=0)))
        chosen[i] = picks[best]
        closest = candidate[:, best]
    return x[chosen].copy()


def assign(x: np.ndarray, centroids: np.ndarray, batch_size: int = ASSIGN_BATCH) -> np.ndarray:
    """Nearest centroid (L2) of each row of ``x`` [N, D]: int64 [N], via a faiss flat index."""
    return nearest(x, centroids, batch_size)[1]


def inertia(x: np.ndarray, centroids: np.ndarray, batch_size: int = ASSIGN_BATCH) -> float:
    """Sum over rows of ``x`` [N, D] of the squared distance to the nearest centroid."""
    return float(nearest(x, centroids, batch_size)[0].sum(dtype=np.float64))


def nearest(
    x: np.ndarray, centroids: np.ndarray, batch_size: int = ASSIGN_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances float32 [N], ids int64 [N]) of the nearest centroid of each row."""
    x = _as_features(x)
    centroids = _as_features(centroids)
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(
            f"features have {x.shape[1]} dims but the centroids have {centroids.shape[1]}"
        )
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    dist = np.empty(x.shape[0], dtype=np.float32)
    ids = np.empty(x.shape[0], dtype=np.int64)
    for lo in range(0, x.shape[0], batch_size):
        d, i = index.search(x[lo : lo + batch_size], 1)
        dist[lo : lo + batch_size], ids[lo : lo + batch_size] = d[:, 0], i[:, 0]
    return np.maximum(dist, 0.0), ids


class FeatureReservoir:
    """A uniform random sample of at most ``capacity`` rows from a stream of [n, dim] batches.

    Reservoir sampling (Algorithm R, vectorized per batch): after any number of
    :meth:`add` calls, every row seen so far is in :meth:`sample` with the same
    probability ``capacity / seen``. Memory grows with the rows held (storage doubles as
    it fills) up to ``capacity * dim`` float32, whatever the stream's length; a pickled
    reservoir (a Beam accumulator on its way to the merge) holds only its ``len(self)``
    rows. Two reservoirs of disjoint streams combine with :meth:`merge` (for a Beam
    ``CombineFn``).
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0) -> None:
        if capacity < 1 or dim < 1:
            raise ValueError(f"capacity and dim must be >= 1, got {capacity}, {dim}")
        self.capacity, self.dim = capacity, dim
        self.rng = np.random.default_rng(seed)
        self.rows = np.empty((0, dim), dtype=np.float32)  # the first len(self) rows are kept
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "rows": self.rows[: len(self)]}

    def _reserve(self, rows: int) -> None:
        """Grow the storage to hold ``rows`` rows (at least doubling, at most capacity)."""
        if rows > len(self.rows):
            size = min(self.capacity, max(rows, 2 * len(self.rows)))
            grown = np.empty((size, self.dim), dtype=np.float32)
            grown[: len(self)] = self.rows[: len(self)]
            self.rows = grown

    def add(self, batch: np.ndarray) -> None:
        """Offer the rows of ``batch`` [n, dim] (any float dtype; torch tensors work too)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"expected a batch of shape [n, {self.dim}], got {batch.shape}")
        free = max(0, self.capacity - self.seen)
        head = batch[:free]
        self._reserve(self.seen + len(head))
        self.rows[self.seen : self.seen + len(head)] = head
        self.seen += len(head)
        rest = batch[len(head) :]
        if not len(rest):
            return
        index = self.seen + np.arange(len(rest))  # 0-based position of each row in the stream
        slot = self.rng.integers(0, index + 1)
        keep = slot < self.capacity
        # Later rows overwrite earlier ones in the same slot, as one-by-one sampling would.
        slot, rest = slot[keep][::-1], rest[keep][::-1]
        slot, first = np.unique(slot, return_index=True)
        self.rows[slot] = rest[first]
        self.seen += len(index)

    def merge(self, other: FeatureReservoir) -> FeatureReservoir:
        """A reservoir of the union of both streams (uniform over all rows seen by either)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge reservoirs of dims {self.dim} and {other.dim}")
        merged = FeatureReservoir(self.capacity, self.dim, seed=int(self.rng.integers(2**31)))
        total = len(self) + len(other)
        merged.seen = self.seen + other.seen
        if total <= self.capacity and merged.seen == total:
            merged.rows = np.concatenate([self.rows[: len(self)], other.rows[: len(other)]])
            return merged
        m = min(self.capacity, total)
        # How many of the m rows come from self's stream: hypergeometric over the streams,
        # then a uniform subset of each reservoir (itself a uniform sample of its stream).
        take = int(merged.rng.hypergeometric(self.seen, other.seen, m))
        take = min(max(take, m - len(other)), len(self))
        mine = merged.rng.choice(len(self), size=take, replace=False)
        theirs = merged.rng.choice(len(other), size=m - take, replace=False)
        merged.rows = np.concatenate([self.rows[mine], other.rows[theirs]])
        return merged

    def sample(self) -> np.ndarray:
        """The kept rows, float32 [min(seen, capacity), dim] (a copy)."""
        return self.rows[: len(self)].copy()


def fit_kmeans_stream(
    batches: Iterable[np.ndarray],
    k: int,
    *,
    capacity: int,
    seed: int = 0,
    **fit_options,
) -> np.ndarray:
    """Fit ``k`` centroids [k, D] on a reservoir sample of ``capacity`` rows of ``batches``.

    ``batches`` yields float arrays [n_i, D]; only the reservoir is kept in memory.
    ``fit_options`` go to :func:`fit_kmeans`.
    """
    reservoir: FeatureReservoir | None = None
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float32)
        if reservoir is None:
            reservoir = FeatureReservoir(capacity, batch.shape[-1], seed=seed)
        reservoir.add(batch.reshape(-1, batch.shape[-1]))
    if reservoir is None:
        raise ValueError("cannot fit k-means: the feature stream yielded no batches")
    return fit_kmeans(reservoir.sample(), k, seed=seed, **fit_options)


def _lloyd(x: np.ndarray, init: np.ndarray, niter: int, seed: int, verbose: bool) -> np.ndarray:
    """``niter`` faiss Lloyd iterations on all rows of ``x`` starting from ``init`` [k, D]."""
    k, dim = init.shape
    km = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=seed,
        verbose=verbose,
        max_points_per_centroid=max(1, -(-x.shape[0] // k)),  # never subsample inside faiss
        min_points_per_centroid=1,
    )
    km.train(x, init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _sq_dist_to(x: np.ndarray, sq_norms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Squared distances [N, len(rows)] from every row of ``x`` to ``x[rows]``, clipped at 0."""
    d = sq_norms[:, None] - 2.0 * (x @ x[rows].T) + sq_norms[rows][None, :]
    return np.maximum(d, 0.0, out=d)


def _subsample(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``size`` random rows of ``x`` (all of them, in order, if there are fewer)."""
    if x.shape[0] <= size:
        return x
    return x[np.sort(rng.choice(x.shape[0], size=size, replace=False))]


def _as_features(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, D] array (faiss's input format)."""
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x
