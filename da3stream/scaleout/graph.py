"""The merge's one call into the engine's pose graph, and its loop search across segments.

:func:`optimise_merged` is the only place the merge touches the pose graph: the
engine's sequential edges (:func:`~da3stream.streaming.loops.graph.sequential_edges`,
information from each window's alignment quality and depth unit) and its robust
optimisation with outlier dropping
(:func:`~da3stream.streaming.loops.graph.optimise_dropping_outliers`), over every
window of every segment. Should the engine's graph change, this function is what adapts.

:func:`cross_segment_loops` searches loops that the parts could not see: each
window of segment k queries a place index of the frames of segments before k
(the engine's :class:`~da3stream.streaming.loops.index.DescriptorIndex` and
:func:`~da3stream.streaming.loops.candidates.find_candidates`), verifies the
best candidates on loop windows (:class:`~da3stream.streaming.loops.verify.LoopVerifier`,
which runs the predictor) and applies the consistency gate
(:func:`~da3stream.streaming.loops.consistency.decide`), exactly as the loop closer
does for one window.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Callable, Optional

import numpy as np

from da3stream.config import Config, LoopConfig
from da3stream.core.types import Predictor
from da3stream.streaming.loops.candidates import find_candidates
from da3stream.streaming.loops.consistency import Verified, decide
from da3stream.streaming.loops.graph import optimise_dropping_outliers, sequential_edges
from da3stream.streaming.loops.index import DescriptorIndex
from da3stream.streaming.loops.records import WindowContext, canonical_sim3
from da3stream.streaming.loops.verify import LoopVerifier, around

log = logging.getLogger(__name__)

__all__ = ["chain_units_fetch", "cross_segment_loops", "optimise_merged", "travelled"]


def optimise_merged(world_from_chunk: list, seq: dict, units: np.ndarray, loops: list,
                    cfg: LoopConfig) -> tuple[list, list]:
    """``(world_from_chunk, positions of loops dropped as graph outliers)`` after the global optimisation.

    With no loop the sequential chain is already the optimum and is returned as is.
    """
    if not loops:
        return list(world_from_chunk), []
    edges = sequential_edges(seq, units, cfg)
    out = optimise_dropping_outliers(list(world_from_chunk), edges, [], list(loops), units, cfg)
    if not out.kept:
        return list(world_from_chunk), list(out.removed)
    log.info("merged pose graph: %d windows, %d edges, cost %.4g -> %.4g in %d iterations",
             len(world_from_chunk), out.n_edges, out.result.initial_cost, out.result.final_cost, out.result.iterations)
    return [canonical_sim3(T) for T in out.result.world_from_node], list(out.removed)


def travelled(world_from_cam: np.ndarray) -> np.ndarray:
    """(F,) distance travelled along the camera centres up to each frame (rows in time order)."""
    c = np.asarray(world_from_cam, np.float64)[:, :3, 3]
    step = np.linalg.norm(np.diff(c, axis=0), axis=1) if len(c) > 1 else np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(step)])


def cross_segment_loops(cfg: Config, predictor: Predictor, part_of_chunk: np.ndarray, first_row: dict,
                        frame_stop: np.ndarray, frames: dict, world_from_cam: np.ndarray,
                        context: Callable[[int, np.ndarray], WindowContext], own: list,
                        windows: Optional[set] = None) -> tuple[list, list]:
    """``(candidates between segments, positions in own demoted)``, ``accepted`` set by the engine's gates.

    ``context(c, rows)`` builds window ``c``'s :class:`WindowContext` for its new frames ``rows``.
    ``own``: the parts' candidates (LoopEdge, merged numbering). Each window spends the engine's per-window
    verification budget (``loop.max_verifications``) on its best candidates by similarity, its part's and
    those found here together, as one process searching both would: a part's verified candidate that
    ranks below the budget is demoted (its position is returned), one within it keeps its outcome.
    ``windows``: search only these query windows (the merge spreads windows over the workers); None: all.
    Windows are independent here (every gate reads the trajectory before the merge's graph), so any split
    of them gives the same result.
    """
    lc = cfg.loop
    index = DescriptorIndex(frames["descriptor"].shape[1], backend=lc.index_backend, device=lc.index_device,
                            ivf_min_size=lc.ivf_min_size, storage_dtype=lc.index_dtype, seed=cfg.seed)
    verifier = LoopVerifier(lc, cfg.align, predictor, cfg.seed)
    dists = travelled(world_from_cam)
    spans: list[tuple[int, int]] = []  # (first index entry, window) per indexed window
    by_window: dict = {}
    for pos, e in enumerate(own):
        by_window.setdefault(e.chunk_j, []).append((pos, e))
    found: dict = {}  # window -> its candidates across segments (cheap: descriptor search only)
    indexed_part = -1
    for c in range(len(part_of_chunk)):
        p = int(part_of_chunk[c])
        while indexed_part < p - 1:  # index every window of the parts before this one
            indexed_part += 1
            for w in np.flatnonzero(part_of_chunk == indexed_part):
                rows = np.arange(first_row[int(w)], int(frame_stop[w]))
                spans.append((len(index), int(w)))
                index.add(frames["descriptor"][rows], frames["timestamp"][rows], dists[rows], frames["index"][rows],
                          rows)
        rows = np.arange(first_row[c], int(frame_stop[c])) if c in first_row else np.zeros(0, np.int64)
        if p == 0 or len(index) == 0 or rows.size == 0:
            continue
        # the windows of part p see exactly the parts before p: the index as it stands now
        found[c] = find_candidates(index, frames["descriptor"][rows], frames["timestamp"][rows], dists[rows],
                                   frames["index"][rows], lc)
    allowed = _within_budget(found, own, int(frames["index"].shape[0]), lc)
    out: list = []
    demoted: list = []
    for c in sorted(found):
        if windows is not None and c not in windows:
            continue
        rows = np.arange(first_row[c], int(frame_stop[c]))
        edges, demote = _window_loops(index, spans, verifier, context(c, rows), dists, lc, by_window.get(c, []),
                                      found[c], allowed)
        out += edges
        demoted += demote
    return out, demoted


def _within_budget(found: dict, own: list, n_frames: int, lc: LoopConfig) -> set:
    """``(window, position)`` of the cross-segment candidates the engine's verification budget allows.

    The budget (``loop.verify_budget`` x the frames of the whole run, in nominal loop-window frames) is what
    one process would have; the parts spent some of it already. The rest goes to the best candidates by
    descriptor similarity over all windows, so the choice does not depend on how windows are split over
    the workers.
    """
    from da3stream.streaming.loops.closer import NO_LOOP_WINDOW, loop_window_cost

    cost = loop_window_cost(lc)
    spent = cost * sum(1 for e in own if e.reason not in NO_LOOP_WINDOW)
    n_left = max(0, int((lc.verify_budget * n_frames - spent) // cost))
    ranked = sorted((-cand.similarity, c, k) for c, cands in found.items() for k, cand in enumerate(cands))
    return {(c, k) for _s, c, k in ranked[:n_left]}


def _window_loops(index, spans: list, verifier: LoopVerifier, ctx: WindowContext, dists: np.ndarray,
                  lc: LoopConfig, own: list, found: list, allowed: set) -> tuple[list, list]:
    """One window's candidates across segments, verified and gated (the loop closer's per-window steps),
    sharing the verification budget with the window's own part candidates ``own`` ((position, LoopEdge))."""
    from da3stream.streaming.loops.records import unverified

    starts = [s for s, _ in spans]
    rows = np.asarray(ctx.rows)
    ranked = sorted([(-e.similarity, 0, k) for k, (_pos, e) in enumerate(own) if e.reason != "adjacent_chunk"]
                    + [(-cand.similarity, 1, k) for k, cand in enumerate(found)])
    edges, verified, demoted, n_verified = [], [], [], 0
    for _neg_sim, kind, k in ranked:
        if kind == 0:  # the part's candidate: verified there (or left unverified by the part's budget)
            pos, e = own[k]
            if e.reason != "not_verified":
                if n_verified < lc.max_verifications:
                    n_verified += 1
                else:
                    demoted.append(pos)
            continue
        cand = found[k]
        j = bisect.bisect_right(starts, cand.entry) - 1
        first, chunk_i = spans[j]
        stop = spans[j + 1][0] if j + 1 < len(spans) else len(index)
        base = dict(chunk_i=chunk_i, chunk_j=int(ctx.chunk_id), frame_i=int(index.rows[cand.entry]),
                    frame_j=int(rows[cand.query]), similarity=cand.similarity)
        if n_verified >= lc.max_verifications:
            edges.append(unverified(base, "not_verified"))
            continue
        if (int(ctx.chunk_id), k) not in allowed:
            edges.append(unverified(base, "over_budget"))
            continue
        n_verified += 1
        old_rows = np.asarray(index.rows[around(cand.entry, first, stop, lc.window_half)], np.int64)
        travel = abs(float(dists[rows[cand.query]]) - float(index.distances[cand.entry]))
        outcome = verifier.verify(ctx, base, old_rows, cand.query, travel)
        if isinstance(outcome, Verified):
            verified.append(dataclasses.replace(outcome, pos=len(edges)))
            edges.append(outcome.edge)
        else:
            edges.append(outcome)
    decide(verified, edges, lc)
    return edges, demoted


def chain_units_fetch(store, grid):
    """rows -> stored frame data of the merged store (what window units and loop verification read)."""
    from da3stream.streaming.stages.commit import StoreStage

    return StoreStage(store.path, None, None, store=store, grid=grid).fetch_frames
