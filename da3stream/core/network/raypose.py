"""Camera pose and intrinsics from the predicted ray map (the official ``use_ray_pose`` path).

For each view, the ray directions (channels 0:3) of the ray map are matched to
the pixel-centre directions of an identity camera on a [-1, 1]^2 image plane:
a confidence-weighted RANSAC fits the homography ``H ~ R K`` (direct linear
transform + SVD on random 8-point samples drawn with the global torch RNG,
scored by weighted inliers, refit on the best inlier set), an RQ-style
decomposition splits it into the rotation and the upper-triangular
intrinsics, and the camera centre is the confidence-weighted mean of the ray
origins (channels 3:6). It draws from the global torch RNG in the same order
as the official code, so equal seeds give equal results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from da3stream.core.network.camera import invert_rigid
from da3stream.errors import PredictionError

MIN_HOMOGRAPHY_POINTS = 4


@dataclass(frozen=True)
class RayPoseParams:
    """RANSAC settings (official defaults)."""

    z_threshold: float = 1e-4
    """Rays with |z| at or below this are ignored (weight 0)."""
    reproj_threshold: float = 0.2
    """Inlier distance on the normalised image plane."""
    iterations: int = 100
    """RANSAC hypotheses per view."""
    sample_size: int = 8
    """Points per hypothesis."""
    sample_ratio: float = 0.3
    """Hypotheses sample from this fraction of the most confident points."""
    max_inliers: int = 8000
    """The refit uses at most this many inliers (randomly chosen)."""
    keep_fraction: float = 0.95
    """... drawn from this most-confident fraction of the inliers."""


def _plane_points(h: int, w: int, device) -> Tensor:
    """(h*w, 2) pixel-centre coordinates of an identity camera with a [-1, 1]^2 image."""
    max_y, max_x = 1 - 1 / h, 1 - 1 / w
    ys = torch.linspace(-max_y + 1.0, max_y + 1.0, h, dtype=torch.float32, device=device) - 1.0
    xs = torch.linspace(-max_x + 1.0, max_x + 1.0, w, dtype=torch.float32, device=device) - 1.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), -1).reshape(-1, 2)


def _dlt(src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """Weighted DLT homographies (..., 3, 3) mapping src (..., K, 2) to dst, with H[2, 2] = 1."""
    w = weight.sqrt()[..., None]
    x, y = src[..., 0:1], src[..., 1:2]
    u, v = dst[..., 0:1], dst[..., 1:2]
    zero = torch.zeros_like(x)
    rows_u = torch.cat([-x * w, -y * w, -w, zero, zero, zero, x * u * w, y * u * w, u * w], -1)
    rows_v = torch.cat([zero, zero, zero, -x * w, -y * w, -w, x * v * w, y * v * w, v * w], -1)
    _, _, vh = torch.linalg.svd(torch.cat([rows_u, rows_v], -2))
    hom = vh[..., -1, :].reshape(vh.shape[:-2] + (3, 3))
    return hom / hom[..., 2:3, 2:3]


def _ransac_homographies(src: Tensor, dst: Tensor, weight: Tensor, p: RayPoseParams) -> Tensor:
    """(V, 3, 3) homographies for V views of N correspondences (src shared (N, 2); dst (V, N, 2))."""
    n_views, n = weight.shape
    n_sample = max(p.sample_size, int(n * p.sample_ratio))
    table = torch.stack(
        [torch.randperm(n_sample, device=weight.device)[: p.sample_size] for _ in range(p.iterations)]
    )  # (iterations, sample_size)
    best_first = torch.argsort(weight, descending=True, dim=1)[:, :n_sample]
    picks = best_first[:, table]  # (V, iterations, sample_size)
    rows = torch.arange(n_views, device=weight.device)[:, None, None]
    src_v = src.expand(n_views, n, 2)
    hyps = _dlt(src_v[rows, picks].flatten(0, 1), dst[rows, picks].flatten(0, 1),
                weight[rows, picks].flatten(0, 1)).unflatten(0, (n_views, p.iterations))
    src_h = torch.cat([src_v, torch.ones(n_views, n, 1, dtype=src.dtype, device=src.device)], -1)
    proj = torch.bmm(src_h[:, None].expand(n_views, p.iterations, n, 3).reshape(-1, n, 3),
                     hyps.reshape(-1, 3, 3).transpose(1, 2))
    proj_xy = (proj[:, :, :2] / proj[:, :, 2:3]).reshape(n_views, p.iterations, n, 2)
    err = ((proj_xy - dst[:, None]) ** 2).sum(-1).sqrt()
    inliers = err < p.reproj_threshold
    best = torch.argmax((inliers * weight[:, None]).sum(-1), dim=1)
    out = []
    for view in range(n_views):
        mask = inliers[view, best[view]]
        s_in, d_in, w_in = src_v[view][mask], dst[view][mask], weight[view][mask]
        order = torch.argsort(w_in, descending=True)
        if order.numel() > p.max_inliers:
            keep = max(int(order.numel() * p.keep_fraction), p.max_inliers)
            order = order[:keep]
            order = order[torch.randperm(keep, device=weight.device)[: p.max_inliers]]
        if order.numel() < MIN_HOMOGRAPHY_POINTS:
            raise PredictionError(f"ray pose: view {view} has {order.numel()} inlier rays, need 4")
        out.append(_dlt(s_in[order], d_in[order], w_in[order]))
    return torch.stack(out)


def _rotation_and_calibration(hom: Tensor) -> tuple[Tensor, Tensor]:
    """Split A (V, 3, 3) = Q L into a rotation Q and a lower-triangular L (via QR of A P)."""
    perm = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]], device=hom.device).float()
    q_t, r_t = torch.linalg.qr(hom @ perm)
    q = q_t @ perm
    low = perm @ r_t @ perm
    sign = torch.sign(torch.diagonal(low, dim1=-2, dim2=-1))  # (V, 3)
    return q * sign[:, None, :], low * sign[:, :, None]


def pose_from_rays(ray: Tensor, ray_conf: Tensor, image_hw: tuple[int, int],
                   params: RayPoseParams = RayPoseParams()) -> tuple[Tensor, Tensor]:
    """``ray`` (B, S, h, w, 6), ``ray_conf`` (B, S, h, w) -> ``cam_from_world`` (B, S, 3, 4), intrinsics (B, S, 3, 3).

    Intrinsics are in pixels of the ``image_hw`` network input.
    """
    b, s, h, w, _ = ray.shape
    height, width = image_hw
    rays = ray.float().reshape(b * s, h * w, 6)
    weight = ray_conf.float().reshape(b * s, h * w).clone()
    src = _plane_points(h, w, ray.device)
    direction = rays[..., :3]
    valid = direction[..., 2].abs() > params.z_threshold  # the plane points have z = 1
    dst = torch.where(valid[..., None], direction[..., :2] / direction[..., 2:3], direction[..., :2])
    weight = torch.where(valid, weight, torch.zeros_like(weight))

    hom = _ransac_homographies(src, dst, weight, params)
    hom = torch.where((torch.linalg.det(hom) < 0)[:, None, None], -hom, hom)
    rot, low = _rotation_and_calibration(hom)
    low = low / low[:, 2:3, 2:3]
    focal = 1.0 / torch.stack((low[:, 0, 0], low[:, 1, 1]), -1)
    centre_px = torch.stack((low[:, 2, 0], low[:, 2, 1]), -1) + 1.0
    cam_centre = (rays[..., 3:] * weight[..., None]).sum(1) / weight.sum(-1, keepdim=True)

    world_from_cam = torch.cat((rot, cam_centre[..., None]), -1)
    k = torch.zeros(b * s, 3, 3, device=ray.device)
    k[:, 0, 0] = focal[:, 0] / 2 * width
    k[:, 1, 1] = focal[:, 1] / 2 * height
    k[:, 0, 2] = centre_px[:, 0] * width * 0.5
    k[:, 1, 2] = centre_px[:, 1] * height * 0.5
    k[:, 2, 2] = 1.0
    return invert_rigid(world_from_cam).reshape(b, s, 3, 4), k.reshape(b, s, 3, 3)
