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
  ``2 radius`` others). :func:`.selection.suppress_pairs` then merges (query, match)
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
the inputs and ``seed``. The index imports only numpy and the errors module
(its storage, selection and k-means modules are numpy-only too).

Why not faiss (measured 2026-12-04, faiss-cpu 1.15.1, 2 threads on a 2-core machine
shared with other jobs, so absolute times are several times the quiet figures in the
README): ``python -m da3stream.bench retrieval --repeats 10``, fastest search of 4
queries (exclusion, pool, NMS) at 1k / 10k / 100k entries, bytes per entry, recall@1
against our exact search:

=================  ====================  ==========  ==================
index              query ms (min)        B / entry   recall@1 vs exact
=================  ====================  ==========  ==================
ours exact bf16    0.30 / 17.1 / 190     544         (reference)
ours IVF bf16      0.57 / 2.2 / 43.8     552         1.0 / 0.975 / 0.975
faiss flat f32     0.19 / 0.78 / 25.5    1056        1.0 / 0.975 / 1.0
faiss flat bf16    0.19 / 0.68 / 60.0    544         1.0 / 1.0 / 1.0
faiss IVF f32      0.20 / 0.31 / 1.31    1067-1097   1.0 / 0.975 / 0.95
faiss IVF bf16     0.20 / 0.31 / 0.95    555-585     0.975 / 0.975 / 0.95
=================  ====================  ==========  ==================

faiss searches faster (its IVF ~40x at 100k here), at the same bytes per entry only
when faiss itself holds the bfloat16 codes. It is not the backend, for three reasons:

* Memory. Behind this interface the blocked descriptors stay (exact search below
  ``ivf_min_size``, the CUDA path, IVF re-training on exactly the first ``T`` entries
  at each doubling, list assignment that does not depend on insertion batches), so a
  faiss IVF would add its own 520 bytes per entry: about 1,070 instead of 552. And
  faiss keeps codes in growing ``std::vector`` buffers, the copy-on-doubling pattern
  :class:`~da3stream.streaming.loops.index.blocked_rows.BlockedRows` replaced: adding
  200,000 bfloat16 entries in batches of 64 to a faiss ``IndexScalarQuantizer`` raised
  the peak RSS by 129 MB for a final 99 MB (1.3x); our index 105 MB peak for 105 MB
  final (1.0x, descriptors plus the per-entry columns).
* Exactness. faiss's SIMD inner products differ from numpy's BLAS products in the
  last bits, so with faiss-or-numpy-fallback the stored similarities, and near-tie
  candidate orders, would depend on what is installed, and would change the loop
  results of existing runs.
* Cost in the run. Retrieval is one search per window: ~5.6 ms at 100k entries with
  our IVF on a quiet machine (README), a few percent of a window's engine time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from da3stream.errors import ConfigError, ShapeError, check_shape
from da3stream.streaming.loops.index.blocked_rows import BlockedRows
from da3stream.streaming.loops.index.kmeans import spherical_kmeans
from da3stream.streaming.loops.index.selection import best_k, exclusion_mask, greedy_nms_1d

__all__ = ["STORAGE_DTYPES", "Candidates", "DescriptorIndex"]

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


class _Members:
    """A growing int64 list (one IVF list's entries), capacity doubling; small, so its copies are cheap."""

    __slots__ = ("buf", "n")

    def __init__(self) -> None:
        self.buf = np.empty(8, np.int64)
        self.n = 0

    def append(self, values: np.ndarray) -> None:
        need = self.n + values.shape[0]
        if need > self.buf.shape[0]:
            grown = np.empty(max(need, 2 * self.buf.shape[0]), np.int64)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n:need] = values
        self.n = need

    def view(self) -> np.ndarray:
        return self.buf[: self.n]


