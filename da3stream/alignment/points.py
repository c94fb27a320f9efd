"""Chunk-frame points from depth (and DA3 ray maps), and overlap correspondences.

Pixel convention: pixel ``(row v, column u)`` of an ``(h, w)`` grid has its
centre at image coordinates ``(u, v)`` (integers), the OpenCV convention the
intrinsics are expressed in. Camera axes are OpenCV (+x right, +y down,
+z forward); depth is z-depth along +z.

DA3 ray maps. The official network's ray head emits 6 channels per cell of a
grid that is coarser than the depth map (``8 ph x 8 pw`` for a ``14 ph x 14 pw``
input). In the official decoding
(``depth_anything_3.utils.ray_utils.camray_to_caminfo``) channels ``0:3`` are
the ray *direction* -- a homography from the cell centres' ``[x, y, 1]`` on a
normalised [0, 2] image to these vectors yields ``R_world_from_cam`` and the
intrinsics, so the direction is ``R_world_from_cam K^-1 [u, v, 1]`` -- and
channels ``3:6`` the ray *origin* (the camera centre; the official pose takes
their confidence-weighted mean as the translation of ``world_from_cam``).
tests/test_conventions.py pins this against the official decoder. The decoder
is blind to the direction's length; the DA3 paper's depth-ray model leaves
``K^-1 [u, v, 1]`` unnormalised (unit camera-z), so a point is
``origin + depth * direction`` with ``depth`` the z-depth. (The official QL
split recovers the rotation exactly only for a centred principal point.) Cell ``(i, j)`` of an ``(hr, wr)`` ray grid covers
the same image area as the block of depth pixels it spans, so its centre sits
at depth-grid coordinates ``((j + 0.5) w / wr - 0.5, (i + 0.5) h / hr - 0.5)``.

:class:`~da3stream.core.types.Prediction` stores ``rays`` as
``[origin(3), direction(3)]`` (``layout="origin_direction"``, the default here);
pass ``layout="direction_origin"`` for the raw DA3 channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3stream.errors import AlignmentError, ShapeError, check_shape

__all__ = ["Correspondences", "unproject_depth", "points_from_rays", "resample_to_grid", "sample_correspondences"]


@dataclass(frozen=True, eq=False)
class Correspondences:
    """Same-pixel point pairs between two windows' estimates of shared frames."""

    dst: np.ndarray
    """(M, 3) float64 points in the destination (A) chunk frame."""
    src: np.ndarray
    """(M, 3) float64 points in the source (B) chunk frame."""
    weight: np.ndarray
    """(M,) float64 confidence weights (joint confidence over its median, clipped)."""
    depth_dst: np.ndarray
    """(M,) float64 z-depth of each point in A's camera (A's chunk units)."""
    depth_src: np.ndarray
    """(M,) float64 z-depth in B's camera, or A's depth scaled by the point-spread ratio when B's depth is not given."""
    frame: np.ndarray
    """(M,) int64 index of the shared frame each pair comes from."""
    pixel: np.ndarray
    """(M, 2) int64 (row, column) of each pair on the depth grid."""

    def __len__(self) -> int:
        return int(self.dst.shape[0])


def unproject_depth(depth: np.ndarray, intrinsics: np.ndarray, chunk_from_cam: np.ndarray) -> np.ndarray:
    """Back-project z-depth maps into chunk-frame points.

    Args:
        depth: (N, h, w) float z-depth.
        intrinsics: (N, 3, 3) pinhole intrinsics for the (h, w) grid.
        chunk_from_cam: (N, 4, 4) rigid camera-to-chunk transforms.

    Returns:
        (N, h, w, 3) float32 chunk-frame points; pixels whose depth is not
        finite and positive are NaN.
    """
    depth = np.asarray(depth)
    check_shape("unproject_depth(depth)", depth, ("N", "h", "w"), "f")
    n, h, w = depth.shape
    K = np.asarray(intrinsics, dtype=np.float64)
    check_shape("unproject_depth(intrinsics)", K, (n, 3, 3))
    P = np.asarray(chunk_from_cam, dtype=np.float64)
    check_shape("unproject_depth(chunk_from_cam)", P, (n, 4, 4))
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    if np.any(fx == 0) or np.any(fy == 0):
        raise AlignmentError("unproject_depth(intrinsics): zero focal length")
    # Ray through each pixel with unit z (general K, skew included): K^-1 [u, v, 1]. Written as
    # elementwise products over (N, h, w): an einsum is ~8x slower, and a BLAS matmul with an inner
    # dimension of 3 wakes OpenBLAS's thread pool, which then spins on the other cores.
    K_inv = np.linalg.inv(K)[:, :, :, None, None]  # (N, 3, 3, 1, 1)
    u = np.arange(w, dtype=np.float64)[None, None, :]
    v = np.arange(h, dtype=np.float64)[None, :, None]
    rays = [K_inv[:, k, 0] * u + K_inv[:, k, 1] * v + K_inv[:, k, 2] for k in range(3)]  # rays_cam, (N, h, w) each
    d = depth.astype(np.float64)
    d = np.where(np.isfinite(d) & (d > 0), d, np.nan) / rays[2]
    pts_cam = [rays[0] * d, rays[1] * d, rays[2] * d]
    R = P[:, :3, :3, None, None]
    t = P[:, :3, 3, None, None]
    pts = np.empty((n, h, w, 3), np.float32)
    for i in range(3):
        pts[..., i] = R[:, i, 0] * pts_cam[0] + R[:, i, 1] * pts_cam[1] + R[:, i, 2] * pts_cam[2] + t[:, i]
    return pts


