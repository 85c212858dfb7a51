"""k-means: quality against scikit-learn, assignment, too few points, reservoir sampling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from musiclm.tokenizers.kmeans import (
    FeatureReservoir,
    assign,
    fit_kmeans,
    fit_kmeans_stream,
    inertia,
    kmeans_plusplus,
    usable_k,
)
from sklearn.cluster import KMeans


def blobs(n: int, dim: int, groups: int, seed: int = 0) -> np.ndarray:
    """float32 [n, dim] from ``groups`` Gaussians of different spreads and sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(groups, dim))
    labels = rng.choice(groups, size=n, p=rng.dirichlet(np.full(groups, 2.0)))
    spread = rng.uniform(0.5, 1.5, size=(groups, 1))
    return (centers[labels] + rng.normal(size=(n, dim)) * spread[labels]).astype(np.float32)


def test_fit_matches_sklearn_inertia_within_one_percent():
    # Both are local searches; compare the mean over three seeds of each.
    x = blobs(20_000, 32, groups=200)
    ours = [fit_kmeans(x, 64, seed=s) for s in range(3)]
    ref = [KMeans(64, n_init=1, random_state=s).fit(x).inertia_ for s in range(3)]
    assert all(c.shape == (64, 32) and c.dtype == np.float32 for c in ours)
    assert np.mean([inertia(x, c) for c in ours]) <= 1.01 * np.mean(ref)


def test_kmeans_plusplus_beats_random_rows():
    x = blobs(5_000, 16, groups=40)
    rng = np.random.default_rng(0)
    seeded = kmeans_plusplus(x, 40, rng=rng)
    random_rows = x[rng.choice(len(x), 40, replace=False)]
    assert inertia(x, seeded) < 0.8 * inertia(x, random_rows)


def test_fit_is_deterministic_for_a_seed():
    x = blobs(3_000, 8, groups=10)
    a, b = fit_kmeans(x, 16, seed=3), fit_kmeans(x, 16, seed=3)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_assign_returns_nearest_centroid_in_batches():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1_000, 8)).astype(np.float32)
    c = rng.normal(size=(30, 8)).astype(np.float32)
    ids = assign(x, c, batch_size=77)
    expected = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    assert ids.dtype == np.int64 and ids.shape == (1_000,)
    np.testing.assert_array_equal(ids, expected)


def test_assign_rejects_dimension_mismatch():
    with pytest.raises(ValueError, match="8 dims but the centroids have 4"):
        assign(np.zeros((3, 8), np.float32), np.zeros((2, 4), np.float32))


def test_too_few_points_errors_or_shrinks_with_warning():
    x = blobs(50, 4, groups=5)
    with pytest.raises(ValueError, match="only 50 feature rows for 64 centroids"):
        fit_kmeans(x, 64)
    with pytest.warns(UserWarning, match="fitting 50 centroids instead of 64"):
        c = fit_kmeans(x, 64, too_few="shrink")
    assert c.shape == (50, 4)
    assert usable_k(100, 64) == 64


def test_duplicate_rows_still_give_k_centroids():
    x = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)
    c = fit_kmeans(x, 6, seed=0)
    assert c.shape == (6, 4) and np.isfinite(c).all()
    assert inertia(x, c) < 1e-3  # every row sits on a centroid


def test_reservoir_is_uniform_over_the_stream():
    # Stream the numbers 0..9999 in uneven batches; each kept value should be equally likely.
    counts = np.zeros(10_000)
    for seed in range(200):
        res = FeatureReservoir(capacity=500, dim=1, seed=seed)
        values = np.arange(10_000, dtype=np.float32)[:, None]
        for lo, hi in ((0, 300), (300, 350), (350, 6000), (6000, 10_000)):
            res.add(values[lo:hi])
        kept = res.sample()[:, 0].astype(int)
        assert len(set(kept)) == 500 and res.seen == 10_000
        counts[kept] += 1
    # Expected 10 hits per value; the first and last quarters must look alike.
    early, late = counts[:2500].mean(), counts[7500:].mean()
    assert abs(early - 10) < 1.0 and abs(late - 10) < 1.0


def test_reservoir_merge_keeps_streams_in_proportion():
    a, b = FeatureReservoir(400, 1, seed=0), FeatureReservoir(400, 1, seed=1)
    a.add(np.zeros((3_000, 1), np.float32))
    b.add(np.ones((1_000, 1), np.float32))
    merged = a.merge(b)
    assert len(merged) == 400 and merged.seen == 4_000
    assert 0.18 < merged.sample().mean() < 0.32  # a quarter of the rows came from b


def test_a_pickled_reservoir_holds_only_its_rows_and_goes_on_sampling():
    """Beam pickles each partial accumulator on its way to the merge: the bytes must follow
    the rows held, not the capacity (10k x 1024 float32 would be 41 MB)."""
    rng = np.random.default_rng(0)
    sizes = {}
    for rows in (0, 3, 300, 3_000):
        res = FeatureReservoir(capacity=10_000, dim=1024, seed=0)
        res.add(rng.normal(size=(rows, 1024)))
        sizes[rows] = len(pickle.dumps(res))
    row_bytes = 1024 * 4
    assert sizes[3] < sizes[0] + 3 * row_bytes + 1024
    assert abs((sizes[3_000] - sizes[300]) - 2_700 * row_bytes) < 1024  # proportional
    full = FeatureReservoir(capacity=1_000, dim=8, seed=0)
    full.add(rng.normal(size=(5_000, 8)))
    assert len(pickle.dumps(full)) < 1_000 * 8 * 4 + 2048
    # a round trip keeps the sample, the count and the random state
    batches = [rng.normal(size=(n, 8)) for n in (200, 700, 3_000)]
    a = FeatureReservoir(capacity=1_000, dim=8, seed=3)
    a.add(batches[0])
    b = pickle.loads(pickle.dumps(a))
    for batch in batches[1:]:
        a.add(batch)
        b.add(batch)
    assert b.seen == a.seen == 3_900
    np.testing.assert_array_equal(a.sample(), b.sample())
    merged = pickle.loads(pickle.dumps(a)).merge(pickle.loads(pickle.dumps(full)))
    assert len(merged) == 1_000 and merged.seen == 8_900


def test_fit_from_a_stream_of_batches_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(0.0, 10.0, size=(12, 8)).astype(np.float32)
    x = centers[rng.integers(0, 12, 6_000)] + rng.normal(size=(6_000, 8)).astype(np.float32)
    c = fit_kmeans_stream((x[i : i + 500] for i in range(0, 6_000, 500)), 12, capacity=3_000)
    assert c.shape == (12, 8)
    assert inertia(x, c) <= 1.02 * inertia(x, centers)
