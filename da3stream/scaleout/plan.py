"""The merge plan: where each part hands over to the next, and the Sim(3) that joins them.

For consecutive parts A and B the plan picks a *cut*: a frame of B's first
window from which both keyframe filters keep the same frames (both kept the
frame before it and agree on every frame they both read after it). The merged
store takes A's frames before the cut and B's from it on, so its frame coverage
is that of one process reading the whole source. Preferred cuts start a window
of A (no window of A is shortened) and leave at least ``overlap`` shared frames
before them (they become B's first window's overlap frames, as a carry would).

B's first window is then registered against A on every frame both stored,
with the engine's sequential registration and gating
(:meth:`~da3stream.streaming.stages.align.AlignStage.register`), A's frames
brought into the frame of A's last kept window. The result is the merged
sequential edge into B's first window. The plan is a small JSON document: the
merge writes it before it moves anything, and a rerun after a kill reads it back.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.config import Config
from da3stream.errors import StoreError
from da3stream.io.store import RunStore
from da3stream.streaming.stages.align import AlignStage
from da3stream.scaleout.parts import PartTables, stored_prediction

log = logging.getLogger(__name__)

__all__ = ["Span", "choose_cut", "plan_merge", "read_plan", "write_plan"]


@dataclass
class Span:
    """What the merged store takes of one part."""

    lo: int
    """First ``frames/`` row of the part kept (its rows before it are the previous part's frames)."""
    hi: int
    """Row end (exclusive)."""
    n_windows: int
    """Windows ``[0, n_windows)`` of the part are kept (the last may lose frames beyond ``hi``)."""
    overlap_lo: int = 0
    """Rows ``[overlap_lo, lo)`` of the part's first window become its overlap frames (parts after the first)."""
    prev_from_cur: Optional[list] = None
    """(8,) Sim(3) previous part's last kept window <- this part's first window (None: not registered)."""
    quality: Optional[dict] = None
    """Stored quality columns of the join (``AlignmentQuality.to_dict``)."""


def _kept_between(index: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return index[(index >= lo) & (index < hi)]


def choose_cut(a: PartTables, b: PartTables, overlap: int) -> tuple[int, int]:
    """``(r, overlap_lo)``: B's first kept row and the first row of its first window's overlap frames."""
    a_index, b_index = a.frames["index"], b.frames["index"]
    n0 = int(b.chunks["frame_stop"][0])
    r_max = n0 - overlap if b.n_chunks > 1 else n0 - 1  # the second window's carry stays among kept rows
    a_end = int(a.source["index"].max()) + 1 if a.source["index"].size else 0
    a_rows = {int(i): k for k, i in enumerate(a_index)}
    a_starts = {int(a_index[a.first_new_row(w)]) for w in range(a.n_chunks) if a.chunks["n_new"][w] > 0}
    valid = []
    for r in range(1, max(r_max, 0) + 1):
        x = int(b_index[r - 1])
        if x in a_rows and np.array_equal(_kept_between(a_index, x, a_end), _kept_between(b_index, x, a_end)):
            valid.append(r)
    if not valid:
        raise StoreError(f"{b.path}: shares no frame with {a.path} from which both keep the same keyframes; "
                         "the segments overlap too little")
    floor = min(overlap, valid[-1])
    ranked = ([r for r in valid if r >= floor and int(b_index[r]) in a_starts] + [r for r in valid if r >= floor]
              + valid)
    r = ranked[0]
    lo = r - 1
    while lo > 0 and int(b_index[lo - 1]) in a_rows and a_rows[int(b_index[lo - 1])] == a_rows[int(b_index[lo])] - 1:
        lo -= 1
    return r, lo


def _windows_before(part: PartTables, hi: int) -> int:
    """Windows whose first new row lies below ``hi``."""
    return int(sum(1 for w in range(part.n_chunks) if part.first_new_row(w) < hi))


def plan_merge(parts: list[PartTables], cfg: Config) -> list[Span]:
    """The spans of every part, with the registration joining each part to the previous one."""
    spans = [Span(lo=0, hi=parts[0].n_frames, n_windows=parts[0].n_chunks)]
    first_chunk = 0
    for p in range(1, len(parts)):
        a, b = parts[p - 1], parts[p]
        r, overlap_lo = choose_cut(a, b, cfg.overlap)
        cut = int(b.frames["index"][r])
        prev = spans[p - 1]
        prev.hi = int(np.searchsorted(a.frames["index"], cut))
        prev.n_windows = _windows_before(a, prev.hi)
        first_chunk += prev.n_windows
        span = Span(lo=r, hi=b.n_frames, n_windows=b.n_chunks, overlap_lo=overlap_lo)
        span.prev_from_cur, span.quality = _join(a, b, prev.n_windows - 1, cfg, first_chunk)
        spans.append(span)
        log.info("part %d starts at source frame %d (row %d); join %s", p, cut, r, span.quality)
    return spans


def _join(a: PartTables, b: PartTables, w_prev: int, cfg: Config, chunk_id: int) -> tuple[Optional[list], dict]:
    """Register B's first window against A's window ``w_prev`` on every frame of it that A also stored."""
    n0 = int(b.chunks["frame_stop"][0])
    a_rows = {int(i): k for k, i in enumerate(a.frames["index"])}
    pairs = [(a_rows[int(i)], k) for k, i in enumerate(b.frames["index"][:n0]) if int(i) in a_rows]
    rows_a = np.array([pa for pa, _ in pairs], np.int64)
    rows_b = np.array([pb for _, pb in pairs], np.int64)
    prev_from_world = a.world_from_chunk[w_prev].inverse()
    to_prev = [prev_from_world @ T for T in a.world_from_chunk]
    with RunStore.open(a.path, "r") as sa, RunStore.open(b.path, "r") as sb:
        prev = stored_prediction(sa, rows_a, a.grid, a.frames, to_prev)
        cur = stored_prediction(sb, rows_b, b.grid, b.frames)
    T, quality = AlignStage(cfg.align, seed=cfg.seed).register(prev, cur, chunk_id)
    return (None if T is None else T.to_array().tolist()), quality.to_dict()


def write_plan(path: Path, spans: list[Span], extra: dict) -> None:
    """Write the plan atomically (temporary file + rename)."""
    doc = {"spans": [asdict(s) for s in spans], **extra}
    tmp = Path(str(path) + ".partial")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def read_plan(path: Path) -> tuple[list[Span], dict]:
    """The spans and the extra entries of a plan written by :func:`write_plan`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        spans = [Span(**s) for s in doc.pop("spans")]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"{path}: unreadable merge plan ({exc})") from None
    return spans, doc


def sim3_or_none(a: Optional[list]) -> Optional[Sim3]:
    return None if a is None else Sim3.from_array(np.asarray(a, np.float64))
