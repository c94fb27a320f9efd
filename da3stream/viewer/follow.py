"""Follow a run store (finished or still being written) and turn each new commit into a viewer update.

The follower knows nothing about a renderer: :meth:`StoreFollower.poll` reads
the store's COMMIT record (cheap: one small JSON file) and, when it changed,
returns a :class:`StoreUpdate` with what a viewer must (re)draw:

* the decimated points of chunks that are new or were cut by the point
  budget (in their CHUNK frame: a viewer places each chunk with its live
  ``world_from_chunk``, so a loop-closure rewrite moves whole chunks by
  changing one transform each, without re-sending points);
* every chunk's live ``world_from_chunk`` and every frame's ``world_from_cam``
  (the trajectory and camera frusta), flagged when a pose rewrite changed them;
* loop edges (accepted) and rejected loop candidates, as pairs of frame rows;
* the newest frame's colour image and colourised depth.

A store that does not exist yet (a run that has not committed its first
window) is waited for; a store that was recreated (``--overwrite``) resets
the follower. Only committed rows are read (docs/STORE.md, "Reading while a
run is in progress").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import zarr

from da3stream.errors import Da3StreamError, StoreError
from da3stream.io.store import zarr_util as zu
from da3stream.io.store import RunStore
from da3stream.viewer.decimate import ChunkCloud, PointBudget, robust_extent
from da3stream.io.export.colormap import colorize_depth

log = logging.getLogger(__name__)

__all__ = ["FollowOptions", "LatestFrame", "StoreFollower", "StoreUpdate"]

GATED = 1
"""``chunks/status`` code of a gated window (docs/STORE.md)."""
DEFAULT_FOV_DEG = 60.0
"""Vertical field of view of the frusta drawn before any intrinsics are known."""


@dataclass(frozen=True)
class FollowOptions:
    """What the follower sends; every cap is a parameter (see :class:`PointBudget`)."""

    max_points: int = 2_000_000
    """Cap on the map points shown over all chunks."""
    max_points_per_chunk: int = 50_000
    """Cap on the map points shown of one chunk (halved whenever the total would overflow)."""
    voxel: Optional[float] = None
    """Voxel edge of the decimation grid in world units; None: the first chunk's extent / ``voxel_divisions``."""
    voxel_divisions: int = 400
    """Voxels across the first chunk's (robust) extent when ``voxel`` is None."""
    depth_percentiles: tuple = (2.0, 98.0)
    """Value range of the colourised depth image, as percentiles of the frame's valid depth."""
    seed: int = 0
    """Seed of the random order in which a chunk's points are cut."""
    error_patience_s: float = 10.0
    """A store that stays unreadable this long is reported as a warning (a store being created is briefly unreadable)."""


@dataclass(frozen=True)
class LatestFrame:
    """The newest committed frame."""

    row: int
    """Its ``frames/`` row."""
    index: int
    """Source frame index."""
    timestamp: float
    """Seconds."""
    rgb: Optional[np.ndarray]
    """(h, w, 3) uint8 colour on the depth grid, None when the store keeps none."""
    depth_rgb: np.ndarray
    """(h, w, 3) uint8 colourised depth."""


@dataclass(frozen=True)
class StoreUpdate:
    """What changed since the previous update (arrays cover every committed row)."""

    reset: bool
    """The store was recreated: drop everything drawn before."""
    commit: dict
    """The COMMIT record this update describes."""
    status: str
    """Run status (running, complete, failed, interrupted)."""
    clouds: dict
    """``chunk id -> ChunkCloud`` (chunk-frame points) for chunks whose shown points changed."""
    world_from_chunk: np.ndarray
    """(C, 8) float64 [s, quat_xyzw, t] live Sim(3) of every chunk."""
    world_from_cam: np.ndarray
    """(F, 4, 4) float64 live camera poses of every frame."""
    frame_chunk: np.ndarray
    """(F,) int32 chunk of each frame."""
    frame_segment: np.ndarray
    """(F,) int32 trajectory segment of each frame."""
    chunk_first_row: np.ndarray
    """(C,) int64 first frame row each chunk produced (-1 when it produced none)."""
    chunk_status: np.ndarray
    """(C,) int8 ``chunks/status`` codes."""
    loops_accepted: np.ndarray
    """(L, 2) int64 frame rows of verified loop edges."""
    loops_rejected: np.ndarray
    """(M, 2) int64 frame rows of rejected loop candidates."""
    poses_changed: bool
    """A pose rewrite (loop closure, end of run) changed poses of earlier rows."""
    new_chunks: tuple
    """Chunk ids committed since the previous update."""
    latest: Optional[LatestFrame]
    """The newest frame, when new frames arrived."""
    voxel: Optional[float]
    """Voxel edge of the decimation in world units (None before the first points)."""
    extent: float
    """Robust size of the first chunk's map in world units (0 before the first points)."""
    fov_y: float
    """Vertical field of view of the camera, radians."""
    aspect: float
    """Image width / height."""
    counts: dict = field(default_factory=dict)
    """Numbers for a status line: frames, chunks, gated, segments, loops, candidates, points, points_shown, ..."""


