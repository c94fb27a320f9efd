"""Stores for the export tests: a pipeline run, and a hand-built store whose geometry is known exactly."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.alignment.sim3 import Sim3
from da3stream.io.store import ChunkRecord, RunStore, SkipReason

PLANE_IMAGE_HW = (24, 32)
PLANE_DEPTH_HW = (12, 16)
PLANE_K = np.array([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])
"""Original-resolution intrinsics of the hand-built store (OpenCV pixel centres)."""
PLANE_Z = 5.0
"""The wall every camera looks at: z = PLANE_Z in each chunk's frame."""
BEHIND_Z = 8.0
"""Hidden points: z = BEHIND_Z, behind the wall for every camera that looks at it."""
N_NEW = 4
CHUNK_SCALE = 2.5


def pipeline_store(path, n_frames: int = 40, keyframes: bool = True):
    """Run the engine on the small synthetic sequence (160x120, depth grid 80x60); return the store path."""
    from da3stream.streaming.pipeline import reconstruct
    from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence

    seq = small_sequence(n_frames)
    reconstruct(seq.frames(0, n_frames), path, predictor=small_predictor(seq),
                config={**SMALL_CFG, "keyframes.enabled": keyframes})
    return path


def _plane_depth(chunk_from_cam: np.ndarray, K_grid: np.ndarray, hw: tuple) -> np.ndarray:
    """(N, h, w) z-depth of the wall z = PLANE_Z seen by each camera; NaN where a ray misses it."""
    h, w = hw
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K_grid).T  # (h, w, 3), camera z = 1
    out = []
    for P in chunk_from_cam:
        d = rays @ P[:3, :3].T
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (PLANE_Z - P[2, 3]) / d[..., 2]
        out.append(np.where(np.isfinite(t) & (t > 0), t, np.nan))
    return np.stack(out).astype(np.float32)