class DescriptorIndex:
    """A growing descriptor index with per-entry time, travelled distance and source index.

    Entries live in fixed-size blocks (:class:`BlockedRows`) and descriptors are
    stored in ``storage_dtype``: ``"bfloat16"`` by default (the upper 16 bits of
    each float32, rounded to nearest even: half the memory, each component within
    2^-8 relative, so a cosine similarity moves by at most 0.004 and typically by
    1e-4) and widened back to float32 by a bit shift, numpy only, for scoring.
    Searches stream over the blocks, so no temporary grows with the index.

    Args:
        dim: descriptor dimension D.
        backend: ``"exact"``, ``"ivf"`` or ``"auto"`` (exact below ``ivf_min_size`` entries).
        device: torch device of the exact search (``"cpu"``, ``"cuda"``, ``"auto"``).
        ivf_min_size: entries before the IVF index is trained (and, for ``auto``, used).
        ivf_lists_per_sqrt: number of IVF lists is ``round(ivf_lists_per_sqrt * sqrt(T))``.
        ivf_probe: IVF lists searched per query.
        kmeans_iters: Lloyd iterations when training IVF centroids.
        ivf_train_max: centroids are trained on at most this many entries (an even stride).
        block: entries per storage block (and per scoring step of the exact search).
        storage_dtype: ``"bfloat16"`` or ``"float32"`` descriptor storage.
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
        block: int = 8192,
        storage_dtype: str = "bfloat16",
        seed: int = 0,
    ) -> None:
        if backend not in _BACKENDS:
            raise ConfigError(f"loop.index_backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        if dim < 1:
            raise ConfigError(f"DescriptorIndex: descriptor dimension must be >= 1, got {dim}")
        if storage_dtype not in _STORAGE:
            raise ConfigError(f"loop.index_dtype must be one of {', '.join(_STORAGE)}, got {storage_dtype!r}")
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
        self.storage_dtype = storage_dtype
        self.seed = int(seed)
        self._desc = BlockedRows(_STORAGE[storage_dtype], (self.dim,), self.block)
        self._times = BlockedRows(np.float64, (), self.block)
        self._dists = BlockedRows(np.float64, (), self.block)
        self._frames = BlockedRows(np.int64, (), self.block)
        self._rows = BlockedRows(np.int64, (), self.block)
        self._scratch: np.ndarray | None = None  # float32 copy of one block of stored descriptors
        self._dev_blocks: list = []  # torch copies of full descriptor blocks on a CUDA device, when one is used
        self._centroids: np.ndarray | None = None
        self._lists: list[_Members] = []
        self._trained_at = 0

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        return len(self._desc)

    @property
    def times(self) -> BlockedRows:
        """(N,) float64 timestamps of the entries (index it with ints or int arrays)."""
        return self._times

    @property
    def distances(self) -> BlockedRows:
        """(N,) float64 travelled distance at each entry."""
        return self._dists

    @property
    def frames(self) -> BlockedRows:
        """(N,) int64 source frame index of each entry."""
        return self._frames

    @property
    def rows(self) -> BlockedRows:
        """(N,) int64 caller-defined row id of each entry, e.g. the store row."""
        return self._rows

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the entries (descriptors and per-entry columns)."""
        return sum(c.nbytes_allocated for c in (self._desc, self._times, self._dists, self._frames, self._rows)) + \
            sum(m.buf.nbytes for m in self._lists)

    @property
    def uses_ivf(self) -> bool:
        """True when searches go through the IVF lists."""
        if self.backend == "exact" or self._centroids is None:
            return False
        return self.backend == "ivf" or len(self) >= self.ivf_min_size

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
        start = len(self)
        self._desc.append(_to_storage(d, self.storage_dtype))
        self._times.append(np.asarray(timestamps, dtype=np.float64))
        self._dists.append(np.asarray(distances, dtype=np.float64))
        self._frames.append(np.asarray(frames, dtype=np.int64))
        self._rows.append(np.asarray(rows, dtype=np.int64))
        if self.backend != "exact":
            self._update_ivf(start)

    def _scored(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 descriptors of the given entries (a scratch buffer up to one block)."""
        return self._float32(self._desc[rows])

    def _float32(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float32. Up to one block it is written into a reused scratch buffer (valid until the
        next call), so searches allocate nothing that grows with the index."""
        if x.dtype == np.float32:
            return x
        if x.shape[0] > self.block:
            return _widen(x, np.empty(x.shape, np.float32))
        if self._scratch is None:
            self._scratch = np.empty((self.block, self.dim), np.float32)
        return _widen(x, self._scratch[: x.shape[0]])

    # --------------------------------------------------------------------- IVF
    def _next_training_size(self) -> int:
        return self.ivf_min_size if self._trained_at == 0 else 2 * self._trained_at

    def _update_ivf(self, start: int) -> None:
        # Train on exactly the first T entries whenever the size first reaches T,
        # so batching of insertions never changes the index.
        pos = start
        while True:
            target = self._next_training_size()
            if len(self) < target:
                break
            self._train(target)
            pos = target
        if self._centroids is not None and pos < len(self):
            self._assign_range(pos, len(self))

    def _train(self, size: int) -> None:
        k = max(1, min(size, int(round(self.ivf_lists_per_sqrt * math.sqrt(size)))))
        stride = max(1, -(-size // max(self.ivf_train_max, k)))
        rows = self._desc[np.arange(0, size, stride, dtype=np.int64)]
        sample = _widen(rows, np.empty(rows.shape, np.float32))
        self._centroids = spherical_kmeans(sample, k, iters=self.kmeans_iters, seed=self.seed + size)
        del sample
        self._trained_at = size
        self._lists = [_Members() for _ in range(k)]
        self._assign_range(0, size)

    def _assign_range(self, a: int, b: int) -> None:
        for first, blk in self._desc.blocks(a, b):
            assign = np.argmax(self._float32(blk) @ self._centroids.T, axis=1)
            order = np.argsort(assign, kind="stable")
            lists, starts = np.unique(assign[order], return_index=True)
            for lst, s, e in zip(lists, starts, np.append(starts[1:], order.size)):
                self._lists[int(lst)].append(first + order[s:e])

    # ------------------------------------------------------------------ search
    def _block_scores(self, queries: np.ndarray):
        """Yield ``(first_row, (Q, b) float32 scores)`` block by block over every entry."""
        if self.device == "cpu":
            for first, blk in self._desc.blocks():
                yield first, (self._float32(blk) @ queries.T).T
            return
        import torch

        q = torch.from_numpy(queries).to(self.device)
        full = len(self) // self.block
        del self._dev_blocks[full:]  # the last, partial block is uploaded afresh
        for k, (first, blk) in enumerate(self._desc.blocks()):
            if k < len(self._dev_blocks):
                dev = self._dev_blocks[k]
            else:
                dev = torch.from_numpy(self._float32(blk)).to(self.device, copy=True)
                if k < full:
                    self._dev_blocks.append(dev)
            yield first, (dev @ q.T).T.cpu().numpy()

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
        qt = np.asarray(query_times, dtype=np.float64)
        qd = np.asarray(query_distances, dtype=np.float64)
        check_shape("DescriptorIndex.search(query_times)", qt, (nq,))
        check_shape("DescriptorIndex.search(query_distances)", qd, (nq,))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        if len(self) == 0 or nq == 0 or top_k < 1:
            return _no_candidates()
        pool = top_k * (2 * max(nms_radius, 0) + 1)
        excl = dict(exclude_seconds=exclude_seconds, exclude_distance=exclude_distance)

        def admissible(qi: slice, ent: np.ndarray, sc: np.ndarray, times: np.ndarray, dists: np.ndarray):
            """(rows, scores) per query of ``qi`` that pass exclusion and the threshold, at most ``pool`` each."""
            ok = (~exclusion_mask(qt[qi], qd[qi], times, dists, **excl)) & (sc >= min_similarity)
            return [best_k(ent[row_ok], row_sc[row_ok], pool) for row_ok, row_sc in zip(ok, sc)]

        per_query = self._ivf_hits(q, admissible) if self.uses_ivf else self._exact_hits(q, admissible)
        return self._suppressed(per_query, pool, top_k, max(nms_radius, 0))

    def _ivf_hits(self, q: np.ndarray, admissible) -> list:
        """Per query, the admissible ``(entries, scores)`` found in its ``ivf_probe`` nearest lists."""
        probe = min(self.ivf_probe, self._centroids.shape[0])
        lists = np.argsort(-(q @ self._centroids.T), axis=1, kind="stable")[:, :probe]
        per_query = []
        for qi in range(q.shape[0]):
            ent = np.sort(np.concatenate([self._lists[int(li)].view() for li in lists[qi]]))
            sc = (self._scored(ent) @ q[qi])[None, :]
            per_query.append(admissible(slice(qi, qi + 1), ent, sc, self._times[ent], self._dists[ent]))
        return per_query

    def _exact_hits(self, q: np.ndarray, admissible) -> list:
        """Per query, the admissible ``(entries, scores)`` of every block (at most a pool per block)."""
        per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(q.shape[0])]
        for first, sc in self._block_scores(q):
            stop = first + sc.shape[1]
            ent = np.arange(first, stop, dtype=np.int64)
            found_all = admissible(slice(None), ent, sc, self._times.span(first, stop), self._dists.span(first, stop))
            for qi, found in enumerate(found_all):
                per_query[qi].append(found)
        return per_query

    def _suppressed(self, per_query: list, pool: int, top_k: int, nms_radius: int) -> Candidates:
        """The best ``pool`` hits of each query, then per-query NMS down to ``top_k``."""
        out_q, out_e, out_s = [], [], []
        for qi, found in enumerate(per_query):
            ent = np.concatenate([e for e, _ in found])
            sc = np.concatenate([s for _, s in found])
            if ent.size == 0:
                continue
            ent, sc = best_k(ent, sc, pool)
            order = np.lexsort((ent, -sc))
            keep = greedy_nms_1d(self._frames[ent], order, nms_radius, top_k)
            out_q.append(np.full(keep.size, qi, dtype=np.int64))
            out_e.append(ent[keep])
            out_s.append(sc[keep].astype(np.float32))
        if not out_q:
            return _no_candidates()
        return Candidates(np.concatenate(out_q), np.concatenate(out_e), np.concatenate(out_s))

STORAGE_DTYPES = ("bfloat16", "float32")
"""Descriptor storage types of :class:`DescriptorIndex` (``loop.index_dtype``)."""
_STORAGE = {"bfloat16": np.uint16, "float32": np.float32}
"""Descriptor storage: name -> the numpy type that holds it (bfloat16 as the upper 16 bits of a float32)."""


def _to_storage(d: np.ndarray, storage: str) -> np.ndarray:
    """float32 (n, D) descriptors in the storage type (bfloat16: rounded to nearest even; finite input)."""
    if storage == "float32":
        return d
    u = np.ascontiguousarray(d, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def _widen(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Stored descriptors ``x`` as float32, written into ``out`` (bfloat16: one shift, exact)."""
    if x.dtype == np.float32:
        out[...] = x
        return out
    np.left_shift(x, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def _no_candidates() -> Candidates:
    return Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
