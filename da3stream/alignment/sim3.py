"""Sim(3) values: x -> s R x + t, named ``dst_from_src``.

A :class:`Sim3` is immutable; composing or inverting returns a new one.
``a_from_b @ b_from_c`` is ``a_from_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3stream.errors import AlignmentError, check_shape
from da3stream.frozen import set_frozen


@dataclass(frozen=True)
class Sim3:
    """A similarity transform x -> s R x + t."""

    s: float
    """Positive scale."""
    R: np.ndarray
    """(3, 3) float64 rotation."""
    t: np.ndarray
    """(3,) float64 translation."""

    def __post_init__(self) -> None:
        R = np.array(self.R, dtype=np.float64)
        t = np.array(self.t, dtype=np.float64).reshape(3)
        check_shape("Sim3.R", R, (3, 3))
        s = float(self.s)
        if not np.isfinite(s) or s <= 0.0:
            raise AlignmentError(f"Sim3: scale must be finite and positive, got {s}")
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise AlignmentError("Sim3: rotation or translation contains NaN or inf")
        set_frozen(self, s=s, R=R, t=t)

    @staticmethod
    def identity() -> "Sim3":
        return Sim3(1.0, np.eye(3), np.zeros(3))

    @staticmethod
    def from_matrix(M: np.ndarray) -> "Sim3":
        """From a 4x4 matrix [[sR, t], [0, 1]]."""
        M = np.asarray(M, dtype=np.float64)
        check_shape("Sim3.from_matrix(M)", M, (4, 4))
        sR = M[:3, :3]
        s = float(np.cbrt(np.linalg.det(sR)))
        if not np.isfinite(s) or s <= 0:
            raise AlignmentError(f"Sim3.from_matrix: determinant of the linear part is not positive ({s})")
        return Sim3(s, sR / s, M[:3, 3])

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 [[sR, t], [0, 1]]."""
        M = np.eye(4)
        M[:3, :3] = self.s * self.R
        M[:3, 3] = self.t
        return M

    def inverse(self) -> "Sim3":
        Rt = self.R.T
        return Sim3(1.0 / self.s, Rt, -(Rt @ self.t) / self.s)

    def __matmul__(self, other: "Sim3") -> "Sim3":
        if not isinstance(other, Sim3):
            return NotImplemented
        return Sim3(self.s * other.s, self.R @ other.R, self.s * (self.R @ other.t) + self.t)

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map points (..., 3) -> (..., 3)."""
        pts = np.asarray(pts)
        return (self.s * (pts @ self.R.T) + self.t).astype(np.result_type(pts.dtype, np.float32), copy=False)

    def apply_pose(self, src_from_cam: np.ndarray) -> np.ndarray:
        """Map rigid camera poses ``src_from_cam`` (..., 4, 4) to ``dst_from_cam``.

        The rotation is composed, the camera centre is mapped by the full Sim(3);
        the result stays rigid (scale only moves the centre).
        """
        P = np.asarray(src_from_cam, dtype=np.float64)
        out = P.copy()
        out[..., :3, :3] = self.R @ P[..., :3, :3]
        out[..., :3, 3] = self.s * (P[..., :3, 3] @ self.R.T) + self.t
        return out

    def to_array(self) -> np.ndarray:
        """(8,) float64 [s, quat_xyzw(4), t(3)] for storage."""
        from scipy.spatial.transform import Rotation

        return np.concatenate([[self.s], Rotation.from_matrix(self.R).as_quat(), self.t])

    @staticmethod
    def from_array(a: np.ndarray) -> "Sim3":
        """Inverse of :meth:`to_array`."""
        from scipy.spatial.transform import Rotation

        a = np.asarray(a, dtype=np.float64)
        check_shape("Sim3.from_array(a)", a, (8,))
        return Sim3(a[0], Rotation.from_quat(a[1:5]).as_matrix(), a[5:8])


def invert_rigid(a_from_b: np.ndarray) -> np.ndarray:
    """Invert rigid transforms (..., 4, 4) exactly (R^T, -R^T t)."""
    M = np.asarray(a_from_b, dtype=np.float64)
    out = np.zeros_like(M)
    Rt = np.swapaxes(M[..., :3, :3], -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, M[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def rigid_defects(transforms: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """How far (N, 4, 4) transforms are from rigid: per transform the largest ``|R^T R - I|``
    entry and ``det(R)``, and the largest deviation of any last row from ``[0, 0, 0, 1]``
    (0.0 for N = 0). Callers decide the tolerance and the error to raise."""
    R = transforms[..., :3, :3]
    orth = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-2, -1))
    last = np.abs(transforms[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0]))
    return orth, np.linalg.det(R), float(last.max()) if last.size else 0.0


def cam_from_world_3x4_to_world_from_cam(cam_from_world: np.ndarray) -> np.ndarray:
    """The one adapter from DA3's (N, 3, 4) ``cam_from_world`` to (N, 4, 4) ``world_from_cam``."""
    E = np.asarray(cam_from_world, dtype=np.float64)
    check_shape("cam_from_world", E, ("N", 3, 4))
    M = np.zeros(E.shape[:-2] + (4, 4))
    M[..., :3, :] = E
    M[..., 3, 3] = 1.0
    return invert_rigid(M)