def plane_store(path, *, fx_step: float = 0.0, away: bool = True, save_rgb: bool = True, source: bool = True,
                orig_from_grid: bool = False) -> RunStore:
    """Two windows of N_NEW frames (overlap 1) looking at a wall; the second window has scale CHUNK_SCALE.

    * frames: source index 2 * row, timestamp index / 10;
    * ``fx_step``: fx of row r is ``PLANE_K fx + fx_step * r`` (intrinsics groups);
    * ``away``: the last frame looks away from the wall (sees no point; its depth is NaN);
    * map points per window: wall points (unprojected from its new frames) and BEHIND_Z points;
    * ``source``: source rows 0..16: odd indices dropped by the keyframe filter, 7 subsampled,
      15 and 16 read after the last keyframe.
    """
    H, W = PLANE_IMAGE_HW
    h, w = PLANE_DEPTH_HW
    grid_from_orig = np.diag([w / W, h / H, 1.0])
    attrs = {"orig_from_grid": np.linalg.inv(grid_from_orig).tolist()} if orig_from_grid else None
    store = RunStore.create(path, config={"chunk_size": N_NEW + 1, "overlap": 1}, model={"id": "test"},
                            source={"kind": "synthetic"}, image_hw=PLANE_IMAGE_HW, depth_hw=PLANE_DEPTH_HW,
                            descriptor_dim=None, save_rgb=save_rgb, save_conf=True, attrs=attrs)
    rng = np.random.default_rng(3)
    world_from_chunk = [Sim3.identity(), Sim3(CHUNK_SCALE, Rotation.from_rotvec([0.1, 0.3, -0.2]).as_matrix(), [1.0, -0.5, 0.5])]
    for c in range(2):
        rows = np.arange(c * N_NEW, (c + 1) * N_NEW)
        chunk_from_cam = np.tile(np.eye(4), (N_NEW, 1, 1))
        chunk_from_cam[:, :3, :3] = Rotation.from_rotvec(rng.normal(scale=0.05, size=(N_NEW, 3))).as_matrix()
        chunk_from_cam[:, :3, 3] = np.stack([0.15 * np.arange(N_NEW), rng.normal(scale=0.05, size=N_NEW), np.zeros(N_NEW)], 1)
        if away and c == 1:
            chunk_from_cam[-1, :3, :3] = Rotation.from_rotvec([0.0, np.pi, 0.0]).as_matrix()
        K = np.tile(PLANE_K, (N_NEW, 1, 1))
        K[:, 0, 0] += fx_step * rows
        K_grid = np.einsum("ij,njk->nik", grid_from_orig, K)
        depth = np.stack([_plane_depth(chunk_from_cam[k:k + 1], K_grid[k], (h, w))[0] for k in range(N_NEW)])
        # wall points of the first new frame's pixels, and the same rays continued to BEHIND_Z
        P0 = chunk_from_cam[0]
        u, v = np.meshgrid(np.arange(1, w, 2, dtype=np.float64), np.arange(1, h, 2, dtype=np.float64))
        rays = (np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ np.linalg.inv(K_grid[0]).T) @ P0[:3, :3].T
        wall = P0[:3, 3] + rays * ((PLANE_Z - P0[2, 3]) / rays[:, 2:3])
        behind = P0[:3, 3] + rays * ((BEHIND_Z - P0[2, 3]) / rays[:, 2:3])
        xyz = np.concatenate([wall, behind]).astype(np.float32)
        idx = 2 * rows
        src_idx = np.arange(8) if c == 0 else np.arange(8, 17)
        store.append_chunk(ChunkRecord(
            chunk_id=c, frame_start=max(0, rows[0] - 1), frame_index=idx, frame_timestamp=idx / 10.0,
            chunk_from_cam=chunk_from_cam, world_from_cam=world_from_chunk[c].apply_pose(chunk_from_cam),
            intrinsics=K, depth=depth, conf=rng.uniform(1.0, 20.0, (N_NEW, h, w)),
            rgb=rng.integers(0, 256, (N_NEW, h, w, 3), dtype=np.uint8) if save_rgb else None,
            world_from_chunk=world_from_chunk[c], points_xyz=xyz,
            points_rgb=rng.integers(0, 256, (xyz.shape[0], 3), dtype=np.uint8),
            source_index=src_idx if source else None,
            source_timestamp=src_idx / 10.0 if source else None,
            source_kept=(src_idx % 2 == 0) & (src_idx <= 14) if source else None,
            source_skipped=np.where(src_idx == 7, int(SkipReason.SUBSAMPLED), 0) if source else None,
        ))
    return store


def n_wall_points() -> int:
    """Wall points (= hidden points) per window of :func:`plane_store`."""
    h, w = PLANE_DEPTH_HW
    return len(range(1, w, 2)) * len(range(1, h, 2))


def file_source_store(path, source_dir, kind: str = "images", n_frames: int = 24) -> tuple:
    """Run the engine on the small synthetic sequence written as an image folder or a lossless (PNG-codec) video.

    Returns ``(store path, source path, frames (N, H, W, 3) uint8)``: the source's frames, so a test can
    compare what an export re-reads from the source.
    """
    import cv2

    from da3stream.io.sources.video_write import write_video
    from da3stream.streaming.pipeline import reconstruct
    from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence

    seq = small_sequence(n_frames)
    frames = np.stack(list(seq.frames(0, n_frames)))
    source_dir.mkdir(parents=True, exist_ok=True)
    if kind == "images":
        src = source_dir / "frames"
        src.mkdir()
        for i, im in enumerate(frames):
            cv2.imwrite(str(src / f"{i:04d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    else:
        src = source_dir / "video.mov"
        write_video(src, frames, 30.0, codec="png", pix_fmt="rgb24")
    reconstruct(str(src), path, predictor=small_predictor(seq), config={**SMALL_CFG, "chunk_size": 8, "overlap": 2})
    return path, src, frames
