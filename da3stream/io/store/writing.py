"""Writing a run store: appending windows and source rows, rewriting poses, the run status, the commit.

:class:`StoreWriter` is the writing half of :class:`~da3stream.io.store.run_store.RunStore`
and holds the commit protocol (see that module): arrays are resized and their
new rows written first, the commit record in the root ``zarr.json`` last.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional, Sequence

import numpy as np
import zarr

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import StoreError, check_shape
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import loop_rows, record_rows, source_rows
from da3stream.io.store.records import ChunkRecord, SourceRows

log = logging.getLogger(__name__)

__all__ = ["STATUSES", "StoreWriter"]

STATUSES = ("running", "complete", "failed", "interrupted")


GROWTH_FRACTION = 0.25
"""A growing array is resized to its needed rows plus this fraction of them (at least one zarr chunk more)."""


def grown_rows(arr: zarr.Array, need: int) -> int:
    """The new row count of ``arr`` when a write needs ``need`` rows and it has fewer.

    Resizing rewrites the array's ``zarr.json``; growing ahead by a fraction turns a
    metadata rewrite of every array at every commit into one every few commits. Rows
    beyond the commit counters are never read (readers stop at the counters, as after
    any kill); a finished run trims them (:meth:`StoreWriter.set_status`) and a
    reopening writer truncates them.
    """
    return int(need + max(int(arr.chunks[0]), int(need * GROWTH_FRACTION)))


class StoreWriter:
    """The single writer's API (mixed into :class:`~da3stream.io.store.run_store.RunStore`)."""


    def append_chunk(self, chunk: ChunkRecord) -> None:
        """Append one window (frames, chunk row, map points, source rows, loop edges, state) and commit."""
        self._require_writer()
        c = self._commit
        nf, nc = int(c["n_frames"]), int(c["n_chunks"])
        rows = record_rows(chunk, c, self._specs, self.depth_hw, self._attrs.get("descriptor_dim"))
        if chunk.state is not None:
            self.write_state(chunk.state, chunk.state_meta or {})
        new = dict(c)
        for counter, path in (("n_frames", "frames/index"), ("n_chunks", "chunks/frame_start"), ("n_read", "source/index"),
                              ("n_points", "map/xyz"), ("n_overlap", "overlap/row"), ("n_loops", "loops/chunk_i"),
                              ("n_candidates", "loop_candidates/chunk_i")):
            new[counter] = int(c[counter]) + len(rows[path])
        self._commit_rows(rows, {}, new, f"window {chunk.chunk_id}")
        log.debug("committed window %d: frames %d..%d, chunk %d", chunk.chunk_id, nf, new["n_frames"], nc)

    def append_source_rows(self, rows: SourceRows | Sequence[tuple]) -> None:
        """Commit source rows read after the last window (e.g. at the end of the stream).

        ``rows``: a :class:`SourceRows`, or a sequence of ``(index, timestamp, kept, skipped_reason)``.
        """
        self._require_writer()
        if not isinstance(rows, SourceRows):
            seq = list(rows)
            rows = SourceRows(
                index=np.array([r[0] for r in seq], np.int64), timestamp=np.array([r[1] for r in seq], np.float64),
                kept=np.array([r[2] for r in seq], bool), skipped_reason=np.array([r[3] for r in seq], np.int8),
            )
        data = source_rows(rows.index, rows.timestamp, rows.kept, rows.skipped_reason)
        new = dict(self._commit)
        new["n_read"] += len(data["source/index"])
        self._commit_rows(data, {}, new, "source rows")

    def rewrite_poses(self, world_from_chunk: np.ndarray, world_from_cam: np.ndarray, loops: Optional[Sequence[Any]] = None) -> None:
        """Replace every committed chunk's ``world_from_chunk`` and frame's ``world_from_cam`` atomically.

        Args:
            world_from_chunk: (C, 8) float64 [s, quat_xyzw, t] for all C committed chunks (or a list of Sim3).
            world_from_cam: (F, 4, 4) float64 for all F committed frames.
            loops: loop edges to append in the same commit (:class:`LoopEdge`-like).

        The inactive pose slot is written completely, then the commit flips
        ``pose_slot``; a kill before the flip leaves the previous poses live.
        """
        self._require_writer()
        c = self._commit
        if isinstance(world_from_chunk, (list, tuple)) and world_from_chunk and isinstance(world_from_chunk[0], Sim3):
            world_from_chunk = np.stack([s.to_array() for s in world_from_chunk])
        wfc = np.asarray(world_from_chunk, dtype=np.float64)
        wcam = np.asarray(world_from_cam, dtype=np.float64)
        check_shape("rewrite_poses(world_from_chunk)", wfc, (int(c["n_chunks"]), 8), "f")
        check_shape("rewrite_poses(world_from_cam)", wcam, (int(c["n_frames"]), 4, 4), "f")
        if not (np.all(np.isfinite(wfc)) and np.all(np.isfinite(wcam))):
            raise StoreError("rewrite_poses: poses contain NaN or inf")
        rows = loop_rows(list(loops or ()), int(c["id"]) + 1, int(c["n_frames"]), int(c["n_chunks"]))
        slot = 1 - int(c["pose_slot"])
        new = dict(c)
        new.update(pose_slot=slot, pose_epoch=int(c["pose_epoch"]) + 1)
        new["n_loops"] += len(rows["loops/chunk_i"])
        new["n_candidates"] += len(rows["loop_candidates/chunk_i"])
        full = {f"chunks/world_from_chunk_{slot}": wfc, f"frames/world_from_cam_{slot}": wcam}
        self._commit_rows(rows, full, new, "pose rewrite")

    def set_status(self, status: str, **extra: Any) -> None:
        """Set the run status (running / complete / failed / interrupted) and merge ``extra`` into ``run``."""
        self._require_writer()
        if status not in STATUSES:
            raise StoreError(f"set_status: status must be one of {', '.join(STATUSES)}, got {status!r}")
        run = dict(self._attrs.get("run", {}))
        run.update(zu.jsonable(extra))
        try:
            if status != "running":  # a finished store's arrays end at the committed rows (see grown_rows)
                zu.resize_rows(self._rows_beyond_commit())
            self._write_attrs({"status": status, "status_time": zu.utc_now(), "run": run})
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the run status ({zu.os_reason(exc)})") from None

    # ------------------------------------------------------------------ internals
    def _require_writer(self) -> None:
        if self.mode != "a" or self._lock is None:
            raise StoreError(f"{self.path}: store is open read-only (use RunStore.open(path, mode='a'))")

    def _physical_paths(self) -> list[tuple[str, str, bool]]:
        """(physical path, counter, is live-or-plain) for every array."""
        out = []
        slot = int(self._commit["pose_slot"])
        for path, spec in self._specs.items():
            if spec["slot"]:
                out.append((f"{path}_{slot}", spec["counter"], True))
                out.append((f"{path}_{1 - slot}", spec["counter"], False))
            else:
                out.append((path, spec["counter"], True))
        return out

    def _open_arrays(self) -> None:
        c = self._commit
        for path, counter, live in self._physical_paths():
            self._array(path, int(c[counter]) if live else 0)

    def _rows_beyond_commit(self) -> list[tuple[zarr.Array, int]]:
        """(array, committed rows) of every live array that is longer or shorter than its commit counter."""
        c = self._commit
        todo = [(self._array(p), int(c[counter])) for p, counter, live in self._physical_paths() if live]
        return [(a, n) for a, n in todo if a.shape[0] != n]

    def _truncate_uncommitted(self) -> None:
        todo = self._rows_beyond_commit()
        n_partial = zu.remove_partial_files(self.path)
        try:
            zu.resize_rows(todo)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot truncate uncommitted rows ({zu.os_reason(exc)})") from None
        if todo or n_partial:
            log.info("%s: dropped uncommitted rows of %d arrays and %d temporary files", self.path, len(todo), n_partial)

    def _write_attrs(self, update: dict) -> None:
        """Write root attributes (atomic replace of the root zarr.json); keeps memory in sync only on success."""
        try:
            self._root.update_attributes(update)
        except BaseException:
            self._root = zarr.open_group(self._zstore, mode="r+", zarr_format=3)
            raise
        self._attrs.update(json.loads(json.dumps(zu.jsonable(update))))

    def _commit_rows(self, appends: dict[str, np.ndarray], full: dict[str, np.ndarray], new: dict, what: str) -> None:
        """Write ``appends`` after the committed rows and ``full`` arrays from row 0, then the commit record."""
        c = self._commit
        slot = int(c["pose_slot"])
        items = []
        for path, data in appends.items():
            spec = self._specs.get(path)
            if spec is None:
                if len(data):
                    log.debug("%s: no array %s in this store; %d rows dropped", self.path, path, len(data))
                continue
            phys = f"{path}_{slot}" if spec["slot"] else path
            items.append((self._array(phys), int(c[spec["counter"]]), data))
        for phys, data in full.items():
            items.append((self._array(phys), 0, data))
        new = dict(new)
        new["id"] = int(c["id"]) + 1
        new["time"] = time.time()
        if self._pending_state is not None:
            new["state"] = dict(self._pending_state, commit=new["id"])
        try:
            zu.resize_rows([(a, grown_rows(a, start + len(d))) for a, start, d in items if a.shape[0] < start + len(d)])
            zu.write_rows(items)
            self._write_attrs({"commit": new})
        except OSError as exc:
            raise StoreError(
                f"{self.path}: writing {what} failed ({zu.os_reason(exc)}); "
                f"the store is unchanged at commit {c['id']}"
            ) from None
        self._commit = new
        self._pending_state = None
