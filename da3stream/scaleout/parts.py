"""The committed tables of a part store, read once for the merge, and stored frames as predictions.

Reads go through the store's reading API (:class:`~da3stream.io.store.RunStore`);
the fused map and the loop candidates are read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import Prediction
from da3stream.errors import StoreError
from da3stream.io.store import LoopEdge, RunStore
from da3stream.streaming.stages.cameras import ImageGrid

__all__ = ["PartTables", "load_part", "stored_prediction"]


@dataclass
class PartTables:
    """Everything the merge reads of one complete part store (row counts as committed)."""

    path: Path
    attrs: dict
    """Root attributes the merged store copies: config, model, source, image_hw, depth_hw, ..."""
    frames: dict
    chunks: dict
    source: dict
    overlap: dict
    map: dict
    candidates: list
    """Every loop candidate (:class:`LoopEdge`), accepted or not, in store order."""
    world_from_chunk: list
    """list[Sim3] of the part's windows (its own world frame)."""
    grid: ImageGrid

    @property
    def n_frames(self) -> int:
        return int(self.frames["index"].shape[0])

    @property
    def n_chunks(self) -> int:
        return int(self.chunks["frame_start"].shape[0])

    def first_new_row(self, w: int) -> int:
        """First ``frames/`` row window ``w`` produced."""
        return int(self.chunks["frame_stop"][w] - self.chunks["n_new"][w])


def load_part(path: Path) -> PartTables:
    """The tables of the complete part store at ``path`` (StoreError when it is not complete)."""
    store = RunStore.open(path, "r")
    if store.status != "complete":
        raise StoreError(f"{path}: part store is {store.status}, not complete")
    snap = store.snapshot()
    keys = ("config", "model", "source", "image_hw", "depth_hw", "descriptor_dim", "save_rgb", "save_conf",
            "compression")
    attrs = {k: snap.attrs_get(k) for k in keys}
    attrs["orig_from_grid"] = snap.attrs_get("orig_from_grid")
    attrs["planned_process_res"] = snap.attrs_get("planned_process_res")
    grid = ImageGrid(np.asarray(attrs["orig_from_grid"], np.float64), tuple(snap.depth_hw), tuple(snap.image_hw))
    return PartTables(
        path=Path(path), attrs=attrs, frames=snap.frames_table(descriptors=snap.has_descriptors),
        chunks=snap.chunks_table(), source=snap.source_table(), overlap=snap.overlap_table(),
        map=_map_table(snap), candidates=_candidates(snap), world_from_chunk=snap.world_from_chunk(), grid=grid,
    )


def _map_table(snap: RunStore) -> dict:
    """The fused points in their chunk frames: ``xyz``, ``rgb``, ``conf`` (as stored), ``chunk_id``."""
    out = {"xyz": [], "rgb": [], "conf": [], "chunk_id": []}
    for block in snap.iter_map_points(world=False):
        out["xyz"].append(block.xyz)
        out["rgb"].append(block.rgb)
        out["conf"].append(np.asarray(block.conf if block.conf is not None else np.full(len(block.xyz), np.nan),
                                      np.float16))
        out["chunk_id"].append(block.chunk_id)
    empty = {"xyz": np.zeros((0, 3), np.float32), "rgb": np.zeros((0, 3), np.uint8),
             "conf": np.zeros(0, np.float16), "chunk_id": np.zeros(0, np.int32)}
    return {k: (np.concatenate(v) if v else empty[k]) for k, v in out.items()}


def _candidates(snap: RunStore) -> list:
    t = snap.candidates_table()
    out = []
    for k in range(t["chunk_i"].shape[0]):
        T = t["i_from_j"][k]
        out.append(LoopEdge(
            chunk_i=int(t["chunk_i"][k]), chunk_j=int(t["chunk_j"][k]), frame_i=int(t["frame_i"][k]),
            frame_j=int(t["frame_j"][k]), i_from_j=Sim3.from_array(T) if np.all(np.isfinite(T)) else None,
            similarity=float(t["similarity"][k]), inlier_ratio=float(t["inlier_ratio"][k]),
            residual=float(t["residual"][k]), scale=float(T[0]) if np.isfinite(T[0]) else float("nan"),
            accepted=bool(t["accepted"][k]), reason=str(t["reason"][k]),
        ))
    return out


def stored_prediction(store: RunStore, rows: np.ndarray, grid: ImageGrid, frames: dict,
                      dst_from_chunk: Optional[list] = None) -> Prediction:
    """Stored frames ``rows`` as a :class:`Prediction` (depth grid), in one frame.

    ``dst_from_chunk[c]`` (Sim3) maps chunk ``c``'s frame to the frame wanted (None: every frame stays in
    its own chunk's frame, right when all rows share one chunk). Depth is scaled with the map, poses composed.
    """
    rows = np.asarray(rows, np.int64)
    depth = store.depth(rows).astype(np.float32)
    conf = (store.conf(rows).astype(np.float32) if store.has_conf else np.ones_like(depth))
    chunk_from_cam = frames["chunk_from_cam"][rows]
    if dst_from_chunk is not None:
        poses = np.empty_like(chunk_from_cam)
        for k, (c, pose) in enumerate(zip(frames["chunk_id"][rows], chunk_from_cam)):
            T = dst_from_chunk[int(c)]
            poses[k] = T.apply_pose(pose[None])[0]
            depth[k] *= np.float32(T.s)
        chunk_from_cam = poses
    return Prediction(depth=depth, conf=conf, world_from_cam=chunk_from_cam,
                      intrinsics=grid.grid_intrinsics(frames["intrinsics"][rows]))
