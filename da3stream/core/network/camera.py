"""Camera encoder/decoder of the any-view DA3 models and their 9-D pose encoding.

Pose encoding (per view): ``[t (3), quat_xyzw (4, w >= 0), fov_h, fov_w]`` of
the ``world_from_cam`` transform, with ``fov = 2 atan(side / 2 / focal)`` in
network-input pixels. The decoder predicts this encoding from the camera
token; :func:`decode_pose_encoding` turns it into ``cam_from_world`` (3x4,
OpenCV) and pinhole intrinsics with the principal point at the image centre.

All pose maths runs in fp32 whatever the weights' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from da3stream.core.network.vit import Block, Mlp

CAMERA_ENC_HEADS = 16
"""Attention heads of the camera-encoder trunk."""

CAMERA_ENC_DEPTH = 4
"""Blocks in the camera-encoder trunk."""

CAMERA_ENC_LAYERSCALE = 0.01
"""LayerScale init of the camera-encoder trunk."""

MIN_TAN_HALF_FOV = 1e-6
"""Lower clamp of tan(fov/2) when decoding focal lengths."""

QUAT_DENOM_FLOOR = 0.1
"""Floor of the 2*|q_i| denominators in matrix -> quaternion (numerical safety)."""

POSE_ENCODING_DIM = 9


# ------------------------------------------------------------------------------ pose maths
def invert_rigid(a_from_b: Tensor) -> Tensor:
    """Inverse of rigid transforms (..., 3|4, 4): ``[R | t] -> [R^T | -R^T t]`` (same row count)."""
    rot = a_from_b[..., :3, :3]
    trans = a_from_b[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    top = torch.cat((rot_t, -rot_t @ trans), dim=-1)
    return torch.cat((top, a_from_b[..., 3:, :]), dim=-2)


def quat_xyzw_to_matrix(quat_xyzw: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) from (not necessarily unit) quaternions (..., 4) xyzw."""
    x, y, z, w = quat_xyzw.unbind(-1)
    two_s = 2.0 / (quat_xyzw * quat_xyzw).sum(-1)
    rows = (
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quat_xyzw.shape[:-1] + (3, 3))


def matrix_to_quat_xyzw(rot: Tensor) -> Tensor:
    """Unit quaternions (..., 4) xyzw with w >= 0 from rotation matrices (..., 3, 3).

    Builds the four candidate quaternions (one per largest diagonal term) and
    keeps the best-conditioned one, which is stable for all rotations.
    """
    m = rot.reshape(rot.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    four_sq = torch.stack(
        (1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22), -1
    )
    mag = torch.where(four_sq > 0, four_sq.clamp_min(0).sqrt(), torch.zeros_like(four_sq))  # 2|q_i|
    # candidate k, scaled by 2|q_k| (order w, x, y, z)
    cands = torch.stack((
        torch.stack((mag[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), -1),
        torch.stack((m21 - m12, mag[..., 1] ** 2, m10 + m01, m02 + m20), -1),
        torch.stack((m02 - m20, m10 + m01, mag[..., 2] ** 2, m12 + m21), -1),
        torch.stack((m10 - m01, m20 + m02, m21 + m12, mag[..., 3] ** 2), -1),
    ), -2)
    floor = torch.tensor(QUAT_DENOM_FLOOR, dtype=mag.dtype, device=mag.device)
    cands = cands / (2.0 * torch.maximum(mag, floor))[..., None]
    best = mag.argmax(dim=-1)
    wxyz = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def encode_pose(cam_from_world: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """(B, S, 9) fp32 pose encoding of ``cam_from_world`` (B, S, 3|4, 4) and ``intrinsics`` (B, S, 3, 3)."""
    world_from_cam = invert_rigid(cam_from_world.float())
    k = intrinsics.float()
    height, width = image_hw
    quat_xyzw = matrix_to_quat_xyzw(world_from_cam[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / k[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / k[..., 0, 0])
    return torch.cat((world_from_cam[..., :3, 3], quat_xyzw, fov_h[..., None], fov_w[..., None]), -1)


def decode_pose(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pose encoding (B, S, 9) -> ``cam_from_world`` (B, S, 3, 4), intrinsics (B, S, 3, 3) fp32."""
    pose_enc = pose_enc.float()
    height, width = image_hw
    rot = quat_xyzw_to_matrix(pose_enc[..., 3:7])
    world_from_cam = torch.cat((rot, pose_enc[..., :3, None]), -1)
    fy = (height / 2.0) / torch.clamp(torch.tan(pose_enc[..., 7] / 2.0), MIN_TAN_HALF_FOV)
    fx = (width / 2.0) / torch.clamp(torch.tan(pose_enc[..., 8] / 2.0), MIN_TAN_HALF_FOV)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    k = torch.stack((fx, zero, zero + width / 2, zero, fy, zero + height / 2, zero, zero, one), -1)
    return invert_rigid(world_from_cam), k.reshape(fx.shape + (3, 3))


# ----------------------------------------------------------------------------- modules
class CameraEncoder(nn.Module):
    """Pose encoding (B, S, 9) -> camera tokens (B, S, C): MLP, LayerNorm, 4 blocks across views, LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*(
            Block(dim, CAMERA_ENC_HEADS, ffn="mlp", ln_eps=1e-5, layerscale_init=CAMERA_ENC_LAYERSCALE)
            for _ in range(CAMERA_ENC_DEPTH)
        ))
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.pose_branch = Mlp(POSE_ENCODING_DIM, dim // 2, dim)

    def forward(self, cam_from_world: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """``cam_from_world`` (B, S, 3|4, 4), ``intrinsics`` (B, S, 3, 3) network px -> (B, S, C)."""
        dtype = self.token_norm.weight.dtype
        tokens = self.token_norm(self.pose_branch(encode_pose(cam_from_world, intrinsics, image_hw).to(dtype)))
        for blk in self.trunk:
            tokens = blk(tokens)
        return self.trunk_norm(tokens)


class CameraDecoder(nn.Module):
    """Camera token (B, S, 2C) -> pose encoding (B, S, 9) fp32."""

    def __init__(self, dim_in: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU()
        )
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, camera_token: Tensor) -> Tensor:
        dtype = self.fc_t.weight.dtype
        feat = self.backbone(camera_token.to(dtype))
        return torch.cat((self.fc_t(feat), self.fc_qvec(feat), self.fc_fov(feat)), -1).float()

