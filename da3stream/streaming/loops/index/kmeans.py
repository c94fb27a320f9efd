"""Spherical k-means: the IVF centroids of the place index (numpy only, seeded, deterministic)."""

from __future__ import annotations

import numpy as np

from da3stream.errors import ConfigError

__all__ = ["spherical_kmeans"]


def spherical_kmeans(x: np.ndarray, k: int, *, iters: int, seed: int) -> np.ndarray:
    """Centroids (k, D) float32, unit norm, of unit vectors ``x`` (N, D) under cosine similarity.

    Deterministic given ``seed``: k-means++-style seeding on a seeded generator,
    then Lloyd iterations; an empty cluster is re-seeded with the point that
    is worst served by its centroid.
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"spherical_kmeans: need 1 <= k <= N, got k={k}, N={n}")
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    centroids = [x[first]]
    best = x @ x[first]
    for _ in range(1, k):
        # Farthest-first with a seeded tie-break: cheap and spreads the seeds.
        dist = 1.0 - best
        p = np.maximum(dist, 0.0).astype(np.float64)
        total = p.sum()
        nxt = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        centroids.append(x[nxt])
        best = np.maximum(best, x @ x[nxt])
    c = np.stack(centroids)
    for _ in range(iters):
        sim = x @ c.T
        assign = np.argmax(sim, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            served = sim[np.arange(n), assign]
            worst = np.argsort(served, kind="stable")[: empty.size]
            sums[empty] = x[worst]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        c = (sums / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)
    return c
