"""Online loop closure: place recognition, geometric verification, pose-graph optimisation.

The pipeline drives one :class:`LoopCloser` per run:

* ``add_node`` / ``add_sequential_edge`` for every window (the sequential
  alignment and its quality record);
* ``on_window`` with the window's new frames. It queries the descriptor index
  (:mod:`da3stream.streaming.loops.index`) with a few of them, merges the
  hits, verifies the best candidates, optimises the Sim(3) pose graph of all
  windows as soon as a loop is accepted, and finally adds the new frames to the
  index. It returns every candidate it looked at (accepted or rejected, with a
  reason) and, when an optimisation ran, the new ``world_from_chunk`` of every
  window;
* ``restore`` after a resume, from what the store holds.

Verification of a candidate (query frame ``q`` of the current window ``j``,
matched frame ``m`` of an older window ``i``). The predictor runs once on a
*loop window*: up to ``2 window_half + 1`` frames around ``m`` (stored images,
all from window ``i``) followed by as many around ``q``. Each half of the loop
window is registered against its own window's stored geometry with the same
robust estimator as the sequential alignment, giving ``loop_from_i`` and
``loop_from_j``; the loop measurement is ``i_from_j = loop_from_i^-1 loop_from_j``.
It is accepted when

1. both halves pass the registration gates (inlier ratio, median residual,
   scale range, agreement with the loop window's own camera poses), and
2. it is consistent: the pose of window ``j`` implied by the loop agrees with
   the current trajectory -- translation within
   ``max(max_translation_abs x depth, max_translation_rel x travelled distance)``
   between the two frames (odometry drift grows with distance), rotation within
   ``max_rotation_deg``, scale within ``max_scale_ratio`` -- or, failing only
   the translation/rotation part, at least ``consensus_min`` verified
   candidates of the window agree with each other and with a relaxed
   translation bound (``consensus_translation_rel``). A look-alike place that
   the network hallucinates into "the same place" yields a confident
   transform whose disagreement is about the distance between the two places,
   i.e. about the travelled distance: it fails both bounds.
3. after the optimisation its robust weight in the pose graph stays above
   ``min_graph_weight`` (otherwise it is rejected as a graph outlier and the
   graph is re-optimised without it).

Pose graph: nodes are windows; sequential edges carry information derived
from their quality record (depth-relative residual and inlier ratio;
gated/fallback alignments weigh ``gated_weight`` as much); loops carry the
same from their verification. Translational information is whitened with each
window's median depth, so the graph is invariant to the arbitrary per-window
scale. Robust kernel (``graph_kernel``, width ``huber_delta``) and sparse
Levenberg-Marquardt: :func:`da3stream.alignment.pose_graph.optimize_pose_graph`.
Each connected component (segments after a hard cut that no loop joins yet)
keeps its first node fixed.

Travelled distance (exclusion and the consistency bound) is measured along
the *odometry* trajectory, the chain of sequential edges, which no loop
closure rewrites; units are those of the segment's first window (the world
frame for the first segment). Everything the loop closer keeps is rebuilt by
:meth:`LoopCloser.restore` from the store, and no decision depends on wall
time or thread timing.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from da3stream.streaming.loops.index import STORAGE_DTYPES, DescriptorIndex, suppress_pairs
from da3stream.alignment.points import points_from_rays, resample_to_grid, sample_correspondences, unproject_depth
from da3stream.alignment.pose_graph import Edge, optimize_pose_graph
from da3stream.alignment.registration import pose_based_estimate, quality_gate, register, transform_disagreement
from da3stream.alignment.sim3 import Sim3
from da3stream.config import AlignConfig, LoopConfig
from da3stream.core.types import FrameBatch, Prediction, Predictor
from da3stream.errors import AlignmentError, ConfigError, Da3StreamError, ShapeError, check_shape
from da3stream.streaming.planner import is_out_of_memory

log = logging.getLogger(__name__)

__all__ = ["LoopEdge", "FrameData", "WindowContext", "LoopUpdate", "LoopCloser", "canonical_sim3"]

_STATUS_OK = 0  # chunks/status codes (see docs/STORE.md)
_STATUS_GATED = 1
_FETCH_BATCH = 32
_CANDIDATES_PER_POINT = 16  # pixel stride of verification: candidates per kept correspondence


def canonical_sim3(T: Sim3) -> Sim3:
    """``T`` as it reads back from storage (``Sim3.from_array(T.to_array())``).

    Values the loop closer keeps go through this round trip first, so a run
    restored from the store holds bit-identical values.
    """
    return Sim3.from_array(T.to_array())


@dataclass(frozen=True)
class LoopEdge:
    """A loop candidate between an older window ``chunk_i`` and a newer window ``chunk_j``."""

    chunk_i: int
    """Older window (node) id."""
    chunk_j: int
    """Newer window (node) id."""
    frame_i: int
    """Store row of the matched older frame."""
    frame_j: int
    """Store row of the query frame."""
    i_from_j: Optional[Sim3]
    """Measured transform mapping chunk-j frame points into the chunk-i frame; None when no estimate exists."""
    inlier_ratio: float
    """Smaller inlier ratio of the two verification halves (NaN when not verified)."""
    residual: float
    """Larger median depth-relative residual of the two halves (NaN when not verified)."""
    scale: float
    """Scale of ``i_from_j`` (NaN when not verified)."""
    accepted: bool
    """True when the loop passed every check and entered the pose graph."""
    reason: str
    """Rejection reason token; ``""`` when accepted."""
    similarity: float = float("nan")
    """Descriptor cosine similarity of the candidate pair."""


@dataclass
class FrameData:
    """Stored data of committed frames (what ``WindowContext.fetch`` returns)."""

    images: Optional[np.ndarray]
    """(k, h, w, 3) uint8 RGB at the depth grid, or None when the store keeps no RGB."""
    depth: np.ndarray
    """(k, h, w) float32 z-depth in chunk units."""
    conf: np.ndarray
    """(k, h, w) float32 confidence."""
    chunk_from_cam: np.ndarray
    """(k, 4, 4) float64 camera-to-chunk rigid poses."""
    intrinsics: np.ndarray
    """(k, 3, 3) float64 intrinsics for the depth grid."""
    chunk_id: np.ndarray
    """(k,) int window that produced each frame."""
    indices: np.ndarray
    """(k,) int64 source frame index."""
    timestamps: np.ndarray
    """(k,) float64 seconds."""


@dataclass
class WindowContext:
    """What the pipeline hands the loop closer for one window."""

    chunk_id: int
    """This window's id."""
    rows: np.ndarray
    """(n,) int64 store rows of the window's new frames."""
    indices: np.ndarray
    """(n,) int64 source index of the new frames."""
    timestamps: np.ndarray
    """(n,) float64 seconds of the new frames."""
    descriptors: Optional[np.ndarray]
    """(n, D) float32 descriptors of the new frames, or None."""
    world_from_cam: np.ndarray
    """(n, 4, 4) float64 current world poses of the new frames."""
    images: np.ndarray
    """(n, h, w, 3) uint8 new frames resized to the depth grid."""
    prediction: Prediction
    """The window's prediction restricted to the new frames (chunk frame = ``chunk_id``)."""
    fetch: Callable[[np.ndarray], FrameData]
    """rows -> stored data of committed older frames."""
    world_from_chunk: list
    """Current ``world_from_chunk`` (Sim3) of windows ``0..chunk_id``."""


