"""Online loop closure: place recognition, geometric verification, pose-graph optimisation.

The pipeline drives one :class:`LoopCloser` per run:

* ``add_node`` / ``add_sequential_edge`` for every window (the sequential
  alignment and its quality record);
* ``on_window`` with the window's new frames. It queries the descriptor index
  (:mod:`~da3stream.streaming.loops.candidates`), verifies the best candidates
  on loop windows (:mod:`~da3stream.streaming.loops.verify`), applies the
  consistency gate (:mod:`~da3stream.streaming.loops.consistency`), optimises
  the Sim(3) pose graph of all windows as soon as a loop is accepted
  (:mod:`~da3stream.streaming.loops.graph`; a new loop whose robust weight stays
  below ``min_graph_weight`` is rejected as a graph outlier), and finally adds
  the new frames to the index. It returns every candidate it looked at
  (accepted or rejected, with a reason) and, when an optimisation ran, the new
  ``world_from_chunk`` of every window;
* ``restore`` after a resume, from what the store holds.

Travelled distance (exclusion and the consistency bound) is measured along
the *odometry* trajectory, the chain of sequential edges, which no loop
closure rewrites; units are those of the segment's first window (the world
frame for the first segment). Everything the loop closer keeps is rebuilt by
:meth:`LoopCloser.restore` from the store, and no decision depends on wall
time or thread timing. The loop config is validated by
:class:`~da3stream.config.LoopConfig` itself.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.config import AlignConfig, LoopConfig
from da3stream.core.types import Predictor
from da3stream.errors import AlignmentError, ShapeError, check_shape
from da3stream.io.store.records import LoopEdge
from da3stream.streaming.loops.candidates import find_candidates, query_positions
from da3stream.streaming.loops.consistency import Verified, decide
from da3stream.streaming.loops.graph import (
    as_stored, graph_report, median_depth, optimise_dropping_outliers, sequential_edges, window_units,
)
from da3stream.streaming.loops.index import DescriptorIndex
from da3stream.streaming.loops.nearby import TrajectoryQuery, nearby_candidates
from da3stream.streaming.loops.records import (
    FrameData, LoopUpdate, SeqEdge, WindowContext, canonical_sim3, loop_from_record, unverified,
)
from da3stream.streaming.loops.verify import LoopVerifier, around
from da3stream.streaming.window import is_fallback

log = logging.getLogger(__name__)

__all__ = ["LoopEdge", "FrameData", "WindowContext", "LoopUpdate", "LoopCloser", "NO_LOOP_WINDOW", "canonical_sim3",
           "loop_window_cost"]

NO_LOOP_WINDOW = frozenset({"adjacent_chunk", "direction_mismatch", "not_verified", "over_budget", "fetch_failed",
                            "no_stored_images"})
"""Candidate reasons given before a loop window ran (they cost no network time and no verification budget)."""


def loop_window_cost(cfg: LoopConfig) -> int:
    """Nominal network frames of one loop window (what the verification budget counts)."""
    return 2 * (2 * cfg.window_half + 1)


class LoopCloser:
    """Online loop closure for one run (see the module docstring).

    Args:
        loop_cfg: the ``loop`` section of the config.
        align_cfg: the ``align`` section (registration parameters reused for verification).
        predictor: runs the loop windows.
        seed: seeds every random choice (correspondence sampling).
    """

    def __init__(self, loop_cfg: LoopConfig, align_cfg: AlignConfig, predictor: Predictor, *, seed: int = 0) -> None:
        self.cfg = loop_cfg
        self.align = align_cfg
        self.predictor = predictor
        self.seed = int(seed)
        self._reset()

    def _reset(self) -> None:
        self._index: Optional[DescriptorIndex] = None
        self._span_starts: list[int] = []  # first index entry of each indexed window, ascending
        self._span_chunks: list[int] = []  # the window (chunk id, ascending) of each span
        self._seq: dict[int, SeqEdge] = {}  # j -> edge (j-1, j)
        self._roots: set[int] = set()  # first windows of segments
        self._odom: dict[int, Sim3] = {}  # odom_from_chunk
        self._loops: list[LoopEdge] = []  # accepted loops, in acceptance order
        self._unit: dict[int, float] = {}  # median depth of each window's first new frame (chunk units)
        self._first_row: dict[int, int] = {}
        self._last_centre: Optional[np.ndarray] = None
        self._last_dist = 0.0
        self._disabled_logged = False
        # every indexed frame, descriptor or not (the trajectory candidates' and the spans' entries)
        self._rows = np.zeros(0, np.int64)
        self._entry_frames = np.zeros(0, np.int64)
        self._entry_chunk = np.zeros(0, np.int64)
        self._times = np.zeros(0, np.float64)
        self._dists = np.zeros(0, np.float64)
        self._centres = np.zeros((0, 3), np.float64)  # chunk-frame camera centres
        self._dirs = np.zeros((0, 3), np.float64)  # chunk-frame viewing directions
        self._desc_offset: Optional[int] = None  # entry of the place index's first descriptor
        self._committed = 0  # frames committed (the verification budget grows with them)
        self._spent = 0  # nominal network frames spent on loop windows
        self._verifier = LoopVerifier(self.cfg, self.align, self.predictor, self.seed)

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
        self._seq[j] = SeqEdge(meas, float(inlier_ratio), float(residual), bool(gated))
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
        _check_context(ctx, rows)
        if c not in self._odom:
            self.add_node(c, ctx.world_from_chunk[c])
        if ctx.descriptors is None and not self.cfg.candidates_from_trajectory:
            if not self._disabled_logged:
                log.info("loop closure disabled: the predictor gives no descriptors")
                self._disabled_logged = True
            return LoopUpdate()
        desc = None
        if ctx.descriptors is not None:
            desc = np.asarray(ctx.descriptors, dtype=np.float32)
            check_shape("WindowContext.descriptors", desc, (n, None), "f")
        if n == 0:
            return LoopUpdate()
        # Nothing is committed until the end, so a window the pipeline retries (out of memory) starts clean.
        dists, last = self._frame_distances(c, ctx.prediction.world_from_cam)
        self._unit[c] = median_depth(as_stored(ctx.prediction.depth[0]))  # overwritten if the window is retried

        edges, new_world, report, spent = (self._close_loops(ctx, desc, dists) if self._rows.size
                                           else ([], None, None, 0))

        self._first_row[c] = int(rows[0])
        self._last_centre, self._last_dist = last
        self._spent += spent
        self._committed += n
        self._index_window(c, desc, ctx.timestamps, dists, ctx.indices, rows, ctx.prediction.world_from_cam)
        return LoopUpdate(edges=edges, world_from_chunk=new_world, graph_report=report)

    # ------------------------------------------------------------------ restore
    def restore(self, *, chunk_rows: dict, frame_rows: dict, loops: list, world_from_chunk: list,
                n_verified: int = 0) -> None:
        """Rebuild the state from the store's chunks table, frames table and accepted loops.

        Args:
            chunk_rows: chunks table (``chunk_from_prev`` (C, 8), ``inlier_ratio``,
                ``residual``, ``status``, ``frame_stop``, ``n_new``).
            frame_rows: frames table (``index``, ``timestamp``, ``chunk_id``,
                ``chunk_from_cam`` (F, 4, 4), ``descriptor`` (F, D) or None).
            loops: accepted loop edges (:class:`LoopEdge` or dicts with the same keys;
                ``i_from_j`` a Sim3 or its (8,) array).
            world_from_chunk: current ``world_from_chunk`` per window (only its length is used).
            n_verified: loop candidates that ran a loop window (the verification budget already spent).
        """
        self._reset()
        cfp = np.asarray(chunk_rows["chunk_from_prev"], dtype=np.float64)
        n_chunks = cfp.shape[0]
        if len(world_from_chunk) != n_chunks:
            raise ShapeError(f"LoopCloser.restore: {len(world_from_chunk)} world_from_chunk for {n_chunks} chunks")
        status = np.asarray(chunk_rows["status"])
        reasons = chunk_rows.get("flag_reason", [""] * n_chunks)
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
                self._seq[c] = SeqEdge(i_from_j, float(inl[c]), r, is_fallback(status[c], reasons[c]))
                self._odom[c] = self._odom[c - 1] @ i_from_j
            else:
                self.add_node(c, world_from_chunk[c])
            sel = np.flatnonzero(chunk_id == c)
            if sel.size == 0:
                continue
            self._first_row[c] = int(sel[0])
            dists, (self._last_centre, self._last_dist) = self._frame_distances(c, chunk_from_cam[sel])
            self._index_window(c, None if desc is None else np.asarray(desc)[sel], times[sel], dists, indices[sel],
                               sel.astype(np.int64), chunk_from_cam[sel])
        self._committed = int(chunk_id.size)
        self._spent = int(n_verified) * self._loop_window_cost()
        self._loops = [loop_from_record(rec) for rec in loops]
        self._loops = [e for e in self._loops if e.accepted]

    # ------------------------------------------------------------------ internals
    def _index_window(self, c: int, desc, times, dists, indices, rows, chunk_from_cam) -> None:
        """Add window ``c``'s frames to the entries (and the place index, with descriptors); record where they start."""
        first = int(self._rows.size)
        if desc is not None:
            index = self._ensure_index(desc.shape[1])
            if self._desc_offset is None:  # 0, or the frames restored without descriptors
                self._desc_offset = first - len(index)
            if len(index) + self._desc_offset == first:
                index.add(desc, times, dists, indices, rows)
        P = np.asarray(chunk_from_cam, np.float64)
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.int64)])
        self._entry_frames = np.concatenate([self._entry_frames, np.asarray(indices, np.int64)])
        self._entry_chunk = np.concatenate([self._entry_chunk, np.full(len(rows), c, np.int64)])
        self._times = np.concatenate([self._times, np.asarray(times, np.float64)])
        self._dists = np.concatenate([self._dists, np.asarray(dists, np.float64)])
        self._centres = np.concatenate([self._centres, P[:, :3, 3]])
        self._dirs = np.concatenate([self._dirs, P[:, :3, 2]])
        self._span_starts.append(first)
        self._span_chunks.append(c)

    def _world_dir(self, ctx: WindowContext, entry: int) -> np.ndarray:
        """World viewing direction of an indexed frame under the current ``world_from_chunk``."""
        return ctx.world_from_chunk[int(self._entry_chunk[entry])].R @ self._dirs[entry]

    def _loop_window_cost(self) -> int:
        return loop_window_cost(self.cfg)

    def _chunk_of_entry(self, entry: int) -> int:
        return self._span_chunks[bisect.bisect_right(self._span_starts, entry) - 1]

    def _entry_span(self, c: int) -> tuple[int, int]:
        """``[first, stop)`` index entries of window ``c`` (which has been indexed)."""
        p = bisect.bisect_left(self._span_chunks, c)
        stop = self._span_starts[p + 1] if p + 1 < len(self._span_starts) else int(self._rows.size)
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

    def _candidates(self, ctx: WindowContext, desc, dists: np.ndarray) -> list:
        """Descriptor hits (best first), then trajectory neighbours that describe another revisit."""
        cfg = self.cfg
        out = []
        if desc is not None and self._index is not None and len(self._index):
            out = [dataclasses.replace(h, entry=h.entry + self._desc_offset)
                   for h in find_candidates(self._index, desc, ctx.timestamps, dists, ctx.indices, cfg)]
        if not cfg.candidates_from_trajectory:
            return out
        n = len(ctx.rows)
        q = query_positions(n, cfg.max_queries_per_chunk)
        W = ctx.world_from_chunk
        s = np.array([T.s for T in W])[self._entry_chunk]
        R = np.stack([T.R for T in W])[self._entry_chunk]
        t = np.stack([T.t for T in W])[self._entry_chunk]
        centres = s[:, None] * np.einsum("nij,nj->ni", R, self._centres) + t
        dirs = np.einsum("nij,nj->ni", R, self._dirs)
        wfc = np.asarray(ctx.world_from_cam, np.float64)[q]
        scale = W[int(ctx.chunk_id)].s
        query = TrajectoryQuery(wfc[:, :3, 3], wfc[:, :3, 2], np.asarray(ctx.timestamps)[q], dists[q],
                                np.asarray(ctx.indices)[q], [median_depth(ctx.prediction.depth[k]) * scale for k in q], q)
        taken = [(int(ctx.indices[c.query]), int(self._entry_frames[c.entry])) for c in out]
        for cand in nearby_candidates(centres, dirs, self._times, self._dists, self._entry_frames, query, cfg):
            qf, mf = int(ctx.indices[cand.query]), int(self._entry_frames[cand.entry])
            if not any(abs(qf - a) <= cfg.nms_frames and abs(mf - b) <= cfg.nms_frames for a, b in taken):
                out.append(cand)
                taken.append((qf, mf))
        return out

    def _close_loops(self, ctx: WindowContext, desc, dists: np.ndarray):
        """``(edges, new world_from_chunk or None, graph report or None, budget spent)`` of the window's candidates."""
        cfg = self.cfg
        c = int(ctx.chunk_id)
        edges: list[LoopEdge] = []
        verified: list[Verified] = []
        n_verified, spent, cost = 0, 0, self._loop_window_cost()
        budget = cfg.verify_budget * (self._committed + len(ctx.rows)) - self._spent
        cos_max = np.cos(np.radians(cfg.trajectory_max_angle_deg))
        for cand in self._candidates(ctx, desc, dists):
            entry, qi = cand.entry, cand.query
            chunk_i = self._chunk_of_entry(entry)
            base = dict(chunk_i=chunk_i, chunk_j=c, frame_i=int(self._rows[entry]), frame_j=int(ctx.rows[qi]),
                        similarity=cand.similarity)
            if chunk_i >= c - 1:
                edges.append(unverified(base, "adjacent_chunk"))
                continue
            if float(self._world_dir(ctx, entry) @ np.asarray(ctx.world_from_cam[qi])[:3, 2]) < cos_max:
                edges.append(unverified(base, "direction_mismatch"))  # the cameras look elsewhere: no network time
                continue
            if n_verified >= cfg.max_verifications:
                edges.append(unverified(base, "not_verified"))
                continue
            if spent + cost > budget:
                edges.append(unverified(base, "over_budget"))
                continue
            n_verified += 1
            first, stop = self._entry_span(chunk_i)
            old_rows = self._rows[around(entry, first, stop, cfg.window_half)]
            travel = abs(float(dists[qi]) - float(self._dists[entry]))
            outcome = self._verifier.verify(ctx, base, old_rows, qi, travel)
            reason = outcome.reason if isinstance(outcome, LoopEdge) else ""
            if reason not in NO_LOOP_WINDOW:
                spent += cost
            if isinstance(outcome, LoopEdge):
                edges.append(outcome)
            else:
                verified.append(dataclasses.replace(outcome, pos=len(edges)))
                edges.append(outcome.edge)
        accepted_pos = decide(verified, edges, cfg)
        if not accepted_pos:
            return edges, None, None, spent
        new_world, report, outliers = self._optimise(ctx, [edges[p] for p in accepted_pos])
        for k, p in enumerate(accepted_pos):
            if k in outliers:
                edges[p] = dataclasses.replace(edges[p], accepted=False, reason="graph_outlier")
        return edges, new_world, report, spent

    def _optimise(self, ctx: WindowContext, new_loops: list[LoopEdge]):
        """``(new world_from_chunk or None, report, positions of new loops dropped as graph outliers)``."""
        n_nodes = int(ctx.chunk_id) + 1
        units = window_units(self._unit, self._first_row, self._seq, n_nodes, ctx.fetch)
        seq_edges = sequential_edges(self._seq, units, self.cfg)
        out = optimise_dropping_outliers(ctx.world_from_chunk, seq_edges, self._loops, new_loops, units, self.cfg)
        removed = [new_loops[k] for k in out.removed]
        if not out.kept:
            log.info("window %d: every new loop was a pose-graph outlier; no correction", ctx.chunk_id)
            report = graph_report(out.result, len(seq_edges), len(self._loops), removed, applied=False)
            return None, report, set(out.removed)
        self._loops += [new_loops[k] for k in out.kept]
        new_world = [canonical_sim3(T) for T in out.result.world_from_node]
        log.info(
            "window %d: %d loop(s) closed; pose graph %d nodes, %d edges, cost %.4g -> %.4g in %d iterations",
            ctx.chunk_id, len(out.kept), n_nodes, out.n_edges, out.result.initial_cost, out.result.final_cost,
            out.result.iterations,
        )
        report = graph_report(out.result, len(seq_edges), len(self._loops), removed, applied=True)
        return new_world, report, set(out.removed)


def _check_context(ctx: WindowContext, rows: np.ndarray) -> None:
    """Shape checks of a :class:`WindowContext` (``rows``: its rows as int64)."""
    c, n = int(ctx.chunk_id), rows.shape[0]
    check_shape("WindowContext.rows", rows, ("n",))
    check_shape("WindowContext.indices", np.asarray(ctx.indices), (n,))
    check_shape("WindowContext.timestamps", np.asarray(ctx.timestamps), (n,))
    check_shape("WindowContext.world_from_cam", np.asarray(ctx.world_from_cam), (n, 4, 4))
    if len(ctx.prediction) != n:
        raise ShapeError(f"WindowContext.prediction: expected {n} frames, got {len(ctx.prediction)}")
    if len(ctx.world_from_chunk) != c + 1:
        raise ShapeError(
            f"WindowContext.world_from_chunk: expected {c + 1} entries, got {len(ctx.world_from_chunk)}")