def resample_to_grid(values: np.ndarray, out_hw: tuple[int, int], *, method: str = "bilinear") -> np.ndarray:
    """Resample (N, h, w) maps onto an (N, hr, wr) grid covering the same image area.

    Cell centres are aligned (half-pixel convention). ``method`` is
    ``"bilinear"`` (a non-finite neighbour makes the sample NaN) or ``"nearest"``.
    """
    values = np.asarray(values, dtype=np.float64)
    n, h, w = values.shape
    hr, wr = out_hw
    y = np.clip((np.arange(hr) + 0.5) * h / hr - 0.5, 0.0, h - 1.0)
    x = np.clip((np.arange(wr) + 0.5) * w / wr - 0.5, 0.0, w - 1.0)
    if method == "nearest":
        return values[:, np.rint(y).astype(np.int64)][:, :, np.rint(x).astype(np.int64)]
    if method != "bilinear":
        raise AlignmentError(f"resample_to_grid: unknown method {method!r} (expected bilinear or nearest)")
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (y - y0)[None, :, None]
    fx = (x - x0)[None, None, :]
    top = values[:, y0][:, :, x0] * (1 - fx) + values[:, y0][:, :, x1] * fx
    bot = values[:, y1][:, :, x0] * (1 - fx) + values[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bot * fy


def points_from_rays(
    rays: np.ndarray, depth: np.ndarray, *, layout: str = "origin_direction", method: str = "bilinear"
) -> np.ndarray:
    """Chunk-frame points ``origin + depth * direction`` on the ray grid.

    Args:
        rays: (N, hr, wr, 6) ray map (see the module docstring for the layout).
        depth: (N, h, w) z-depth, resampled onto the ray grid with ``method``.
        layout: ``"origin_direction"`` (Prediction.rays) or ``"direction_origin"`` (raw DA3 head).
        method: ``"bilinear"`` or ``"nearest"`` depth resampling.

    Returns:
        (N, hr, wr, 3) float32 points; NaN where depth is not finite and positive.
    """
    rays = np.asarray(rays)
    check_shape("points_from_rays(rays)", rays, ("N", None, None, 6), "f")
    depth = np.asarray(depth)
    check_shape("points_from_rays(depth)", depth, (rays.shape[0], None, None), "f")
    if layout == "origin_direction":
        origin, direction = rays[..., 0:3], rays[..., 3:6]
    elif layout == "direction_origin":
        direction, origin = rays[..., 0:3], rays[..., 3:6]
    else:
        raise AlignmentError(f"points_from_rays(layout): expected origin_direction or direction_origin, got {layout!r}")
    d = np.where(np.isfinite(depth) & (depth > 0), depth.astype(np.float64), np.nan)
    d_grid = resample_to_grid(d, rays.shape[1:3], method=method)
    pts = origin.astype(np.float64) + d_grid[..., None] * direction.astype(np.float64)
    return pts.astype(np.float32)


def _cell_grid(n_cells: int, h: int, w: int) -> tuple[int, int]:
    """Grid (gy, gx) with about ``n_cells`` cells shaped like the image."""
    gy = max(1, min(h, int(round(np.sqrt(n_cells * h / w)))))
    gx = max(1, min(w, int(round(n_cells / gy))))
    return gy, gx


def sample_correspondences(
    pts_a: np.ndarray,
    conf_a: np.ndarray,
    depth_a: np.ndarray,
    pts_b: np.ndarray,
    conf_b: np.ndarray,
    *,
    max_points: int,
    conf_quantile: float,
    rng: np.random.Generator,
    depth_b: np.ndarray | None = None,
    max_weight: float = 10.0,
) -> Correspondences:
    """Same-pixel point pairs from K shared frames, confidence-filtered and spatially spread.

    Args:
        pts_a: (K, h, w, 3) shared frames' points in A's chunk frame (destination).
        conf_a: (K, h, w) A's confidence.
        depth_a: (K, h, w) A's z-depth.
        pts_b: (K, h, w, 3) the same frames' points in B's chunk frame (source).
        conf_b: (K, h, w) B's confidence.
        max_points: cap on returned pairs.
        conf_quantile: drop this lowest fraction (0..1) of the joint confidence
            ``sqrt(conf_a * conf_b)`` among valid pixels.
        rng: random generator; the result is a deterministic function of its state.
        depth_b: optional (K, h, w) B's z-depth (sets ``depth_src``).
        max_weight: weights are the joint confidence over its median, clipped to this.

    Returns:
        :class:`Correspondences`. Pixels with non-finite points, non-positive
        depth or non-finite confidence are dropped. Sampling is stratified:
        each frame is cut into about ``max_points / K`` cells, every occupied
        cell gives one random pixel, then a second, ... until ``max_points``
        are taken, so points cover the images instead of clustering where
        confidence is high.

    Raises:
        AlignmentError: no valid pixel survives.
    """
    k, h, w = _check_sample_args(pts_a, conf_a, depth_a, pts_b, conf_b, depth_b, max_points, conf_quantile)
    pa = np.asarray(pts_a, dtype=np.float64).reshape(-1, 3)
    pb = np.asarray(pts_b, dtype=np.float64).reshape(-1, 3)
    da = np.asarray(depth_a, dtype=np.float64).ravel()
    db = None if depth_b is None else np.asarray(depth_b, dtype=np.float64).ravel()
    idx, joint = _confident_pixels(pa, pb, conf_a, conf_b, da, db, conf_quantile)
    frame, rem = np.divmod(idx, h * w)
    row, col = np.divmod(rem, w)
    pick = _stratified_pick(frame, row, col, (k, h, w), max_points, rng)
    sel = idx[pick]

    med = np.median(joint[sel])
    weight = np.clip(joint[sel] / med, 0.0, max_weight)
    dst, src = pa[sel], pb[sel]
    depth_dst = da[sel]
    if db is not None:
        depth_src = db[sel]
    else:
        spread_a = np.median(np.linalg.norm(dst - np.median(dst, axis=0), axis=1))
        spread_b = np.median(np.linalg.norm(src - np.median(src, axis=0), axis=1))
        ratio = spread_b / spread_a if spread_a > 0 and spread_b > 0 else 1.0
        depth_src = depth_dst * ratio
    return Correspondences(
        dst=dst,
        src=src,
        weight=weight,
        depth_dst=depth_dst,
        depth_src=depth_src,
        frame=frame[pick].astype(np.int64),
        pixel=np.stack([row[pick], col[pick]], axis=1).astype(np.int64),
    )


def _check_sample_args(pts_a, conf_a, depth_a, pts_b, conf_b, depth_b, max_points: int, conf_quantile: float):
    """Shape and range checks of :func:`sample_correspondences`; returns ``(K, h, w)``."""
    pts_a = np.asarray(pts_a)
    check_shape("sample_correspondences(pts_a)", pts_a, ("K", "h", "w", 3), "f")
    k, h, w, _ = pts_a.shape
    check_shape("sample_correspondences(pts_b)", np.asarray(pts_b), (k, h, w, 3), "f")
    for name, arr in (("conf_a", conf_a), ("depth_a", depth_a), ("conf_b", conf_b)):
        check_shape(f"sample_correspondences({name})", np.asarray(arr), (k, h, w), "fiu")
    if depth_b is not None:
        check_shape("sample_correspondences(depth_b)", np.asarray(depth_b), (k, h, w), "fiu")
    if max_points < 1:
        raise ShapeError(f"sample_correspondences(max_points): must be >= 1, got {max_points}")
    if not 0.0 <= conf_quantile < 1.0:
        raise ShapeError(f"sample_correspondences(conf_quantile): must lie in [0, 1), got {conf_quantile}")
    return k, h, w


def _confident_pixels(pa, pb, conf_a, conf_b, da, db, conf_quantile: float):
    """Flat indices of the valid pixels above the joint-confidence quantile, and the joint confidence."""
    ca = np.asarray(conf_a, dtype=np.float64).ravel()
    cb = np.asarray(conf_b, dtype=np.float64).ravel()
    joint = np.sqrt(np.clip(ca, 0.0, None) * np.clip(cb, 0.0, None))
    valid = np.all(np.isfinite(pa), axis=1) & np.all(np.isfinite(pb), axis=1)
    valid &= np.isfinite(da) & (da > 0) & np.isfinite(joint) & (joint > 0)
    if db is not None:
        valid &= np.isfinite(db) & (db > 0)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        raise AlignmentError("sample_correspondences: no valid overlap pixel (depth, points or confidence)")
    if conf_quantile > 0.0:
        cut = np.quantile(joint[idx], conf_quantile)
        keep = joint[idx] > cut
        if np.any(keep):
            idx = idx[keep]
        # else: all confidences equal; keep every valid pixel.
    return idx, joint


def _stratified_pick(frame, row, col, khw: tuple, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of up to ``max_points`` pixels, one per image cell in turn (see sample_correspondences)."""
    k, h, w = khw
    gy, gx = _cell_grid(max(1, int(np.ceil(max_points / k))), h, w)
    cell = (frame * gy + row * gy // h) * gx + col * gx // w
    # Round-robin over cells in random order: rank r of a pixel inside its cell.
    key = rng.random(frame.size)
    order = np.lexsort((key, cell))
    cell_sorted = cell[order]
    starts = np.r_[0, np.flatnonzero(np.diff(cell_sorted)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, cell_sorted.size]))
    rank = np.arange(cell_sorted.size) - first
    cell_rank = rng.permutation(int(cell.max()) + 1)
    pick = order[np.lexsort((cell_rank[cell_sorted], rank))[:max_points]]
    return np.sort(pick)