@dataclass
class LoopUpdate:
    """Result of :meth:`LoopCloser.on_window`."""

    edges: list = field(default_factory=list)
    """Every candidate considered, accepted and rejected, in evaluation order (list of :class:`LoopEdge`)."""
    world_from_chunk: Optional[list] = None
    """New ``world_from_chunk`` of windows ``0..chunk_id`` when an optimisation ran, else None."""
    graph_report: Optional[dict] = None
    """Optimisation summary (nodes, edges, loops, costs, iterations, removed outliers), or None."""


@dataclass(frozen=True)
class _SeqEdge:
    i_from_j: Sim3
    inlier_ratio: float
    residual: float
    gated: bool


@dataclass(frozen=True)
class _Verified:
    """A candidate that passed the registration gates, waiting for the consistency decision."""

    pos: int  # position in the window's edge list (-1 until placed)
    edge: LoopEdge
    world_from_j_loop: Sim3  # window j's world pose implied by the loop
    trans_err: float
    rot_err_deg: float
    scale_ratio: float
    bound_abs: float
    travel: float


class LoopCloser:
    """Online loop closure for one run (see the module docstring).

    Args:
        loop_cfg: the ``loop`` section of the config.
        align_cfg: the ``align`` section (registration parameters reused for verification).
        predictor: runs the loop windows.
        seed: seeds every random choice (correspondence sampling).
    """

    def __init__(self, loop_cfg: LoopConfig, align_cfg: AlignConfig, predictor: Predictor, *, seed: int = 0) -> None:
        if loop_cfg.graph_kernel not in ("huber", "cauchy"):
            raise ConfigError(f"loop.graph_kernel must be huber or cauchy, got {loop_cfg.graph_kernel!r}")
        if loop_cfg.index_dtype not in STORAGE_DTYPES:
            raise ConfigError(f"loop.index_dtype must be one of {', '.join(STORAGE_DTYPES)}, "
                              f"got {loop_cfg.index_dtype!r}")
        if loop_cfg.index_backend not in ("exact", "ivf", "auto"):
            raise ConfigError(f"loop.index_backend must be exact, ivf or auto, got {loop_cfg.index_backend!r}")
        if loop_cfg.max_verifications < 0 or loop_cfg.window_half < 1 or loop_cfg.max_scale_ratio < 1.0:
            raise ConfigError("loop: need max_verifications >= 0, window_half >= 1 and max_scale_ratio >= 1")
        self.cfg = loop_cfg
        self.align = align_cfg
        self.predictor = predictor
        self.seed = int(seed)
        self._reset()

    def _reset(self) -> None:
        self._index: Optional[DescriptorIndex] = None
        self._span_starts: list[int] = []  # first index entry of each indexed window, ascending
        self._span_chunks: list[int] = []  # the window (chunk id, ascending) of each span
        self._seq: dict[int, _SeqEdge] = {}  # j -> edge (j-1, j)
        self._roots: set[int] = set()  # first windows of segments
        self._odom: dict[int, Sim3] = {}  # odom_from_chunk
        self._loops: list[LoopEdge] = []  # accepted loops, in acceptance order
        self._unit: dict[int, float] = {}  # median depth of each window's first new frame (chunk units)
        self._first_row: dict[int, int] = {}
        self._last_centre: Optional[np.ndarray] = None
        self._last_dist = 0.0
        self._disabled_logged = False
        self._no_images_logged = False

    # ------------------------------------------------------------------ graph
    def add_node(self, chunk_id: int, world_from_chunk: Sim3) -> None:
        """Register window ``chunk_id`` as the first of a segment (first window, or after a hard cut)."""
        c = int(chunk_id)
        self._roots.add(c)
        prev_scale = self._odom[c - 1].s if (c - 1) in self._odom else 1.0
        # Odometry frame of a new segment: the segment's first window, at the previous window's scale.
        self._odom[c] = Sim3(prev_scale, np.eye(3), np.zeros(3)) if c > 0 else Sim3.identity()
        self._last_centre = None

    def add_sequential_edge(
        self, i: int, j: int, i_from_j: Sim3, *, inlier_ratio: float, residual: float, gated: bool
    ) -> None:
        """The sequential alignment of window ``j`` against window ``i = j - 1`` and its quality record."""
        i, j = int(i), int(j)
        if j != i + 1:
            raise AlignmentError(f"LoopCloser.add_sequential_edge: expected j == i + 1, got i={i}, j={j}")
        # The store keeps chunk_from_prev = i_from_j^-1; hold exactly what reads back from it.
        meas = Sim3.from_array(i_from_j.inverse().to_array()).inverse()
        self._seq[j] = _SeqEdge(meas, float(inlier_ratio), float(residual), bool(gated))
        if i not in self._odom:
            self._roots.add(i)
            self._odom[i] = Sim3.identity()
        self._odom[j] = self._odom[i] @ meas

    # ------------------------------------------------------------------ per window
    def on_window(self, ctx: WindowContext) -> LoopUpdate:
        """Query, verify, optimise, then index the window's new frames (see the module docstring)."""
        c = int(ctx.chunk_id)
        rows = np.asarray(ctx.rows, dtype=np.int64)
        n = rows.shape[0]
        check_shape("WindowContext.rows", rows, ("n",))
        check_shape("WindowContext.indices", np.asarray(ctx.indices), (n,))
        check_shape("WindowContext.timestamps", np.asarray(ctx.timestamps), (n,))
        check_shape("WindowContext.world_from_cam", np.asarray(ctx.world_from_cam), (n, 4, 4))
        if len(ctx.prediction) != n:
            raise ShapeError(f"WindowContext.prediction: expected {n} frames, got {len(ctx.prediction)}")
        if len(ctx.world_from_chunk) != c + 1:
            raise ShapeError(
                f"WindowContext.world_from_chunk: expected {c + 1} entries, got {len(ctx.world_from_chunk)}")
        if c not in self._odom:
            self.add_node(c, ctx.world_from_chunk[c])
        if ctx.descriptors is None:
            if not self._disabled_logged:
                log.info("loop closure disabled: the predictor gives no descriptors")
                self._disabled_logged = True
            return LoopUpdate()
        desc = np.asarray(ctx.descriptors, dtype=np.float32)
        check_shape("WindowContext.descriptors", desc, (n, None), "f")
        if n == 0:
            return LoopUpdate()
        # Nothing is committed until the end, so a window the pipeline retries (out of memory) starts clean.
        dists, last = self._frame_distances(c, ctx.prediction.world_from_cam)
        index = self._ensure_index(desc.shape[1])
        self._unit[c] = _median_depth(_as_stored(ctx.prediction.depth[0]))  # overwritten if the window is retried

        edges, new_world, report = self._close_loops(ctx, desc, dists, index) if len(index) else ([], None, None)

        self._first_row[c] = int(rows[0])
        self._last_centre, self._last_dist = last
        self._index_window(index, c, desc, ctx.timestamps, dists, ctx.indices, rows)
        return LoopUpdate(edges=edges, world_from_chunk=new_world, graph_report=report)

    # ------------------------------------------------------------------ restore
    def restore(self, *, chunk_rows: dict, frame_rows: dict, loops: list, world_from_chunk: list) -> None:
        """Rebuild the state from the store's chunks table, frames table and accepted loops.

        Args:
            chunk_rows: chunks table (``chunk_from_prev`` (C, 8), ``inlier_ratio``,
                ``residual``, ``status``, ``frame_stop``, ``n_new``).
            frame_rows: frames table (``index``, ``timestamp``, ``chunk_id``,
                ``chunk_from_cam`` (F, 4, 4), ``descriptor`` (F, D) or None).
            loops: accepted loop edges (:class:`LoopEdge` or dicts with the same keys;
                ``i_from_j`` a Sim3 or its (8,) array).
            world_from_chunk: current ``world_from_chunk`` per window (only its length is used).
        """
        self._reset()
        cfp = np.asarray(chunk_rows["chunk_from_prev"], dtype=np.float64)
        n_chunks = cfp.shape[0]
        if len(world_from_chunk) != n_chunks:
            raise ShapeError(f"LoopCloser.restore: {len(world_from_chunk)} world_from_chunk for {n_chunks} chunks")
        status = np.asarray(chunk_rows["status"])
        inl = np.asarray(chunk_rows["inlier_ratio"], dtype=np.float64)
        res = np.asarray(chunk_rows["residual"], dtype=np.float64)
        chunk_id = np.asarray(frame_rows["chunk_id"], dtype=np.int64)
        chunk_from_cam = np.asarray(frame_rows["chunk_from_cam"], dtype=np.float64)
        desc = frame_rows.get("descriptor")
        if desc is None and chunk_id.size:
            log.warning("loop closure restore: the frames table has no descriptors; the place index restarts empty")
        times = np.asarray(frame_rows["timestamp"], dtype=np.float64)
        indices = np.asarray(frame_rows["index"], dtype=np.int64)
        for c in range(n_chunks):
            if c > 0 and np.all(np.isfinite(cfp[c])):
                i_from_j = Sim3.from_array(cfp[c]).inverse()
                r = float(res[c]) if np.isfinite(res[c]) else 1.0
                self._seq[c] = _SeqEdge(i_from_j, float(inl[c]), r, int(status[c]) != _STATUS_OK)
                self._odom[c] = self._odom[c - 1] @ i_from_j
            else:
                self.add_node(c, world_from_chunk[c])
            sel = np.flatnonzero(chunk_id == c)
            if sel.size == 0:
                continue
            self._first_row[c] = int(sel[0])
            dists, (self._last_centre, self._last_dist) = self._frame_distances(c, chunk_from_cam[sel])
            if desc is not None:
                index = self._ensure_index(np.asarray(desc).shape[1])
                self._index_window(index, c, np.asarray(desc)[sel], times[sel], dists, indices[sel],
                                   sel.astype(np.int64))
        self._loops = [_loop_from_record(rec) for rec in loops]
        self._loops = [e for e in self._loops if e.accepted]

    # ------------------------------------------------------------------ internals
    def _index_window(self, index: DescriptorIndex, c: int, desc, times, dists, indices, rows) -> None:
        """Add window ``c``'s frames to the place index and record where their entries start."""
        first = len(index)
        index.add(desc, times, dists, indices, rows)
        self._span_starts.append(first)
        self._span_chunks.append(c)

    def _chunk_of_entry(self, entry: int) -> int:
        return self._span_chunks[bisect.bisect_right(self._span_starts, entry) - 1]

    def _entry_span(self, c: int) -> tuple[int, int]:
        """``[first, stop)`` index entries of window ``c`` (which has been indexed)."""
        p = bisect.bisect_left(self._span_chunks, c)
        stop = self._span_starts[p + 1] if p + 1 < len(self._span_starts) else len(self._index)
        return self._span_starts[p], stop

    def _ensure_index(self, dim: int) -> DescriptorIndex:
        if self._index is None:
            self._index = DescriptorIndex(
                dim, backend=self.cfg.index_backend, device=self.cfg.index_device,
                ivf_min_size=self.cfg.ivf_min_size, storage_dtype=self.cfg.index_dtype, seed=self.seed,
            )
        return self._index

    def _frame_distances(self, c: int, chunk_from_cam: np.ndarray):
        """``(dists (n,), (last_centre, last_dist))``: travelled distance along the odometry trajectory
        at each new frame of window ``c``, and the running state after them (not committed here)."""
        centres = self._odom[c].apply(np.asarray(chunk_from_cam, dtype=np.float64)[:, :3, 3])
        out = np.empty(centres.shape[0])
        last, dist = self._last_centre, self._last_dist
        for k, p in enumerate(centres):
            if last is not None:
                dist += float(np.linalg.norm(p - last))
            last = p
            out[k] = dist
        return out, (last, dist)

    def _close_loops(self, ctx: WindowContext, desc: np.ndarray, dists: np.ndarray, index: DescriptorIndex):
        cfg = self.cfg
        c = int(ctx.chunk_id)
        n = desc.shape[0]
        n_q = max(1, min(cfg.max_queries_per_chunk, n))
        q_pos = np.unique(np.round(np.linspace(0, n - 1, n_q)).astype(np.int64))
        cand = index.search(
            desc[q_pos], np.asarray(ctx.timestamps)[q_pos], dists[q_pos], top_k=cfg.top_k,
            min_similarity=cfg.min_similarity, exclude_seconds=cfg.exclude_seconds,
            exclude_distance=cfg.exclude_distance, nms_radius=cfg.nms_frames,
        )
        if len(cand) == 0:
            return [], None, None
        q_local = q_pos[cand.query]
        q_frames = np.asarray(ctx.indices, dtype=np.int64)[q_local]
        m_frames = index.frames[cand.entry]
        keep, _support = suppress_pairs(q_frames, m_frames, cand.similarity, cfg.nms_frames)

        edges: list[LoopEdge] = []
        verified: list[_Verified] = []
        n_verified = 0
        for k in keep:
            entry = int(cand.entry[k])
            qi = int(q_local[k])
            chunk_i = self._chunk_of_entry(entry)
            base = dict(chunk_i=chunk_i, chunk_j=c, frame_i=int(index.rows[entry]), frame_j=int(ctx.rows[qi]),
                        similarity=float(cand.similarity[k]))
            if chunk_i >= c - 1:
                edges.append(_unverified(base, "adjacent_chunk"))
                continue
            if n_verified >= cfg.max_verifications:
                edges.append(_unverified(base, "not_verified"))
                continue
            n_verified += 1
            outcome = self._verify(ctx, entry, qi, base, dists[qi])
            if isinstance(outcome, LoopEdge):
                edges.append(outcome)
            else:
                verified.append(dataclasses.replace(outcome, pos=len(edges)))
                edges.append(outcome.edge)
        accepted_pos = self._decide(verified, edges)
        if not accepted_pos:
            return edges, None, None
        new_world, report, outliers = self._optimise(ctx, [edges[p] for p in accepted_pos])
        for k, p in enumerate(accepted_pos):
            if k in outliers:
                edges[p] = _replace(edges[p], accepted=False, reason="graph_outlier")
        return edges, new_world, report

    def _decide(self, verified: list[_Verified], edges: list[LoopEdge]) -> list[int]:
        """Apply the consistency gate; returns positions (in ``edges``) of accepted loops, and fills reasons."""
        cfg = self.cfg
        accepted: list[int] = []
        pending: list[_Verified] = []
        for v in verified:
            bound = max(v.bound_abs, cfg.max_translation_rel * v.travel)
            scale_ok = 1.0 / cfg.max_scale_ratio <= v.scale_ratio <= cfg.max_scale_ratio
            if not scale_ok:
                edges[v.pos] = _replace(v.edge, reason="inconsistent_scale")
            elif v.trans_err <= bound and v.rot_err_deg <= cfg.max_rotation_deg:
                edges[v.pos] = _replace(v.edge, accepted=True, reason="")
                accepted.append(v.pos)
            else:
                reason = "inconsistent_translation" if v.trans_err > bound else "inconsistent_rotation"
                edges[v.pos] = _replace(v.edge, reason=reason)
                pending.append(v)
        if cfg.consensus_min >= 2 and len(pending) >= cfg.consensus_min:
            group = _agreeing_group(pending, cfg)
            if len(group) >= cfg.consensus_min:
                for v in group:
                    edges[v.pos] = _replace(v.edge, accepted=True, reason="")
                    accepted.append(v.pos)
        return sorted(accepted)

    def _verify(self, ctx: WindowContext, entry: int, qi: int, base: dict, travel_q: float):
        """Run and check one loop window: a rejected :class:`LoopEdge`, or a :class:`_Verified` awaiting
        the consistency decision."""
        cfg, index = self.cfg, self._index
        chunk_i, c = base["chunk_i"], int(ctx.chunk_id)
        first, stop = self._entry_span(chunk_i)
        old_pos = _around(entry, first, stop, cfg.window_half)
        new_pos = _around(qi, 0, len(ctx.rows), cfg.window_half)
        old_rows = index.rows[old_pos]
        try:
            old = ctx.fetch(old_rows)
        except Da3StreamError as exc:
            log.warning("loop %d-%d: cannot read stored frames (%s)", chunk_i, c, exc)
            return _unverified(base, "fetch_failed")
        if old.images is None:
            if not self._no_images_logged:
                log.warning("loop verification needs stored RGB (store.save_rgb); candidates are rejected")
                self._no_images_logged = True
            return _unverified(base, "no_stored_images")
        grid = ctx.prediction.depth.shape[1:]
        images = np.concatenate([np.asarray(old.images, dtype=np.uint8), np.asarray(ctx.images)[new_pos]])
        batch = FrameBatch(
            images=images,
            indices=np.concatenate([np.asarray(old.indices, np.int64), np.asarray(ctx.indices, np.int64)[new_pos]]),
            timestamps=np.concatenate([np.asarray(old.timestamps, np.float64),
                                       np.asarray(ctx.timestamps, np.float64)[new_pos]]),
        )
        try:
            loop_pred = self.predictor.predict(batch)
            if not isinstance(loop_pred, Prediction):
                raise ShapeError(f"predictor returned {type(loop_pred).__name__}, expected Prediction")
            loop_pred = _to_grid(loop_pred.validate(len(batch)), grid)
        except Da3StreamError as exc:
            log.warning("loop %d-%d: loop window prediction failed (%s)", chunk_i, c, exc)
            return _unverified(base, "predict_failed")
        except Exception as exc:  # noqa: BLE001 - only running out of memory is survivable here
            if not is_out_of_memory(exc):
                raise
            log.warning("loop %d-%d: out of memory on the loop window; candidate skipped", chunk_i, c)
            return _unverified(base, "out_of_memory")
        k_old = len(old_pos)
        cur = ctx.prediction.subset(new_pos)
        # Stored frames have no ray map: their points come from depth, intrinsics and pose.
        stored = Prediction(depth=np.asarray(old.depth, np.float32), conf=np.asarray(old.conf, np.float32),
                            world_from_cam=np.asarray(old.chunk_from_cam, np.float64),
                            intrinsics=np.asarray(old.intrinsics, np.float64))
        halves = ((slice(0, k_old), stored, 0), (slice(k_old, len(batch)), cur, 1))
        results = []
        for sel, chunk_half, half in halves:
            result, reason = self._register_half(loop_pred.subset(sel), chunk_half,
                                                 [self.seed, c, base["frame_i"], base["frame_j"], half])
            if reason:
                if result is None:
                    return _unverified(base, reason)
                side = "old" if half == 0 else "new"
                return LoopEdge(i_from_j=None, inlier_ratio=result.inlier_ratio,
                                residual=result.residual_median, scale=result.dst_from_src.s, accepted=False,
                                reason=f"{reason}_{side}", **base)
            results.append(result)
        loop_from_i, loop_from_j = results[0].dst_from_src, results[1].dst_from_src
        i_from_j = canonical_sim3(loop_from_i.inverse() @ loop_from_j)
        inlier = min(r.inlier_ratio for r in results)
        residual = max(r.residual_median for r in results)
        edge = LoopEdge(accepted=False, reason="", i_from_j=i_from_j, inlier_ratio=inlier, residual=residual,
                        scale=i_from_j.s, **base)
        # Consistency with the current trajectory.
        W_i, W_j = ctx.world_from_chunk[chunk_i], ctx.world_from_chunk[c]
        W_j_loop = W_i @ i_from_j
        centre = np.asarray(ctx.prediction.world_from_cam[qi][:3, 3], dtype=np.float64)
        trans_err = float(np.linalg.norm(W_j.apply(centre) - W_j_loop.apply(centre)))
        rot_err = _angle_deg(W_j.R.T @ W_j_loop.R)
        scale_ratio = W_j_loop.s / W_j.s
        depth_q = _median_depth(ctx.prediction.depth[qi]) * W_j.s
        travel = abs(travel_q - float(index.distances[entry]))
        bound_abs = cfg.max_translation_abs * depth_q if np.isfinite(depth_q) else 0.0
        return _Verified(-1, edge, W_j_loop, trans_err, rot_err, scale_ratio, bound_abs, travel)

    def _register_half(self, loop_half: Prediction, chunk_half: Prediction, seed_key):
        """``(result, reason)``: the ``loop_from_chunk`` registration of one half (the loop window's
        prediction of some frames against the same frames' prediction in their own window) and ``""``,
        or a rejection token (``result`` is None when no estimate exists)."""
        a = self.align
        n, h, w = chunk_half.depth.shape
        # Every stride-th pixel: about 16 candidates per kept correspondence (as the sequential alignment).
        stride = max(1, int(np.sqrt(n * h * w / max(_CANDIDATES_PER_POINT * a.max_points, 1))))
        try:
            pts_loop, c_loop, d_loop = _points(loop_half, stride)
            pts_chunk, c_chunk, d_chunk = _points(chunk_half, stride)
            corr = sample_correspondences(
                pts_loop, c_loop, d_loop, pts_chunk, c_chunk, depth_b=d_chunk,
                max_points=a.max_points, conf_quantile=a.conf_quantile, rng=np.random.default_rng(seed_key),
            )
            pose_est = pose_based_estimate(loop_half.world_from_cam, chunk_half.world_from_cam, d_loop, d_chunk)
            mode = a.mode if a.mode in ("sim3", "se3", "scale") else "sim3"
            result = register(
                corr.dst, corr.src, corr.weight, corr.depth_dst, mode=mode, kernel=a.kernel,
                kernel_scale=a.kernel_scale, inlier_threshold=a.inlier_threshold, irls_iters=a.irls_iters,
                min_points=a.min_points, init=pose_est if mode == "scale" else None,
            )
            disagreement = transform_disagreement(result.dst_from_src, pose_est, corr.src, depth=corr.depth_dst)
        except AlignmentError as exc:
            log.debug("loop verification: registration failed (%s)", exc)
            return None, "degenerate"
        # Each half's scale relates two arbitrary gauges (the loop window's and the stored window's), so
        # no range applies to it; the loop's scale is checked against the trajectory instead.
        ok, reason = quality_gate(
            result, disagreement, min_inlier_ratio=self.cfg.min_inlier_ratio, max_residual=self.cfg.max_residual,
            scale_range=(0.0, np.inf), max_pose_disagreement=a.max_pose_disagreement,
        )
        return result, ("" if ok else reason)

    # ------------------------------------------------------------------ optimisation
    def _units(self, ctx: WindowContext, n_nodes: int) -> np.ndarray:
        """(C,) median depth of each window's first new frame, in its own chunk units."""
        missing = [c for c in range(n_nodes) if c not in self._unit and c in self._first_row]
        for a in range(0, len(missing), _FETCH_BATCH):
            part = missing[a : a + _FETCH_BATCH]
            data = ctx.fetch(np.array([self._first_row[c] for c in part], dtype=np.int64))
            for k, c in enumerate(part):
                self._unit[c] = _median_depth(_as_stored(np.asarray(data.depth[k])))
        out = np.empty(n_nodes)
        for c in range(n_nodes):
            u = self._unit.get(c, float("nan"))
            if not (np.isfinite(u) and u > 0):
                # No frame of its own: carry the previous window's unit through the sequential scale.
                prev = out[c - 1] if c > 0 else 1.0
                s = self._seq[c].i_from_j.s if c in self._seq else 1.0
                u = prev / s
            out[c] = u
        return out

    def _information(self, inlier_ratio: float, residual: float, unit_j: float, weight: float) -> np.ndarray:
        cfg = self.cfg
        r = residual if np.isfinite(residual) else 1.0
        sigma = max(r, cfg.sigma_floor) / np.sqrt(max(inlier_ratio if np.isfinite(inlier_ratio) else 0.0, 1e-3))
        diag = np.empty(7)
        diag[:3] = 1.0 / (sigma * unit_j) ** 2  # rho: translation in chunk-j units
        diag[3:] = 1.0 / sigma**2  # phi (rad) and sigma (log-scale): depth-relative
        return np.diag(diag * weight)

    def _optimise(self, ctx: WindowContext, new_loops: list[LoopEdge]):
        cfg = self.cfg
        n_nodes = int(ctx.chunk_id) + 1
        units = self._units(ctx, n_nodes)
        seq_edges = []
        for j in range(1, n_nodes):
            e = self._seq.get(j)
            if e is None:
                continue
            w = cfg.gated_weight if e.gated else 1.0
            seq_edges.append(Edge(j - 1, j, e.i_from_j, self._information(e.inlier_ratio, e.residual, units[j], w)))
        removed: list[int] = []  # positions in new_loops
        kept = list(range(len(new_loops)))
        while True:  # each pass drops one new loop, so this ends
            candidates = [new_loops[k] for k in kept]
            loops = self._loops + candidates
            loop_edges = [
                Edge(L.chunk_i, L.chunk_j, L.i_from_j,
                     self._information(L.inlier_ratio, L.residual, units[L.chunk_j], cfg.loop_weight), is_loop=True)
                for L in loops
            ]
            edges = seq_edges + loop_edges
            fixed = _component_roots(n_nodes, [(e.i, e.j) for e in edges])
            result = optimize_pose_graph(
                list(ctx.world_from_chunk), edges, fixed=fixed, kernel=cfg.graph_kernel, kernel_scale=cfg.huber_delta,
            )
            w_new = result.edge_weights[len(seq_edges) + len(self._loops):]
            worst = int(np.argmin(w_new))
            if not w_new[worst] < cfg.min_graph_weight:
                break
            # Drop only the worst: a gross outlier can drag a good loop's weight down with it.
            removed.append(kept[worst])
            kept = [k for k in kept if k != kept[worst]]
            if not kept:
                log.info("window %d: every new loop was a pose-graph outlier; no correction", ctx.chunk_id)
                report = _report(result, len(seq_edges), len(self._loops), [new_loops[k] for k in removed],
                                 applied=False)
                return None, report, set(removed)
        self._loops += candidates
        new_world = [canonical_sim3(T) for T in result.world_from_node]
        log.info(
            "window %d: %d loop(s) closed; pose graph %d nodes, %d edges, cost %.4g -> %.4g in %d iterations",
            ctx.chunk_id, len(candidates), n_nodes, len(edges), result.initial_cost, result.final_cost,
            result.iterations,
        )
        report = _report(result, len(seq_edges), len(self._loops), [new_loops[k] for k in removed], applied=True)
        return new_world, report, set(removed)


