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

The loop search reads only the merged store and the parts' small tables, and
its windows are independent, so the Ray driver spreads it over every worker.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["PLAN_NAME", "finish_merge", "merge_parts", "prepare_merge", "search_loops"]

PLAN_NAME = "merge-plan.json"
"""The merge plan's file in the parts folder."""


def merge_parts(part_paths: list, out: Path, config: Any, predictor: Optional[Any] = None,
                after_move: Optional[Callable[[int], None]] = None) -> dict:
    """Merge the complete part stores ``part_paths`` (in segment order) into the store ``out``, in this process.

    ``predictor`` verifies loop candidates between segments (None: no search across segments).
    The Ray driver runs the same three phases, with the loop search spread over its workers:
    :func:`prepare_merge`, :func:`search_loops`, :func:`finish_merge`.
    """
    t0 = time.perf_counter()
    prepare_merge(part_paths, out, config, after_move=after_move)
    t1 = time.perf_counter()
    found = search_loops(part_paths, out, config, predictor)
    report = finish_merge(part_paths, out, config, [found])
    report["seconds"] = {"prepare": round(t1 - t0, 4), "loops_and_graph": round(time.perf_counter() - t1, 4)}
    return report


def _merged(part_paths: list, config: Any) -> tuple[Any, list, Merged, list]:
    """(config, part tables, merged tables, spans): the plan read back, or made and written."""
    cfg = load_config(config)
    part_paths = [Path(p) for p in part_paths]
    plan_path = part_paths[0].parent / PLAN_NAME
    parts = [load_part(p) for p in part_paths]
    if plan_path.exists():
        spans, _extra = read_plan(plan_path)
    else:
        spans = plan_merge(parts, cfg)
        write_plan(plan_path, spans, {"parts": [str(p.name) for p in part_paths]})
    return cfg, parts, merge_tables(parts, spans), spans


def prepare_merge(part_paths: list, out: Path, config: Any,
                  after_move: Optional[Callable[[int], None]] = None) -> None:
    """Steps 1-2: the plan, then the merged store assembled and committed (nothing done twice)."""
    out = Path(out)
    if not creation_incomplete(out):
        store = RunStore.open(out, "r")
        if store.attrs_get("scaleout") is None:
            raise StoreError(f"{out}: exists and is not a merged store; choose another output")
        if store.committed["id"] > 0:
            return
    cfg, parts, merged, spans = _merged(part_paths, config)
    if creation_incomplete(out):
        discard_incomplete_store(out)
    if not out.exists():
        cuts = [int(p.frames["index"][s.lo]) for p, s in zip(parts[1:], spans[1:])]
        create_merged(out, parts[0], to_dict(cfg), {"scaleout": {"parts": len(parts), "cuts": cuts}})
    assemble(out, parts, merged, after_move=after_move)


def search_loops(part_paths: list, out: Path, config: Any, predictor: Optional[Any],
                 windows: Optional[set] = None) -> dict:
    """Step 3a: loop candidates between segments for the query ``windows`` (None: all); reads the merged store.

    Returns ``{"edges": candidates found, "demoted": positions of the parts' candidates that lose their
    place in their window's verification budget}`` (:func:`~da3stream.scaleout.graph.cross_segment_loops`).
    """
    cfg, parts, m, _spans = _merged(part_paths, config)
    store = RunStore.open(out, "r")
    if not (cfg.loop.enabled and predictor is not None and store.has_descriptors and store.has_rgb
            and int(m.part_of_chunk.max(initial=0)) > 0) or store.committed["pose_epoch"] > 0:
        return {"edges": [], "demoted": []}
    grid = parts[0].grid
    fetch = chain_units_fetch(store, grid)
    frames = store.frames_table(descriptors=True)
    world = list(m.state.world_from_chunk)
    initial_poses = m.state.world_poses()

    def context(c: int, rows: np.ndarray) -> WindowContext:
        return WindowContext(
            chunk_id=c, rows=rows, indices=frames["index"][rows], timestamps=frames["timestamp"][rows],
            descriptors=frames["descriptor"][rows], world_from_cam=initial_poses[rows], images=store.rgb(rows),
            prediction=stored_prediction(store, rows, grid, frames), fetch=fetch, world_from_chunk=world[:c + 1])

    edges, demoted = cross_segment_loops(cfg, predictor, m.part_of_chunk, m.first_row, m.chunks["frame_stop"],
                                         frames, initial_poses, context, m.candidates, windows)
    return {"edges": edges, "demoted": demoted}


def finish_merge(part_paths: list, out: Path, config: Any, found: list) -> dict:
    """Steps 3b-4: the global pose graph with every loop, one pose rewrite, the store marked complete.

    ``found``: what :func:`search_loops` returned, for every share of the windows.
    """
    cfg, parts, m, _spans = _merged(part_paths, config)
    cross = sorted([e for f in found for e in f["edges"]], key=lambda e: (e.chunk_j, e.chunk_i, e.frame_j, e.frame_i))
    for pos in sorted({p for f in found for p in f["demoted"]}):
        m.candidates[pos] = dataclasses.replace(m.candidates[pos], accepted=False, reason="not_verified")
    with RunStore.open(out, "a") as store:
        n_loops = store.committed["n_loops"]
        if store.committed["pose_epoch"] == 0:
            n_loops = _graph(store, m, parts[0], cfg, cross)
        store.set_status("complete", merge={"parts": len(parts)})
        return {"store": str(out), "frames": store.n_frames, "chunks": store.n_chunks,
                "cross_segment_candidates": len(cross), "loops": int(n_loops)}


def _graph(store: RunStore, m: Merged, part0: PartTables, cfg, cross: list) -> int:
    """The global graph over every window with every accepted loop; one pose rewrite. Returns the loops kept."""
    fetch = chain_units_fetch(store, part0.grid)
    world = list(m.state.world_from_chunk)
    candidates = list(m.candidates) + list(cross)
    accepted = [k for k, e in enumerate(candidates) if e.accepted]
    units = window_units({}, m.first_row, m.seq, len(world), fetch)
    new_world, removed = optimise_merged(world, m.seq, units, [candidates[k] for k in accepted], cfg.loop)
    for pos in removed:
        k = accepted[pos]
        candidates[k] = dataclasses.replace(candidates[k], accepted=False, reason="graph_outlier")
    m.state.world_from_chunk = new_world
    store.rewrite_poses(m.state.chunk_table(), m.state.world_poses(), loops=candidates)
    n_acc = sum(1 for e in candidates if e.accepted)
    log.info("merged %d windows: %d cross-segment candidates, %d loops", len(world), len(cross), n_acc)
    return n_acc