class StoreFollower:
    """Polls one store path; see the module docstring.

    Args:
        path: the store directory (need not exist yet).
        options: caps and decimation settings.
    """

    def __init__(self, path: str | Path, options: FollowOptions = FollowOptions()) -> None:
        self.path = Path(path)
        self.options = options
        self._budget = PointBudget(options.max_points, options.max_points_per_chunk, seed=options.seed)
        self._store: Optional[RunStore] = None
        self._zstore: Optional[zarr.storage.LocalStore] = None
        self._last_error = ""
        self._error_since = 0.0
        self._error_warned = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._created: Optional[tuple] = None
        self._commit_id = -1
        self._pose_epoch = -1
        self._n_chunks = 0
        self._n_frames = 0
        self._voxel: Optional[float] = self.options.voxel
        self._extent = 0.0
        self._budget.clear()

    @property
    def points_shown(self) -> int:
        """Map points currently shown (within the budget)."""
        return self._budget.total

    @property
    def chunk_cap(self) -> int:
        """The current per-chunk cap on shown points (lowered as the map grows)."""
        return self._budget.cap

    # ------------------------------------------------------------------ polling
    def poll(self) -> Optional[StoreUpdate]:
        """The update for the newest commit, or None when nothing was committed since the last call
        (or the store does not exist / cannot be read yet)."""
        store = self._open()
        if store is None:
            return None
        try:
            update = self._poll(store)
            self._last_error = ""
            return update
        except (Da3StreamError, OSError, ValueError) as exc:  # zarr reports a missing array as a ValueError
            # a store being recreated or deleted under us; reopen on the next poll
            self._note_error(f"{self.path}: cannot read the store yet ({exc})")
            self._store = None
            return None

    def _open(self) -> Optional[RunStore]:
        if self._store is not None:
            return self._store
        if not (self.path / "zarr.json").is_file():
            self._note_error(f"{self.path}: waiting for the store to be created", logging.INFO)
            return None
        try:
            self._store = RunStore.open(self.path, mode="r")
        except StoreError as exc:
            self._note_error(str(exc))
            return None
        self._zstore = zarr.storage.LocalStore(self.path, read_only=True)
        return self._store

    def _identity(self, store: RunStore) -> tuple:
        """What tells one store at this path from a later one created there (``--overwrite``)."""
        try:
            ino = self.path.stat().st_ino
        except OSError:
            ino = -1
        return (store.attrs_get("created"), ino)

    def _note_error(self, msg: str, level: int = logging.WARNING) -> None:
        """Log ``msg`` once; a warning only when the same problem outlasts ``error_patience_s``."""
        now = time.monotonic()
        if msg != self._last_error:
            self._last_error, self._error_since, self._error_warned = msg, now, False
            log.info("%s", msg)
        elif level >= logging.WARNING and not self._error_warned and now - self._error_since > self.options.error_patience_s:
            self._error_warned = True
            log.warning("%s (for %.0f s)", msg, now - self._error_since)

    def _poll(self, store: RunStore) -> Optional[StoreUpdate]:
        store, reset = self._check_recreated(store)
        if store is None or (int(store.committed["id"]) == self._commit_id and not reset):
            return None
        created = self._identity(store)
        status = store.status  # read before the snapshot: a "complete" status then comes with the final commit
        snap = store.snapshot()
        commit = snap.committed
        chunks = snap.chunks_table()
        frames = snap.frames_table()
        n_chunks, n_frames = int(chunks["frame_start"].shape[0]), int(frames["index"].shape[0])
        wfc = chunks["world_from_chunk"]
        new_chunks = tuple(range(self._n_chunks, n_chunks))
        clouds = self._new_clouds(chunks, new_chunks, commit, wfc)
        poses_changed = self._pose_epoch >= 0 and int(commit["pose_epoch"]) != self._pose_epoch
        latest = self._latest(snap, frames) if n_frames > self._n_frames else None
        accepted, rejected = _loop_pairs(snap)
        seg = chunks["segment"].astype(np.int32)
        frame_chunk = frames["chunk_id"].astype(np.int32)
        first_row = np.where(chunks["n_new"] > 0, chunks["frame_stop"] - chunks["n_new"], -1).astype(np.int64)
        fov_y, aspect = _field_of_view(frames["intrinsics"], snap.image_hw)
        counts = {
            "commit": int(commit["id"]), "frames": n_frames, "chunks": n_chunks,
            "gated": int(np.sum(chunks["status"] == GATED)),
            "segments": int(seg.max()) + 1 if n_chunks else 0,
            "loops": int(commit["n_loops"]), "candidates": int(commit["n_candidates"]),
            "points": int(commit["n_points"]), "points_shown": self._budget.total,
            "pose_epoch": int(commit["pose_epoch"]), "model": str(snap.model.get("id")),
        }
        self._created = created
        self._commit_id = int(commit["id"])
        self._pose_epoch = int(commit["pose_epoch"])
        self._n_chunks, self._n_frames = n_chunks, n_frames
        return StoreUpdate(
            reset=reset, commit=dict(commit), status=status, clouds=clouds, world_from_chunk=wfc,
            world_from_cam=frames["world_from_cam"], frame_chunk=frame_chunk,
            frame_segment=seg[frame_chunk] if n_frames else np.zeros(0, np.int32), chunk_first_row=first_row,
            chunk_status=chunks["status"].astype(np.int8), loops_accepted=accepted,
            loops_rejected=rejected, poses_changed=poses_changed, new_chunks=new_chunks, latest=latest,
            voxel=self._voxel, extent=self._extent, fov_y=fov_y, aspect=aspect, counts=counts,
        )

    def _check_recreated(self, store: RunStore) -> tuple[Optional[RunStore], bool]:
        """``(store, reset)``: a store recreated since the last poll (new identity, fewer commits or
        frames) starts the follower over on the new one (None while it cannot be opened yet)."""
        commit = store.committed
        recreated = self._identity(store) != self._created or int(commit["id"]) < self._commit_id or \
            int(commit["n_frames"]) < self._n_frames
        if self._created is None or not recreated:
            return store, False
        log.info("%s: the store was recreated; starting over", self.path)
        self._store = None
        self._reset_state()
        return self._open(), True

    def _new_clouds(self, chunks: dict, new_chunks: tuple, commit: dict, wfc: np.ndarray) -> dict[int, ChunkCloud]:
        """The decimated point clouds of the chunks committed since the last poll (fixes the voxel on the first)."""
        clouds: dict[int, ChunkCloud] = {}
        for k in new_chunks:
            xyz, rgb = self._chunk_points(chunks, k, commit)
            if self._voxel is None and xyz.shape[0]:
                self._extent = robust_extent(xyz) * float(wfc[k][0])
                if self._extent > 0:
                    self._voxel = self._extent / float(self.options.voxel_divisions)
            voxel_chunk = None if self._voxel is None else self._voxel / float(wfc[k][0])
            clouds.update(self._budget.add(k, xyz, rgb, voxel_chunk))
        if self._extent == 0.0 and len(chunks["frame_start"]) and self._voxel is not None:
            self._extent = self._voxel * float(self.options.voxel_divisions)
        return clouds

    # ------------------------------------------------------------------ reads
    def _chunk_points(self, chunks: dict, k: int, commit: dict) -> tuple[np.ndarray, np.ndarray]:
        """(xyz (P, 3) float32 in chunk k's frame, rgb (P, 3) uint8) of chunk ``k``'s committed map rows."""
        p0, p1 = int(chunks["point_start"][k]), int(chunks["point_stop"][k])
        if not 0 <= p0 <= p1 <= int(commit["n_points"]):
            raise StoreError(f"{self.path}: chunk {k} points [{p0}, {p1}) outside the committed {commit['n_points']}")
        if p1 == p0:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        # The map arrays grow under a live run: open them afresh so their shape covers the committed rows.
        xyz = zu.read_rows(zu.open_array(self._zstore, "map/xyz", "r"), slice(p0, p1))
        rgb = zu.read_rows(zu.open_array(self._zstore, "map/rgb", "r"), slice(p0, p1))
        return np.asarray(xyz, np.float32), np.asarray(rgb, np.uint8)

    def _latest(self, snap: RunStore, frames: dict) -> LatestFrame:
        row = int(frames["index"].shape[0]) - 1
        depth = np.asarray(snap.depth(row), np.float32)
        rgb = np.asarray(snap.rgb(row)) if snap.has_rgb else None
        return LatestFrame(row=row, index=int(frames["index"][row]), timestamp=float(frames["timestamp"][row]), rgb=rgb,
                           depth_rgb=colorize_depth(depth, percentiles=tuple(self.options.depth_percentiles)))


def _loop_pairs(snap) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, rejected) loop frame pairs, each (L, 2) int64."""
    loops = snap.loops_table()
    cands = snap.candidates_table()
    accepted = np.stack([loops["frame_i"], loops["frame_j"]], axis=1).astype(np.int64)
    rej = ~np.asarray(cands["accepted"], bool)
    rejected = np.stack([cands["frame_i"][rej], cands["frame_j"][rej]], axis=1).astype(np.int64)
    return accepted.reshape(-1, 2), rejected.reshape(-1, 2)


def _field_of_view(intrinsics: np.ndarray, image_hw: Any) -> tuple[float, float]:
    """(vertical fov in radians, width / height) of the newest camera; :data:`DEFAULT_FOV_DEG` without frames."""
    h, w = (float(v) for v in image_hw)
    aspect = w / h if h > 0 else 4.0 / 3.0
    if intrinsics.shape[0] == 0 or not np.isfinite(intrinsics[-1, 1, 1]) or intrinsics[-1, 1, 1] <= 0:
        return float(np.radians(DEFAULT_FOV_DEG)), aspect
    return float(2.0 * np.arctan2(h / 2.0, float(intrinsics[-1, 1, 1]))), aspect
