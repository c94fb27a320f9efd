"""The merge: complete part stores -> one store of the single-process layout.

Steps (each safe to repeat after a kill, see docs/SCALEOUT.md):

1. plan (:mod:`~da3stream.scaleout.plan`): the cut between consecutive parts
   and the registration joining them, written to ``merge-plan.json`` in the
   parts folder before anything moves;
2. assemble (:mod:`~da3stream.scaleout.assemble`): create the merged store,
   move each kept frame's pixels into it, write the renumbered tables
   (:mod:`~da3stream.scaleout.tables`), commit;
3. loops and graph (:mod:`~da3stream.scaleout.graph`): loop candidates between
   segments, then one global pose-graph optimisation over all windows with every
   loop; one pose rewrite commits the poses and the loops;
4. mark the store complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from da3stream.config import load_config, to_dict
from da3stream.errors import StoreError
from da3stream.io.store import RunStore
from da3stream.streaming.loops.graph import window_units
from da3stream.streaming.loops.records import WindowContext
from da3stream.streaming.resume import creation_incomplete, discard_incomplete_store
from da3stream.scaleout.assemble import assemble, create_merged
from da3stream.scaleout.graph import chain_units_fetch, cross_segment_loops, optimise_merged
from da3stream.scaleout.parts import PartTables, load_part, stored_prediction
from da3stream.scaleout.plan import plan_merge, read_plan, write_plan
from da3stream.scaleout.tables import Merged, merge_tables

log = logging.getLogger(__name__)

__all__ = ["PLAN_NAME", "merge_parts"]

PLAN_NAME = "merge-plan.json"
"""The merge plan's file in the parts folder."""


def merge_parts(part_paths: list, out: Path, config: Any, predictor: Optional[Any] = None,
                after_move: Optional[Callable[[int], None]] = None) -> dict:
    """Merge the complete part stores ``part_paths`` (in segment order) into the store ``out``.

    ``predictor`` verifies loop candidates between segments (None: no search across segments).
    Returns a small report (frames, windows, loops, seconds per step).
    """
    t0 = time.perf_counter()
    cfg = load_config(config)
    out = Path(out)
    part_paths = [Path(p) for p in part_paths]
    plan_path = part_paths[0].parent / PLAN_NAME
    parts = [load_part(p) for p in part_paths]
    if plan_path.exists():
        spans, _extra = read_plan(plan_path)
    else:
        spans = plan_merge(parts, cfg)
        write_plan(plan_path, spans, {"parts": [str(p.name) for p in part_paths]})
    t_plan = time.perf_counter()
    merged = merge_tables(parts, spans)
    if creation_incomplete(out):
        discard_incomplete_store(out)
    if not out.exists():
        extra = {"scaleout": {"parts": len(parts), "cuts": [int(p.frames["index"][s.lo]) for p, s in
                                                              zip(parts[1:], spans[1:])]}}
        create_merged(out, parts[0], to_dict(cfg), extra)
    if RunStore.open(out, "r").committed["id"] == 0:
        assemble(out, parts, merged, after_move=after_move)
    t_assemble = time.perf_counter()
    with RunStore.open(out, "a") as store:
        n_cross = n_loops = 0
        if store.committed["pose_epoch"] == 0:
            n_cross, n_loops = _loops_and_graph(store, merged, parts[0], cfg, predictor)
        store.set_status("complete", merge={"parts": len(parts)})
        n_frames, n_chunks = store.n_frames, store.n_chunks
    t_end = time.perf_counter()
    return {"store": str(out), "frames": n_frames, "chunks": n_chunks, "cross_segment_candidates": n_cross,
            "loops": n_loops, "seconds": {"plan": round(t_plan - t0, 4), "assemble": round(t_assemble - t_plan, 4),
                                          "graph": round(t_end - t_assemble, 4), "total": round(t_end - t0, 4)}}


def _loops_and_graph(store: RunStore, m: Merged, part0: PartTables, cfg, predictor) -> tuple[int, int]:
    """Step 3: cross-segment loops, the global graph, one pose rewrite. Returns (candidates, accepted loops)."""
    grid = part0.grid
    fetch = chain_units_fetch(store, grid)
    frames = store.frames_table(descriptors=store.has_descriptors)
    world = list(m.state.world_from_chunk)
    cross: list = []
    searchable = (cfg.loop.enabled and predictor is not None and store.has_descriptors and store.has_rgb
                  and int(m.part_of_chunk.max(initial=0)) > 0)
    if searchable:
        initial_poses = m.state.world_poses()

        def context(c: int, rows: np.ndarray) -> WindowContext:
            return WindowContext(
                chunk_id=c, rows=rows, indices=frames["index"][rows], timestamps=frames["timestamp"][rows],
                descriptors=frames["descriptor"][rows], world_from_cam=initial_poses[rows], images=store.rgb(rows),
                prediction=stored_prediction(store, rows, grid, frames), fetch=fetch, world_from_chunk=world[:c + 1])

        cross = cross_segment_loops(cfg, predictor, m.part_of_chunk, m.first_row, m.chunks["frame_stop"], frames,
                                    initial_poses, world, context)
    candidates = list(m.candidates) + cross
    accepted = [k for k, e in enumerate(candidates) if e.accepted]
    units = window_units({}, m.first_row, m.seq, len(world), fetch)
    new_world, removed = optimise_merged(world, m.seq, units, [candidates[k] for k in accepted], cfg.loop)
    for pos in removed:
        import dataclasses

        k = accepted[pos]
        candidates[k] = dataclasses.replace(candidates[k], accepted=False, reason="graph_outlier")
    m.state.world_from_chunk = new_world
    store.rewrite_poses(m.state.chunk_table(), m.state.world_poses(), loops=candidates)
    n_acc = sum(1 for e in candidates if e.accepted)
    log.info("merged %d windows: %d cross-segment candidates, %d loops", len(world), len(cross), n_acc)
    return len(cross), n_acc
