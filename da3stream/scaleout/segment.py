"""One segment of a split source, reconstructed by the normal streaming engine into its own part store.

:class:`SegmentReconstructor` is a :class:`~da3stream.streaming.pipeline.StreamingReconstructor`
that opens the source at the segment's first frame (the seek a resume uses:
``open_source(..., start_index=...)``) and stops before its last, and whose
store keeps one frame per zarr chunk of the pixel arrays (depth, confidence,
colour), so the merge can move every frame's pixels into the merged store by
renaming one key per frame instead of copying them (docs/SCALEOUT.md).

:func:`store_action` is the one rule for an output store that may already
exist: skip it when complete, resume it when a run left it incomplete, or start it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from da3stream.config import to_dict
from da3stream.io.store.layout import read_root_attrs
from da3stream.errors import StoreError
from da3stream.streaming.pipeline import StreamingReconstructor
from da3stream.streaming.resume import creation_incomplete
from da3stream.streaming.stages.commit import StoreStage
from da3stream.scaleout.split import Segment

log = logging.getLogger(__name__)

__all__ = ["PART_FRAMES_PER_CHUNK", "SegmentReconstructor", "run_segment", "store_action"]

PART_FRAMES_PER_CHUNK = 1
"""Frames per zarr chunk of a part store's pixel arrays: one, so a frame's pixels are one key each."""


def store_action(out: Path) -> str:
    """``"skip"`` (a complete store), ``"resume"`` (an incomplete one) or ``"new"`` (nothing to continue)."""
    out = Path(out)
    if creation_incomplete(out):
        return "new"
    status = read_root_attrs(out).get("status")
    return "skip" if status == "complete" else "resume"


class _PartStoreStage(StoreStage):
    """The store stage of a part: its store keeps one frame per zarr chunk of the pixel arrays."""

    frames_per_chunk = PART_FRAMES_PER_CHUNK  # pixels move into the merged store frame by frame


class SegmentReconstructor(StreamingReconstructor):
    """The engine on source frames ``[segment.start, segment.stop)`` (see the module docstring)."""

    def __init__(self, source: Any, out: Path, segment: Segment, **kwargs: Any) -> None:
        self.segment = segment
        extra = {"segment": {"k": segment.k, "start": segment.start, "stop": segment.stop}}
        super().__init__(source, out, source_extra=extra, **kwargs)

    def _open_source(self, start_index: int = 0):
        return super()._open_source(max(int(start_index), self.segment.start))

    def _read(self, src) -> Iterator:
        stop = self.segment.stop
        for frame in super()._read(src):
            if stop is not None and frame.index >= stop:
                return
            yield frame

    def _create_store(self, window) -> None:
        old = self.store_stage
        stage = _PartStoreStage(old.out, old.cfg, old.writer, store=None, grid=old.grid)
        stage.known_intrinsics = old.known_intrinsics
        self.store_stage = stage
        super()._create_store(window)


def part_config(config: Any) -> dict:
    """The config a part runs with: the run's, with scale-out off (a part is one process)."""
    from da3stream.config import load_config

    d = to_dict(load_config(config))
    d["scaleout"] = dict(d["scaleout"], workers=1, ray_address=None)
    return d


def run_segment(source: Any, out: Path, segment: Segment, predictor: Any, config: Any) -> dict:
    """Reconstruct one segment into the part store ``out``: skipped when complete, resumed when incomplete."""
    out = Path(out)
    action = store_action(out)
    if action == "skip":
        log.info("%s: part store complete; skipped", out)
        return {"part": str(out), "status": "complete", "skipped": True}
    # resume=True also for a store whose creation was killed: the engine discards it and starts afresh
    runner = SegmentReconstructor(source, out, segment, predictor=predictor, config=part_config(config),
                                  resume=out.exists())
    summary = runner.run()
    if summary.status != "complete":
        raise StoreError(f"{out}: segment {segment.k} ended {summary.status}")
    return {"part": str(out), "status": summary.status, "skipped": False, "resumed": summary.resumed,
            "frames": summary.n_frames, "chunks": summary.n_chunks, "seconds": summary.timings.get("total")}
