"""The merged store's tables, from the parts' tables and the merge plan (pure: arrays in, arrays out).

Rows and windows are renumbered part after part; every reference (a frame's
window, a window's frame range and overlap frames, a loop's windows and frames,
a point's window) is mapped to the merged numbering. Frames a part shares with
the previous one are found by source index. The initial ``world_from_chunk``
chains each part onto the previous one through the join of the plan; the
global pose graph (:mod:`da3stream.scaleout.graph`) starts from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import Prediction
from da3stream.errors import StoreError
from da3stream.io.store.records import ChunkStatus
from da3stream.streaming.loops.records import SeqEdge
from da3stream.streaming.stages.align import segment_start
from da3stream.streaming.state import RunState
from da3stream.scaleout.parts import PartTables
from da3stream.scaleout.plan import Span, sim3_or_none

__all__ = ["Merged", "merge_tables"]

QUALITY = ("inlier_ratio", "residual", "scale", "pose_disagreement", "status", "flag_reason")
FRAME_KEYS = ("index", "timestamp", "chunk_from_cam", "intrinsics", "descriptor")


@dataclass
class Merged:
    """The merged tables (column name -> array, as the store's reading API names them)."""

    frames: dict = field(default_factory=dict)
    chunks: dict = field(default_factory=dict)
    overlap: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    map: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)
    """The parts' loop candidates (LoopEdge) in merged numbering."""
    moves: list = field(default_factory=list)
    """(part, part row, merged row) of every frame whose pixels move into the merged store."""
    state: RunState = field(default_factory=RunState)
    """Chunk poses, per-frame chunk poses and overlap poses: :meth:`RunState.world_poses` derives frame poses."""
    seq: dict = field(default_factory=dict)
    """Merged window j -> :class:`SeqEdge` (j - 1, j), where j has a sequential alignment."""
    first_row: dict = field(default_factory=dict)
    """Merged window -> its first new row."""
    part_of_chunk: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """(C,) the part each merged window comes from."""


class _Numbering:
    """Part (row, window) -> merged (row, window)."""

    def __init__(self, parts: list[PartTables], spans: list[Span]) -> None:
        self.row_off, self.chunk_off, r, c = [], [], 0, 0
        for span in spans:
            self.row_off.append(r - span.lo)
            self.chunk_off.append(c)
            r += span.hi - span.lo
            c += span.n_windows
        self.spans = spans
        self.by_index: dict[int, int] = {}
        for p, (part, span) in enumerate(zip(parts, spans)):
            for row in range(span.lo, span.hi):
                self.by_index[int(part.frames["index"][row])] = self.row_off[p] + row
        self.parts = parts

    def row(self, p: int, row: int) -> int:
        """Merged row of part ``p``'s row (a shared frame dropped here maps through its source index)."""
        span = self.spans[p]
        if span.lo <= row < span.hi:
            return self.row_off[p] + row
        idx = int(self.parts[p].frames["index"][row])
        if idx not in self.by_index:
            raise StoreError(f"{self.parts[p].path}: frame {idx} is in no part's kept range")
        return self.by_index[idx]

    def chunk(self, p: int, w: int) -> int:
        return self.chunk_off[p] + w


def merge_tables(parts: list[PartTables], spans: list[Span]) -> Merged:
    """The merged tables (see the module docstring)."""
    num = _Numbering(parts, spans)
    m = Merged()
    cols: dict[str, list] = {}
    seg_off = 0
    for p, (part, span) in enumerate(zip(parts, spans)):
        rows = np.arange(span.lo, span.hi)
        for key in FRAME_KEYS:
            if key in part.frames:
                cols.setdefault("f." + key, []).append(part.frames[key][rows])
        cols.setdefault("f.chunk_id", []).append(part.frames["chunk_id"][rows] + num.chunk_off[p])
        m.moves += [(p, int(r), int(num.row_off[p] + r)) for r in rows]
        if p > 0:
            seg_off = int(m.chunks["segment"][-1]) + (1 if span.prev_from_cur is None else 0)
        for w in range(span.n_windows):
            _add_window(m, num, part, p, w, seg_off)
        _add_source(cols, part, parts, spans, p)
    for key, parts_cols in cols.items():
        group, name = key.split(".", 1)
        getattr(m, {"f": "frames", "s": "source"}[group])[name] = np.concatenate(parts_cols)
    m.frames["chunk_id"] = m.frames["chunk_id"].astype(np.int32)
    for key, vals in list(m.chunks.items()):
        m.chunks[key] = np.array(vals, dtype=str if key == "flag_reason" else None)
    m.part_of_chunk = np.array(m.part_of_chunk, np.int64)
    _chain(m, parts, spans, num)
    m.candidates = _candidates(parts, spans, num)
    return m


