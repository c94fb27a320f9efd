"""Place recognition: a growing index of global frame descriptors, searched online.

Every processed frame adds one L2-normalised descriptor (``Prediction.descriptors``)
to a :class:`DescriptorIndex`. Each new window queries it with a few of its
frames. Three properties matter for loop closure on long, high-frame-rate
videos, and each is handled here rather than left to the caller:

* **Exclusion before top-k.** Entries that are recent in time
  (``|t_q - t_e| < exclude_seconds``) or in travelled distance
  (``|d_q - d_e| < exclude_distance``) are removed from the score vector
  *before* the best entries are selected. Taking the top-k first and filtering
  afterwards lets a burst of near-identical recent frames (high frame rate,
  slow motion) fill every slot and silently hide a real revisit.
* **Non-maximum suppression.** One revisit matches a run of adjacent frames.
  Per query, greedy NMS keeps the best entry of each run (radius in source
  frames) so the ``top_k`` slots go to *distinct* places. The candidate pool is
  sized ``top_k * (2 radius + 1)``, which provably yields the same survivors
  as running NMS over the full score vector (every survivor suppresses at most
  ``2 radius`` others). :func:`suppress_pairs` then merges (query, match)
  pairs from different query frames that describe the same revisit.
* **Sub-quadratic cost.** ``backend="exact"`` is a blocked brute-force inner
  product (numpy on the CPU, torch on a CUDA device when asked), linear per query.
  ``backend="ivf"`` is an inverted-file index over spherical k-means centroids
  (``~sqrt(N)`` lists, ``n_probe`` searched), whose per-query cost grows like
  ``sqrt(N)``, so a whole run stays sub-quadratic. ``backend="auto"`` is exact
  until ``ivf_min_size`` entries, then IVF. Centroids are trained on exactly
  the first ``T`` entries when the index first reaches ``T`` (``T`` doubling),
  so the index content never depends on how insertions were batched: a
  rebuilt index (resume) equals the original.

Nothing here reads the clock or a global random state; results depend only on
the inputs and ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from da3stream.errors import ConfigError, ShapeError, check_shape

__all__ = ["Candidates", "DescriptorIndex", "exclusion_mask", "greedy_nms_1d", "suppress_pairs", "spherical_kmeans"]

_BACKENDS = ("exact", "ivf", "auto")


@dataclass(frozen=True)
class Candidates:
    """Search results, flattened over queries, sorted by query then descending similarity."""

    query: np.ndarray
    """(K,) int64 position of the query in the query batch."""
    entry: np.ndarray
    """(K,) int64 index entry (insertion order)."""
    similarity: np.ndarray
    """(K,) float32 cosine similarity."""

    def __len__(self) -> int:
        return int(self.query.shape[0])


def exclusion_mask(
    query_times: np.ndarray,
    query_distances: np.ndarray,
    entry_times: np.ndarray,
    entry_distances: np.ndarray,
    *,
    exclude_seconds: float,
    exclude_distance: float,
) -> np.ndarray:
    """(Q, N) bool, True where an entry is too recent to be a loop candidate for a query.

    An entry is excluded when it is within ``exclude_seconds`` in time, or, when
    ``exclude_distance > 0``, within ``exclude_distance`` in travelled distance.
    """
    qt = np.asarray(query_times, dtype=np.float64)[:, None]
    et = np.asarray(entry_times, dtype=np.float64)[None, :]
    mask = np.abs(qt - et) < exclude_seconds
    if exclude_distance > 0:
        qd = np.asarray(query_distances, dtype=np.float64)[:, None]
        ed = np.asarray(entry_distances, dtype=np.float64)[None, :]
        mask |= np.abs(qd - ed) < exclude_distance
    return mask


def greedy_nms_1d(keys: np.ndarray, order: np.ndarray, radius: int, limit: int) -> np.ndarray:
    """Greedy 1-D non-maximum suppression.

    Args:
        keys: (M,) int64 positions (e.g. source frame indices) of the items.
        order: (M,) item indices sorted best first.
        radius: an item is dropped when a kept item lies within ``radius`` of it.
        limit: stop after this many survivors.

    Returns:
        (K,) int64 surviving item indices, best first.
    """
    kept: list[int] = []
    kept_keys: list[int] = []
    for idx in order:
        k = int(keys[idx])
        if radius > 0 and any(abs(k - kk) <= radius for kk in kept_keys):
            continue
        kept.append(int(idx))
        kept_keys.append(k)
        if len(kept) >= limit:
            break
    return np.asarray(kept, dtype=np.int64)


def suppress_pairs(
    query_frames: np.ndarray, match_frames: np.ndarray, scores: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression of (query frame, match frame) pairs.

    A pair is suppressed by a better-scoring kept pair whose query frame and
    match frame both lie within ``radius`` source frames. Ties are broken by
    query frame then match frame, so the result is deterministic.

    Args:
        query_frames: (K,) int64 source index of each pair's query frame.
        match_frames: (K,) int64 source index of each pair's matched frame.
        scores: (K,) similarity, higher is better.
        radius: suppression radius in source frames.

    Returns:
        ``(keep (J,) int64 indices of surviving pairs best first,
        support (J,) int64 number of pairs each survivor absorbed, itself included)``.
    """
    q = np.asarray(query_frames, dtype=np.int64)
    m = np.asarray(match_frames, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    check_shape("suppress_pairs(query_frames)", q, ("K",))
    check_shape("suppress_pairs(match_frames)", m, q.shape)
    check_shape("suppress_pairs(scores)", sc, q.shape)
    order = np.lexsort((m, q, -sc))
    keep: list[int] = []
    support: list[int] = []
    for idx in order:
        hit = -1
        for slot, kidx in enumerate(keep):
            if abs(q[idx] - q[kidx]) <= radius and abs(m[idx] - m[kidx]) <= radius:
                hit = slot
                break
        if hit >= 0:
            support[hit] += 1
        else:
            keep.append(int(idx))
            support.append(1)
    return np.asarray(keep, dtype=np.int64), np.asarray(support, dtype=np.int64)


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


class DescriptorIndex:
    """A growing descriptor index with per-entry time, travelled distance and source index.

    Args:
        dim: descriptor dimension D.
        backend: ``"exact"``, ``"ivf"`` or ``"auto"`` (exact below ``ivf_min_size`` entries).
        device: torch device of the exact search (``"cpu"``, ``"cuda"``, ``"auto"``).
        ivf_min_size: entries before the IVF index is trained (and, for ``auto``, used).
        ivf_lists_per_sqrt: number of IVF lists is ``round(ivf_lists_per_sqrt * sqrt(T))``.
        ivf_probe: IVF lists searched per query.
        kmeans_iters: Lloyd iterations when training IVF centroids.
        ivf_train_max: centroids are trained on at most this many entries (an even stride).
        block: entries scored per block by the exact search (bounds peak memory).
        seed: seed of the centroid training.
    """

    def __init__(
        self,
        dim: int,
        *,
        backend: str = "auto",
        device: str = "cpu",
        ivf_min_size: int = 20000,
        ivf_lists_per_sqrt: float = 1.0,
        ivf_probe: int = 16,
        kmeans_iters: int = 8,
        ivf_train_max: int = 32768,
        block: int = 65536,
        seed: int = 0,
    ) -> None:
        if backend not in _BACKENDS:
            raise ConfigError(f"loop.index_backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        if dim < 1:
            raise ConfigError(f"DescriptorIndex: descriptor dimension must be >= 1, got {dim}")
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        if device not in ("cpu",) and not str(device).startswith("cuda"):
            raise ConfigError(f"loop.index_device must be cpu, cuda, cuda:N or auto, got {device!r}")
        self.dim = int(dim)
        self.backend = backend
        self.device = str(device)
        self.ivf_min_size = int(ivf_min_size)
        self.ivf_lists_per_sqrt = float(ivf_lists_per_sqrt)
        self.ivf_probe = int(ivf_probe)
        self.kmeans_iters = int(kmeans_iters)
        self.ivf_train_max = int(ivf_train_max)
        self.block = int(block)
        self.seed = int(seed)
        self._n = 0
        self._desc = np.zeros((0, self.dim), dtype=np.float32)
        self._desc_t = None  # torch tensor on a CUDA device, when one is used
        self._times = np.zeros(0, dtype=np.float64)
        self._dists = np.zeros(0, dtype=np.float64)
        self._frames = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros(0, dtype=np.int64)
        self._centroids: np.ndarray | None = None
        self._assign = np.zeros(0, dtype=np.int64)
        self._lists: list[list[int]] = []
        self._list_arrays: dict[int, np.ndarray] = {}
        self._trained_at = 0

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        return self._n

    @property
    def times(self) -> np.ndarray:
        """(N,) float64 timestamps of the entries (read-only view)."""
        return self._view(self._times)

    @property
    def distances(self) -> np.ndarray:
        """(N,) float64 travelled distance at each entry (read-only view)."""
        return self._view(self._dists)

    @property
    def frames(self) -> np.ndarray:
        """(N,) int64 source frame index of each entry (read-only view)."""
        return self._view(self._frames)

    @property
    def rows(self) -> np.ndarray:
        """(N,) int64 caller-defined row id of each entry, e.g. the store row (read-only view)."""
        return self._view(self._rows)

    @property
    def uses_ivf(self) -> bool:
        """True when searches go through the IVF lists."""
        if self.backend == "exact" or self._centroids is None:
            return False
        return self.backend == "ivf" or self._n >= self.ivf_min_size

    def _view(self, a: np.ndarray) -> np.ndarray:
        v = a[: self._n].view()
        v.setflags(write=False)
        return v

    def add(
        self,
        descriptors: np.ndarray,
        timestamps: np.ndarray,
        distances: np.ndarray,
        frames: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        """Append entries.

        Args:
            descriptors: (n, D) float L2-normalised descriptors (renormalised here).
            timestamps: (n,) float seconds.
            distances: (n,) float travelled distance at each frame.
            frames: (n,) int source frame index.
            rows: (n,) int caller row id (returned by lookups).
        """
        d = np.asarray(descriptors, dtype=np.float32)
        check_shape("DescriptorIndex.add(descriptors)", d, ("n", self.dim), "f")
        n = d.shape[0]
        for name, arr in (("timestamps", timestamps), ("distances", distances), ("frames", frames), ("rows", rows)):
            check_shape(f"DescriptorIndex.add({name})", np.asarray(arr), (n,))
        if n == 0:
            return
        if not np.all(np.isfinite(d)):
            raise ShapeError("DescriptorIndex.add(descriptors): contains NaN or inf")
        norms = np.linalg.norm(d, axis=1, keepdims=True)
        d = d / np.maximum(norms, np.finfo(np.float32).tiny)
        self._desc = _grow(self._desc, self._n, d)
        self._times = _grow(self._times, self._n, np.asarray(timestamps, dtype=np.float64))
        self._dists = _grow(self._dists, self._n, np.asarray(distances, dtype=np.float64))
        self._frames = _grow(self._frames, self._n, np.asarray(frames, dtype=np.int64))
        self._rows = _grow(self._rows, self._n, np.asarray(rows, dtype=np.int64))
        start = self._n
        self._n += n
        self._desc_t = None
        if self.backend != "exact":
            self._update_ivf(start)

    # --------------------------------------------------------------------- IVF
    def _next_training_size(self) -> int:
        return self.ivf_min_size if self._trained_at == 0 else 2 * self._trained_at

    def _update_ivf(self, start: int) -> None:
        # Train on exactly the first T entries whenever the size first reaches T,
        # so batching of insertions never changes the index.
        pos = start
        while True:
            target = self._next_training_size()
            if self._n < target:
                break
            self._train(target)
            pos = target
        if self._centroids is not None and pos < self._n:
            self._assign_range(pos, self._n)

    def _train(self, size: int) -> None:
        k = max(1, min(size, int(round(self.ivf_lists_per_sqrt * math.sqrt(size)))))
        stride = max(1, -(-size // max(self.ivf_train_max, k)))
        sample = self._desc[:size:stride]
        self._centroids = spherical_kmeans(sample, k, iters=self.kmeans_iters, seed=self.seed + size)
        self._trained_at = size
        self._lists = [[] for _ in range(k)]
        self._list_arrays = {}
        self._assign = np.zeros(0, dtype=np.int64)
        self._assign_range(0, size)

    def _assign_range(self, a: int, b: int) -> None:
        sims = self._desc[a:b] @ self._centroids.T
        assign = np.argmax(sims, axis=1).astype(np.int64)
        self._assign = np.concatenate([self._assign[:a], assign])
        for pos, lst in zip(range(a, b), assign):
            self._lists[int(lst)].append(pos)
            self._list_arrays.pop(int(lst), None)

    def _list_members(self, lst: int) -> np.ndarray:
        arr = self._list_arrays.get(lst)
        if arr is None:
            arr = np.asarray(self._lists[lst], dtype=np.int64)
            self._list_arrays[lst] = arr
        return arr

    # ------------------------------------------------------------------ search
    def _scores_exact(self, queries: np.ndarray) -> np.ndarray:
        # (block, D) @ (D, Q): the row-major entries stream through memory once.
        if self.device == "cpu":
            out = [(self._desc[a : min(a + self.block, self._n)] @ queries.T).T for a in range(0, self._n, self.block)]
        else:
            import torch

            if self._desc_t is None:
                self._desc_t = torch.from_numpy(self._desc[: self._n]).to(self.device)
            q = torch.from_numpy(queries).to(self.device)
            out = [(self._desc_t[a : a + self.block] @ q.T).T.cpu().numpy() for a in range(0, self._n, self.block)]
        return np.concatenate(out, axis=1) if out else np.zeros((queries.shape[0], 0), np.float32)

    def search(
        self,
        queries: np.ndarray,
        query_times: np.ndarray,
        query_distances: np.ndarray,
        *,
        top_k: int,
        min_similarity: float,
        exclude_seconds: float,
        exclude_distance: float,
        nms_radius: int,
    ) -> Candidates:
        """Best distinct non-recent entries per query.

        Args:
            queries: (Q, D) float descriptors.
            query_times: (Q,) float seconds of the query frames.
            query_distances: (Q,) float travelled distance at the query frames.
            top_k: at most this many results per query (after NMS).
            min_similarity: drop entries with cosine similarity below this.
            exclude_seconds, exclude_distance: see :func:`exclusion_mask`; applied
                before the top-k selection.
            nms_radius: per-query NMS radius in source frames (0 disables).

        Returns:
            :class:`Candidates`.
        """
        q = np.asarray(queries, dtype=np.float32)
        check_shape("DescriptorIndex.search(queries)", q, ("Q", self.dim), "f")
        nq = q.shape[0]
        check_shape("DescriptorIndex.search(query_times)", np.asarray(query_times), (nq,))
        check_shape("DescriptorIndex.search(query_distances)", np.asarray(query_distances), (nq,))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        empty = Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        if self._n == 0 or nq == 0 or top_k < 1:
            return empty
        pool = top_k * (2 * max(nms_radius, 0) + 1)
        out_q, out_e, out_s = [], [], []
        if self.uses_ivf:
            probe = min(self.ivf_probe, self._centroids.shape[0])
            csim = q @ self._centroids.T
            lists = np.argsort(-csim, axis=1, kind="stable")[:, :probe]
        else:
            scores_all = self._scores_exact(q)
        for qi in range(nq):
            if self.uses_ivf:
                ent = np.sort(np.concatenate([self._list_members(int(li)) for li in lists[qi]]))
                sc = self._desc[ent] @ q[qi]
            else:
                ent = np.arange(self._n, dtype=np.int64)
                sc = scores_all[qi]
            excl = exclusion_mask(
                query_times[qi : qi + 1],
                query_distances[qi : qi + 1],
                self._times[ent],
                self._dists[ent],
                exclude_seconds=exclude_seconds,
                exclude_distance=exclude_distance,
            )[0]
            ok = (~excl) & (sc >= min_similarity)
            ent, sc = ent[ok], sc[ok]
            if ent.size == 0:
                continue
            if ent.size > pool:
                part = np.argpartition(-sc, pool - 1)[:pool]
                ent, sc = ent[part], sc[part]
            order = np.lexsort((ent, -sc))
            keep = greedy_nms_1d(self._frames[ent], order, max(nms_radius, 0), top_k)
            out_q.append(np.full(keep.size, qi, dtype=np.int64))
            out_e.append(ent[keep])
            out_s.append(sc[keep].astype(np.float32))
        if not out_q:
            return empty
        return Candidates(np.concatenate(out_q), np.concatenate(out_e), np.concatenate(out_s))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _grow(buf: np.ndarray, n: int, new: np.ndarray) -> np.ndarray:
    """Return a buffer holding ``buf[:n]`` followed by ``new``; capacity doubles (amortised O(1))."""
    need = n + new.shape[0]
    if need > buf.shape[0]:
        cap = max(need, 2 * buf.shape[0], 64)
        grown = np.zeros((cap,) + buf.shape[1:], dtype=buf.dtype)
        grown[:n] = buf[:n]
        buf = grown
    buf[n:need] = new
    return buf
