"""Resume: the run state rebuilt from the store, so a killed run continues exactly where it stopped.

Everything the next window depends on is in the store after every commit:
the chunk table and per-frame chunk poses (:class:`~da3stream.streaming.state.RunState`),
the carry's prediction (``state/``), the chunk size after any out-of-memory
shrink, the depth grid, the memory planner's resolution, the source log
(which source frames were read) and the loop closer's graph and index.
:func:`restore` reads all of it; the run then re-reads the source from the
first carry frame and skips what was logged (:meth:`ResumePoint.take_carry_frame`).

A store whose creation was killed holds nothing to resume
(:func:`creation_incomplete`); the run then starts afresh.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import Prediction
from da3stream.errors import StoreError
from da3stream.streaming.stages.cameras import ImageGrid
from da3stream.streaming.stages.loops import LoopStage
from da3stream.streaming.state import RunState
from da3stream.streaming.window import Carry

log = logging.getLogger(__name__)

__all__ = ["ResumePoint", "creation_incomplete", "discard_incomplete_store", "open_store", "restore"]


@dataclass
class ResumePoint:
    """Where a run continues: its state, and how far the source was read."""

    state: RunState = field(default_factory=RunState)
    chunk_size: int = 0
    """Frames per window (0: the memory planner decides, a new run)."""
    grid: Optional[ImageGrid] = None
    planned_process_res: Optional[int] = None
    """The network resolution the memory planner chose (None: the predictor's own)."""
    last_read: int = -1
    """Highest source index in the source log (-1: a new run)."""
    carry_order: list = field(default_factory=list)
    """Source indices of the carry frames, in window order."""
    n_read: int = 0
    n_keyframes: int = 0
    n_loops: int = 0
    _found: dict = field(default_factory=dict)

    @property
    def start_index(self) -> int:
        """First source index the run reads (the carry frames are read again)."""
        return min(self.carry_order) if self.carry_order else self.last_read + 1

    def is_carry(self, index: int) -> bool:
        return index in self.carry_order

    def take_carry_frame(self, frame: Any) -> Optional[list]:
        """Collect a re-read carry frame; the carry frames in window order once all are read."""
        self._found[frame.index] = frame
        if len(self._found) < len(self.carry_order):
            return None
        return [self._found[i] for i in self.carry_order]


def creation_incomplete(out: Path) -> bool:
    """True when ``out`` holds no store a run could resume: missing, empty, or a creation that was killed.

    Only directories that are certainly ours qualify: nothing but the writer lock file, or a root
    ``zarr.json`` with the da3stream format name but no format version (written last at creation).
    """
    from da3stream.io.store.layout import FORMAT_NAME
    from da3stream.io.store.zarr_util import LOCK_NAME

    out = Path(out)
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if all(p.name == LOCK_NAME for p in out.iterdir()):
        return True
    try:
        doc = json.loads((out / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and attrs.get("format") == FORMAT_NAME and "format_version" not in attrs


def discard_incomplete_store(out: Path) -> None:
    """Remove what a killed store creation left (see :func:`creation_incomplete`), unless a writer holds it."""
    from da3stream.io.store.zarr_util import WriterLock

    if not out.exists():
        return
    lock = WriterLock(out)
    if not lock.acquire():
        raise StoreError(f"{out}: another process is writing this store")
    try:
        shutil.rmtree(out)
    except OSError as exc:
        raise StoreError(f"{out}: cannot remove the incomplete store ({exc.strerror or exc})") from None
    finally:
        lock.release()


def open_store(out: Path, config: dict, chunk_size: Optional[int], describe_source: Callable[[], dict]):
    """Open the store at ``out`` for appending, after checking the run's config and source match it.

    ``config`` is the run's resolved config as a dict; ``chunk_size`` the configured one (None: planned).
    """
    from da3stream.io.store import RunStore

    store = RunStore.open(out, mode="a")
    try:
        cfg_dict = dict(config)
        cfg_dict["chunk_size"] = int(store.config["chunk_size"]) if chunk_size is None else chunk_size
        store.check_resume_compatible(cfg_dict, describe_source())
    except BaseException:
        store.close()
        raise
    return store


def restore(store, *, loops: LoopStage) -> ResumePoint:
    """The run state of the store's last commit (and the loop closer's, when loop closure is on)."""
    point = ResumePoint(chunk_size=int(store.config["chunk_size"]))
    frames = store.frames_table(descriptors=loops.loop_cfg.enabled)
    chunks = store.chunks_table()
    point.state = _run_state(store, frames, chunks)
    point.grid = ImageGrid(np.asarray(store.attrs_get("orig_from_grid"), np.float64), tuple(store.depth_hw),
                           tuple(store.image_hw))
    point.planned_process_res = store.attrs_get("planned_process_res")
    saved, meta = store.read_state()
    point.chunk_size = int(meta.get("chunk_size", point.chunk_size))  # smaller after an out-of-memory retry
    carry_indices = saved.get("carry_indices", np.zeros(0, np.int64))
    point.carry_order = [int(i) for i in carry_indices]
    point.state.carry = Carry([], _carry_prediction(saved), int(meta.get("carry_chunk_id", len(point.state.world_from_chunk) - 1)),
                              np.asarray(saved.get("carry_rows", np.zeros(0)), np.int64))
    src = store.source_table()
    point.last_read = int(src["index"][-1]) if src["index"].shape[0] else -1
    point.n_read = int(src["index"].shape[0])
    point.n_keyframes = int(src["kept"].sum()) if src["index"].shape[0] else 0
    if loops.loop_cfg.enabled and (store.has_descriptors or loops.loop_cfg.candidates_from_trajectory):
        from da3stream.streaming.loops.closer import NO_LOOP_WINDOW

        accepted = store.loop_edges(accepted_only=True)
        reasons = store.candidates_table()["reason"]
        n_verified = int(sum(1 for r in reasons if str(r) not in NO_LOOP_WINDOW))
        loops.restore(chunk_rows=chunks, frame_rows=frames, loops=accepted, world_from_chunk=point.state.world_from_chunk,
                      n_verified=n_verified)
        point.n_loops = len(accepted)
    return point


def _run_state(store, frames: dict, chunks: dict) -> RunState:
    """The chunk table and per-frame chunk poses of every committed window."""
    n_chunks = int(chunks["world_from_chunk"].shape[0])
    state = RunState(
        world_from_chunk=[Sim3.from_array(a) for a in chunks["world_from_chunk"]],
        segment=int(chunks["segment"][-1]) if n_chunks else 0,
        n_frames=int(frames["index"].shape[0]),
        n_points=int(store.committed.get("n_points", 0)),
    )
    for c in range(n_chunks):
        sel = slice(int(chunks["frame_stop"][c]) - int(chunks["n_new"][c]), int(chunks["frame_stop"][c]))
        state.frame_chunk_ids.append(frames["chunk_id"][sel].astype(np.int32))
        state.frame_chunk_from_cam.append(frames["chunk_from_cam"][sel])
        carry = store.carry_poses(c)
        if carry is not None:
            state.carry_poses[c] = carry
    return state


def _carry_prediction(saved: dict) -> Optional[Prediction]:
    """The carry frames' prediction saved with the last commit (None when the window had no overlap).

    Stores written before ``carry_ray_conf`` was saved resume with ray confidences resampled from ``conf``
    (not bit-identical to the uninterrupted run when the ray grid is coarser than the depth grid).
    """
    if "carry_depth" not in saved:
        return None
    return Prediction(depth=saved["carry_depth"], conf=saved["carry_conf"], world_from_cam=saved["carry_world_from_cam"],
                      intrinsics=saved["carry_intrinsics"], rays=saved.get("carry_rays"),
                      ray_conf=saved.get("carry_ray_conf"))