# ---------------------------------------------------------------------- helpers
def _unverified(base: dict, reason: str) -> LoopEdge:
    nan = float("nan")
    return LoopEdge(i_from_j=None, inlier_ratio=nan, residual=nan, scale=nan, accepted=False,
                    reason=reason, **base)


def _replace(edge: LoopEdge, **kw: Any) -> LoopEdge:
    return dataclasses.replace(edge, **kw)


def _around(center: int, lo: int, hi: int, half: int) -> np.ndarray:
    """Up to ``2 half + 1`` consecutive positions in ``[lo, hi)`` around ``center`` (shifted at the ends)."""
    size = min(2 * half + 1, hi - lo)
    start = min(max(center - half, lo), hi - size)
    return np.arange(start, start + size, dtype=np.int64)


def _as_stored(depth: np.ndarray) -> np.ndarray:
    """Depth as the store keeps it (float16), so units computed live and after a resume agree."""
    return np.asarray(depth, dtype=np.float16).astype(np.float32)


def _median_depth(depth: np.ndarray) -> float:
    d = np.asarray(depth, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else float("nan")


def _angle_deg(R: np.ndarray) -> float:
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _points(pred: Prediction, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points (n, h', w', 3), conf, depth)`` of every ``stride``-th pixel, in the prediction's chunk frame.

    Points come from the ray map when it is on the depth grid (DA3's ray head is the more precise
    geometry), otherwise from depth, intrinsics and camera pose (sub-grid pixel u' = u / stride).
    """
    d = pred.depth[:, ::stride, ::stride]
    c = pred.conf[:, ::stride, ::stride]
    if pred.rays is not None and pred.rays.shape[1:3] == pred.depth.shape[1:3]:
        return points_from_rays(pred.rays[:, ::stride, ::stride], d), c, d
    K = np.array(pred.intrinsics, dtype=np.float64, copy=True)
    K[:, :2, :] /= stride
    return unproject_depth(d, K, pred.world_from_cam), c, d


def _to_grid(pred: Prediction, grid: tuple) -> Prediction:
    """A prediction resampled onto the stored depth grid (intrinsics rescaled, half-pixel convention)."""
    h, w = pred.depth.shape[1:]
    H, W = int(grid[0]), int(grid[1])
    if (h, w) == (H, W):
        return pred
    sx, sy = W / w, H / h
    S = np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])
    return Prediction(
        depth=resample_to_grid(pred.depth, (H, W), method="nearest").astype(np.float32),
        conf=resample_to_grid(pred.conf, (H, W), method="nearest").astype(np.float32),
        world_from_cam=pred.world_from_cam,
        intrinsics=np.einsum("ij,njk->nik", S, pred.intrinsics),
    )


def _component_roots(n_nodes: int, pairs: list) -> tuple:
    """Smallest node of every connected component: the gauge nodes held fixed."""
    parent = list(range(n_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return tuple(sorted({find(a) for a in range(n_nodes)}))


def _agreeing_group(pending: list, cfg: LoopConfig) -> list:
    """Largest set of verified candidates whose implied window poses agree, within the relaxed bound."""
    ok = [v for v in pending if v.trans_err <= max(v.bound_abs, cfg.consensus_translation_rel * v.travel)]
    best: list = []
    for a in ok:
        group = [
            b for b in ok
            if float(np.linalg.norm(a.world_from_j_loop.t - b.world_from_j_loop.t)) <= max(a.bound_abs, b.bound_abs)
            and _angle_deg(a.world_from_j_loop.R.T @ b.world_from_j_loop.R) <= cfg.max_rotation_deg
        ]
        if len(group) > len(best):
            best = group
    return best


def _loop_from_record(rec: Any) -> LoopEdge:
    """A :class:`LoopEdge` from a stored loop (any object with the same attributes, or a mapping)."""
    if isinstance(rec, dict):
        d = dict(rec)
    else:
        keys = ("chunk_i", "chunk_j", "frame_i", "frame_j", "i_from_j", "inlier_ratio", "residual", "scale",
                "accepted", "reason", "similarity")
        d = {k: getattr(rec, k) for k in keys if hasattr(rec, k)}
    T = d.get("i_from_j")
    if T is None:
        raise ShapeError(f"LoopCloser.restore: loop {d.get('chunk_i')}-{d.get('chunk_j')} has no i_from_j transform")
    T = T if isinstance(T, Sim3) else Sim3.from_array(np.asarray(T, np.float64))
    return LoopEdge(
        chunk_i=int(d["chunk_i"]), chunk_j=int(d["chunk_j"]), frame_i=int(d["frame_i"]), frame_j=int(d["frame_j"]),
        i_from_j=T, inlier_ratio=float(d.get("inlier_ratio", np.nan)), residual=float(d.get("residual", np.nan)),
        scale=float(d.get("scale", T.s)), accepted=bool(d.get("accepted", True)), reason=str(d.get("reason", "")),
        similarity=float(d.get("similarity", np.nan)),
    )


def _report(result, n_seq: int, n_loops: int, removed: list, *, applied: bool) -> dict:
    return {
        "applied": applied,
        "nodes": len(result.world_from_node),
        "sequential_edges": n_seq,
        "loop_edges": n_loops,
        "iterations": int(result.iterations),
        "initial_cost": float(result.initial_cost),
        "final_cost": float(result.final_cost),
        "converged": bool(result.converged),
        "removed_outliers": [(e.chunk_i, e.chunk_j, e.frame_i, e.frame_j) for e in removed],
    }