def _add_window(m: Merged, num: _Numbering, part: PartTables, p: int, w: int, seg_off: int) -> None:
    """One merged window: its chunk row, overlap rows and points."""
    span, ch = num.spans[p], part.chunks
    first = max(part.first_new_row(w), span.lo)
    stop = min(int(ch["frame_stop"][w]), span.hi)
    c = num.chunk(p, w)
    join = p > 0 and w == 0
    if join:  # the part's first window: its frames before the cut are the previous part's, as a carry
        carry_rows = np.arange(span.overlap_lo, span.lo)
        carry_cam = part.frames["chunk_from_cam"][carry_rows]
    else:
        sel = part.overlap["chunk_id"] == w
        carry_rows, carry_cam = part.overlap["row"][sel], part.overlap["chunk_from_cam"][sel]
    merged_carry = np.array([num.row(p, int(r)) for r in carry_rows], np.int64)
    start = int(merged_carry[0]) if merged_carry.size else num.row(p, first)
    pts = slice(int(ch["point_start"][w]), int(ch["point_stop"][w]))
    n_pts_before = int(m.chunks["point_stop"][-1]) if m.chunks.get("point_stop") else 0
    quality = span.quality if join else {k: ch[k][w] for k in QUALITY}
    cfp = (np.full(8, np.nan) if not join else
           (sim3_or_none(span.prev_from_cur).inverse().to_array() if span.prev_from_cur is not None else np.full(8, np.nan)))
    row = {"frame_start": start, "frame_stop": num.row(p, stop - 1) + 1, "n_new": stop - first,
           "point_start": n_pts_before, "point_stop": n_pts_before + (pts.stop - pts.start),
           "chunk_from_prev": cfp if join else ch["chunk_from_prev"][w],
           "segment": seg_off + int(ch["segment"][w]), **quality}
    for key, v in row.items():
        m.chunks.setdefault(key, []).append(v)
    m.part_of_chunk = list(m.part_of_chunk) + [p]
    for key, src in (("row", merged_carry), ("chunk_id", np.full(len(merged_carry), c, np.int32)),
                     ("chunk_from_cam", carry_cam)):
        m.overlap[key] = np.concatenate([m.overlap[key], src]) if key in m.overlap else np.asarray(src)
    for key in ("xyz", "rgb", "conf"):
        m.map[key] = np.concatenate([m.map[key], part.map[key][pts]]) if key in m.map else part.map[key][pts]
    ids = np.full(pts.stop - pts.start, c, np.int32)
    m.map["chunk_id"] = np.concatenate([m.map["chunk_id"], ids]) if "chunk_id" in m.map else ids
    m.first_row[c] = num.row(p, first)
    if len(merged_carry):
        m.state.carry_poses[c] = (merged_carry, np.asarray(carry_cam, np.float64))
    m.state.frame_chunk_ids.append(np.full(stop - first, c, np.int32))
    m.state.frame_chunk_from_cam.append(part.frames["chunk_from_cam"][first:stop])


def _add_source(cols: dict, part: PartTables, parts: list, spans: list, p: int) -> None:
    """The part's source rows between its cut and the next part's."""
    lo = int(part.frames["index"][spans[p].lo]) if p > 0 else -1
    hi = int(parts[p + 1].frames["index"][spans[p + 1].lo]) if p + 1 < len(parts) else None
    idx = part.source["index"]
    sel = (idx >= lo) & (idx < hi) if hi is not None else idx >= lo
    for key in ("index", "timestamp", "kept", "skipped_reason"):
        cols.setdefault("s." + key, []).append(part.source[key][sel])


def _chain(m: Merged, parts: list, spans: list, num: _Numbering) -> None:
    """Initial ``world_from_chunk``: part 0's own; each later part chained on through its join."""
    world: list[Sim3] = []
    status = m.chunks["status"]
    for p, (part, span) in enumerate(zip(parts, spans)):
        if p == 0:
            world_from_part = Sim3.identity()
        elif span.prev_from_cur is not None:
            world_from_part = world[-1] @ sim3_or_none(span.prev_from_cur) @ part.world_from_chunk[0].inverse()
        else:  # the join failed: a new segment, its first camera at the last known camera (as the engine does)
            m.state.world_from_chunk = list(world)
            first_cam = part.frames["chunk_from_cam"][span.overlap_lo:span.lo + 1]
            pred = Prediction(depth=np.zeros((len(first_cam), 1, 1), np.float32),
                              conf=np.zeros((len(first_cam), 1, 1), np.float32), world_from_cam=first_cam,
                              intrinsics=np.tile(np.eye(3), (len(first_cam), 1, 1)))
            state = dataclasses.replace(m.state, frame_chunk_from_cam=m.state.frame_chunk_from_cam[:len(world)])
            world_from_part = segment_start(state, pred, span.lo - span.overlap_lo) @ part.world_from_chunk[0].inverse()
        world += [world_from_part @ part.world_from_chunk[w] for w in range(span.n_windows)]
    m.state.world_from_chunk = world
    m.state.n_frames = int(m.frames["index"].shape[0])
    cfp = m.chunks["chunk_from_prev"]
    for j in range(1, len(world)):
        if np.all(np.isfinite(cfp[j])):
            r = float(m.chunks["residual"][j])
            m.seq[j] = SeqEdge(Sim3.from_array(cfp[j]).inverse(), float(m.chunks["inlier_ratio"][j]),
                               r if np.isfinite(r) else 1.0, int(status[j]) != ChunkStatus.OK)


def _candidates(parts: list, spans: list, num: _Numbering) -> list:
    """The parts' loop candidates whose windows and frames the merged store keeps, renumbered."""
    out = []
    for p, (part, span) in enumerate(zip(parts, spans)):
        for e in part.candidates:
            if max(e.chunk_i, e.chunk_j) >= span.n_windows:
                continue
            try:
                fi, fj = num.row(p, e.frame_i), num.row(p, e.frame_j)
            except StoreError:
                continue
            out.append(dataclasses.replace(e, chunk_i=num.chunk(p, e.chunk_i), chunk_j=num.chunk(p, e.chunk_j),
                                           frame_i=fi, frame_j=fj))
    return out
