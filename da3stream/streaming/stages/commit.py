"""Store stage: a finished :class:`~da3stream.streaming.window.Window` -> one ``ChunkRecord`` in the run store.

:class:`StoreStage` is the run's only door to the store while it runs: it
creates the store with the first window, turns every window into a
:class:`~da3stream.io.store.run_store.ChunkRecord` (the
:class:`~da3stream.streaming.window.AlignmentQuality` becomes the stored
quality columns through :meth:`~da3stream.streaming.window.AlignmentQuality.to_dict`),
hands the writes to the :class:`~da3stream.streaming.writer.AsyncWriter` and
reads committed frames back for loop verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from da3stream.config import StoreConfig
from da3stream.core.types import Prediction
from da3stream.streaming.stages.cameras import ImageGrid
from da3stream.streaming.state import RunState
from da3stream.streaming.window import Carry, Window
from da3stream.streaming.writer import AsyncWriter

__all__ = ["StoreStage"]


class StoreStage:
    """Commits windows to the run store at ``out`` through ``writer`` (see the module docstring).

    Args:
        out: the store directory.
        cfg: the ``store`` config.
        writer: the ordered background writer every write goes through.
        store: the store, when a resume opened it; None creates it with the first window.
        grid: the depth grid, when a resume read it; None takes it from the first window.
    """

    frames_per_chunk = 8
    """Frames per zarr chunk of the pixel arrays of a store this stage creates."""

    def __init__(self, out: Path, cfg: StoreConfig, writer: AsyncWriter, *, store=None,
                 grid: Optional[ImageGrid] = None) -> None:
        self.out = out
        self.cfg = cfg
        self.writer = writer
        self.store = store
        self.grid = grid
        self.known_intrinsics: Optional[np.ndarray] = None
        """(3, 3) known calibration of the frames (original resolution), stored for every frame as given."""

    def create(self, *, config: dict, model: dict, source: dict, pred: Prediction, grid: ImageGrid,
               overwrite: bool, planned_process_res: Optional[int]) -> None:
        """Create the store for the run whose first prediction is ``pred``."""
        from da3stream.io.store import RunStore

        self.grid = grid
        desc_dim = None if pred.descriptors is None else int(pred.descriptors.shape[1])
        c = self.cfg
        self.store = RunStore.create(
            self.out, config=config, model=model, source=source, image_hw=grid.image_hw,
            depth_hw=tuple(pred.depth.shape[1:]), descriptor_dim=desc_dim, save_rgb=c.save_rgb,
            save_conf=c.save_conf, compression_level=c.compression_level, pixel_cname=c.pixel_codec,
            overwrite=overwrite, frames_per_chunk=self.frames_per_chunk,
            attrs={"orig_from_grid": grid.orig_from_grid.tolist(), "planned_process_res": planned_process_res},
        )

    def commit(self, window: Window, state: RunState, carry: Carry, source_rows: list, chunk_size: int) -> None:
        """Queue ``window``'s record (``state`` as before the window), then a pose rewrite after a loop closure."""
        record = self.record(window, state, carry, source_rows, chunk_size)
        store = self.store
        self.writer.submit(lambda: store.append_chunk(record))

    def rewrite_poses(self, state: RunState) -> None:
        """Queue a rewrite of the chunk table and every frame's world pose (after loop closure, at the end)."""
        table, poses = state.chunk_table(), state.world_poses()
        store = self.store
        self.writer.submit(lambda: store.rewrite_poses(table, poses))

    def append_source_rows(self, rows: list) -> None:
        """Log source rows no window committed (read after the last window)."""
        self.writer.flush()
        self.store.append_source_rows(rows)

    def record(self, window: Window, state: RunState, carry: Carry, source_rows: list, chunk_size: int):
        """The :class:`~da3stream.io.store.run_store.ChunkRecord` of ``window``."""
        from da3stream.io.store.records import ChunkRecord

        pred, new, n_carry = window.prediction, window.new, window.n_carry
        rows = state.new_rows(window.n_new)
        carried = state.carry_chunk_from_cam(window)
        points = window.points
        return ChunkRecord(
            chunk_id=window.chunk_id,
            frame_index=window.new_indices(),
            frame_timestamp=window.new_timestamps(),
            chunk_from_cam=window.chunk_from_cam_new,
            world_from_cam=window.world_from_cam_new,
            intrinsics=self._orig_intrinsics(pred.intrinsics[new]),
            depth=pred.depth[new],
            conf=pred.conf[new],
            rgb=window.rgb_new if self.cfg.save_rgb else None,
            descriptors=None if pred.descriptors is None else pred.descriptors[new],
            frame_start=int(rows[0] - n_carry) if len(rows) else int(state.n_frames - n_carry),
            frame_stop=int(rows[-1] + 1) if len(rows) else int(state.n_frames),
            n_new=window.n_new,
            world_from_chunk=window.world_from_chunk.to_array(),
            chunk_from_prev=(window.prev_from_cur.inverse().to_array() if window.prev_from_cur is not None
                             else np.full(8, np.nan)),
            carry_rows=state.carried_rows(window),
            carry_chunk_from_cam=carried if carried is not None else np.zeros((0, 4, 4)),
            **window.quality.to_dict(),
            segment=window.segment,
            points_xyz=points.xyz,
            points_rgb=points.rgb,
            points_conf=points.conf,
            source_index=np.array([r[0] for r in source_rows], np.int64),
            source_timestamp=np.array([r[1] for r in source_rows], np.float64),
            source_kept=np.array([r[2] for r in source_rows], bool),
            source_skipped=np.array([r[3] for r in source_rows], np.int8),
            loop_edges=list(window.loop_edges),
            state=_carry_state(carry),
            state_meta={"chunk_id": window.chunk_id, "segment": window.segment, "carry_chunk_id": window.chunk_id,
                        "chunk_size": chunk_size},
        )

    def _orig_intrinsics(self, K_grid: np.ndarray) -> np.ndarray:
        """(n, 3, 3) intrinsics to store: the known calibration exactly, else ``K_grid`` mapped to the original image."""
        if self.known_intrinsics is not None:
            return np.broadcast_to(np.asarray(self.known_intrinsics, np.float64), K_grid.shape).copy()
        return self.grid.orig_intrinsics(K_grid)

    def fetch_frames(self, rows: np.ndarray):
        """Stored data of committed frames, for loop verification."""
        from da3stream.streaming.loops.closer import FrameData

        rows = np.asarray(rows, np.int64)
        store = self.store
        if rows.size and int(rows.max()) >= store.n_frames:
            self.writer.flush()  # only wait for the writer when a requested row is not committed yet
        table = store.frames_table(rows=rows)
        return FrameData(
            images=store.rgb(rows),
            depth=store.depth(rows).astype(np.float32),
            conf=(store.conf(rows).astype(np.float32) if store.has_conf
                  else np.ones((len(rows),) + tuple(self.grid.depth_hw), np.float32)),
            chunk_from_cam=table["chunk_from_cam"],
            intrinsics=self.grid.grid_intrinsics(table["intrinsics"]),
            chunk_id=table["chunk_id"],
            indices=table["index"],
            timestamps=table["timestamp"],
        )


def _carry_state(carry: Carry) -> dict:
    """The resume state a commit stores: the carry's rows, source indices and what alignment reads of its prediction."""
    out = {"carry_rows": carry.rows.astype(np.int64),
           "carry_indices": np.array([f.index for f in carry.frames], np.int64)}
    pred = carry.prediction
    if pred is not None:
        out.update(carry_depth=pred.depth, carry_conf=pred.conf, carry_world_from_cam=pred.world_from_cam,
                   carry_intrinsics=pred.intrinsics)
        if pred.rays is not None:
            out["carry_rays"] = pred.rays.astype(np.float32)
        if pred.ray_conf is not None:  # alignment weighs ray-grid points by it: resume needs it exactly
            out["carry_ray_conf"] = pred.ray_conf.astype(np.float32)
    return out
