"""TUM and KITTI trajectory files: the one place where their conventions are converted.

TUM: one pose per line, ``timestamp tx ty tz qx qy qz qw`` (seconds, metres or
run units, ``quat_xyzw``), the pose being ``world_from_cam`` (camera centre and
orientation in the world). Lines starting with ``#`` and blank lines are ignored.

KITTI: one pose per line, the first three rows of the 4x4 ``world_from_cam``
matrix, row-major: ``r11 r12 r13 tx r21 r22 r23 ty r31 r32 r33 tz``. No timestamps.

Numbers are written with Python's shortest round-trip repr, so a write/read
cycle reproduces every float64 exactly. Reading or writing problems raise
:class:`~da3stream.errors.ExportError` with the file and line number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy.spatial.transform import Rotation

from da3stream.errors import ExportError, check_shape

PathLike = Union[str, os.PathLike]

__all__ = ["read_kitti", "read_tum", "write_kitti", "write_tum"]

RIGID_TOL = 1e-6
"""Largest |R^T R - I| entry accepted as a rotation when writing."""
QUAT_NORM_TOL = 1e-3
"""Quaternions whose norm differs from 1 by more than this are rejected on read."""


def write_tum(path: PathLike, timestamps: np.ndarray, world_from_cam: np.ndarray,
              segments: Optional[np.ndarray] = None) -> None:
    """Write ``timestamps`` (N,) float64 s and rigid ``world_from_cam`` (N, 4, 4) as a TUM file.

    Quaternions are normalised with ``qw >= 0``. ``segments``: optional (N,) int
    trajectory segment of each pose; when there are several, a ``# segment K
    starts`` comment line precedes the first pose of each (TUM readers, evo's
    included, skip ``#`` lines).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    poses = np.asarray(world_from_cam, dtype=np.float64)
    check_shape("write_tum(timestamps)", ts, ("N",), "fiu")
    check_shape("write_tum(world_from_cam)", poses, (ts.shape[0], 4, 4), "f")
    _check_rigid(path, poses)
    quat_xyzw = Rotation.from_matrix(poses[:, :3, :3]).as_quat() if len(poses) else np.zeros((0, 4))
    quat_xyzw = np.where(quat_xyzw[:, 3:4] < 0, -quat_xyzw, quat_xyzw)
    rows = np.concatenate([ts[:, None], poses[:, :3, 3], quat_xyzw], axis=1)
    _write_rows(path, rows, "# timestamp tx ty tz qx qy qz qw  (world_from_cam, quat_xyzw)\n",
                segment_starts(segments, ts.shape[0]))


def read_tum(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file: ``(timestamps (N,) float64, world_from_cam (N, 4, 4) float64)``."""
    rows = _read_rows(path, 8, "TUM (timestamp tx ty tz qx qy qz qw)")
    quat_xyzw = rows[:, 4:8]
    norms = np.linalg.norm(quat_xyzw, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > QUAT_NORM_TOL)
    if bad.size:
        line = _line_numbers(path)[bad[0]]
        raise ExportError(f"{path}:{line}: quaternion norm {norms[bad[0]]:.6g} is not 1")
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    if rows.shape[0]:
        poses[:, :3, :3] = Rotation.from_quat(quat_xyzw / norms[:, None]).as_matrix()
    poses[:, :3, 3] = rows[:, 1:4]
    return rows[:, 0].copy(), poses


def write_kitti(path: PathLike, world_from_cam: np.ndarray) -> None:
    """Write rigid ``world_from_cam`` (N, 4, 4) as a KITTI pose file (12 numbers per line)."""
    poses = np.asarray(world_from_cam, dtype=np.float64)
    check_shape("write_kitti(world_from_cam)", poses, ("N", 4, 4), "f")
    _check_rigid(path, poses)
    _write_rows(path, poses[:, :3, :].reshape(-1, 12), "")


def read_kitti(path: PathLike) -> np.ndarray:
    """Read a KITTI pose file: ``world_from_cam`` (N, 4, 4) float64."""
    rows = _read_rows(path, 12, "KITTI (12 numbers: a 3x4 matrix, row-major)")
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


# ----------------------------------------------------------------------------- helpers


def _check_rigid(path: PathLike, poses: np.ndarray) -> None:
    if not np.all(np.isfinite(poses)):
        k = int(np.flatnonzero(~np.all(np.isfinite(poses.reshape(len(poses), -1)), axis=1))[0])
        raise ExportError(f"{path}: pose {k} contains NaN or inf")
    if len(poses) == 0:
        return
    R = poses[:, :3, :3]
    err = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = np.flatnonzero((err > RIGID_TOL) | (det <= 0))
    if bad.size:
        raise ExportError(f"{path}: pose {int(bad[0])} is not a rigid transform (|R^T R - I| = {err[bad[0]]:.3g})")
    if np.abs(poses[:, 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 0:
        raise ExportError(f"{path}: a pose's last row is not [0, 0, 0, 1]")


def segment_starts(segments: Optional[np.ndarray], n: int) -> dict[int, str]:
    """``{pose position: "# segment K starts\\n"}`` where (N,) int ``segments`` changes; {} for one segment or None."""
    if segments is None:
        return {}
    seg = np.asarray(segments)
    check_shape("segments", seg, (n,), "iu")
    if n == 0 or np.all(seg == seg[0]):
        return {}
    starts = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]]))
    return {int(i): f"# segment {int(seg[i])} starts\n" for i in starts}


def _write_rows(path: PathLike, rows: np.ndarray, header: str, comments: Optional[dict[int, str]] = None) -> None:
    comments = comments or {}
    text = header + "".join(comments.get(i, "") + " ".join(repr(float(v)) for v in row) + "\n" for i, row in enumerate(rows))
    p = Path(path)
    tmp = p.with_name(p.name + ".partial")
    try:
        if p.parent and not p.parent.exists():
            raise ExportError(f"{p}: directory {p.parent} does not exist")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{p}: cannot write ({exc.strerror or exc})") from None


def _data_lines(path: PathLike) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((n, s))
    return out


def _line_numbers(path: PathLike) -> list[int]:
    return [n for n, _ in _data_lines(path)]


def _read_rows(path: PathLike, width: int, what: str) -> np.ndarray:
    lines = _data_lines(path)
    rows = np.empty((len(lines), width), dtype=np.float64)
    for k, (n, s) in enumerate(lines):
        parts = s.replace(",", " ").split()
        if len(parts) != width:
            raise ExportError(f"{path}:{n}: expected {width} numbers per line for {what}, got {len(parts)}")
        try:
            rows[k] = [float(v) for v in parts]
        except ValueError:
            raise ExportError(f"{path}:{n}: not a number in {s[:60]!r}") from None
        if not np.all(np.isfinite(rows[k])):
            raise ExportError(f"{path}:{n}: NaN or inf in a pose")
    return rows
