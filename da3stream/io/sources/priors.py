"""Known camera poses (pose priors) for pose-conditioned inference.

A TUM file (:func:`da3stream.io.export.trajectory.read_tum`: ``timestamp tx ty tz qx qy
qz qw``, each pose ``world_from_cam``) gives camera poses at known times.
:class:`PosePrior` associates frames to them by **nearest timestamp**: frame
``i`` gets the pose whose time is closest to ``timestamps[i] + time_offset``,
if that is at most ``max_diff`` seconds away; otherwise it is not found (its
pose is NaN and ``found[i]`` is False).

Camera axes must be OpenCV's (+x right, +y down, +z forward). Many robot logs
give body or IMU poses (often +x forward) instead: pass their ``body_from_cam``
extrinsic and the poses become ``world_from_body @ body_from_cam``.

Time bases: sources give timestamps from 0 at their first frame
(:attr:`da3stream.io.sources.frames.FrameSource.time_origin` is the absolute
time of 0 for bags). A TUM file may use either base; :meth:`PosePrior.time_offset_for`
picks 0 or the source's time origin, whichever puts the first frame nearer the
span of the prior.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from da3stream.alignment.sim3 import rigid_defects
from da3stream.errors import ConfigError, ShapeError, check_shape
from da3stream.frozen import set_frozen

log = logging.getLogger(__name__)

RIGID_TOL = 1e-6
"""Largest |R^T R - I| entry accepted as a rotation in a prior or a body_from_cam extrinsic."""


def load_pose_prior(path: str | os.PathLike, body_from_cam: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file of known poses: ``(timestamps (M,) float64 s, world_from_cam (M, 4, 4) float64)``.

    ``body_from_cam`` (4, 4) rigid: the file holds ``world_from_body`` poses; they
    are composed to ``world_from_cam``. Rows are returned in time order.

    Raises:
        ExportError: the file is missing or malformed (from :func:`~da3stream.io.export.trajectory.read_tum`).
        ConfigError: no poses, or two poses with the same timestamp.
    """
    from da3stream.io.export.trajectory import read_tum

    timestamps, world_from_x = read_tum(path)
    prior = PosePrior(timestamps, world_from_x, origin=os.fspath(path), body_from_cam=body_from_cam)
    return prior.timestamps.copy(), prior.world_from_cam.copy()


@dataclass(frozen=True, eq=False)
class PosePrior:
    """Known ``world_from_cam`` poses at known times, looked up by nearest timestamp."""

    timestamps: np.ndarray
    """(M,) float64 seconds, strictly increasing (sorted on construction)."""
    world_from_cam: np.ndarray
    """(M, 4, 4) float64 rigid camera-to-world transforms (OpenCV camera axes)."""
    origin: str = "pose prior"
    """Where the poses came from (file path), for messages and the store."""
    body_from_cam: Optional[np.ndarray] = None
    """(4, 4) extrinsic applied on construction (``world_from_cam = world_from_body @ body_from_cam``), or None."""

    def __post_init__(self) -> None:
        t = np.asarray(self.timestamps, dtype=np.float64)
        P = np.asarray(self.world_from_cam, dtype=np.float64)
        try:
            check_shape(f"{self.origin}: timestamps", t, ("M",), "f")
            check_shape(f"{self.origin}: world_from_cam", P, (t.shape[0], 4, 4), "f")
        except ShapeError as exc:
            raise ConfigError(str(exc)) from None
        if t.size == 0:
            raise ConfigError(f"{self.origin}: no poses")
        if not np.all(np.isfinite(t)) or not np.all(np.isfinite(P)):
            raise ConfigError(f"{self.origin}: NaN or inf in timestamps or poses")
        _check_rigid(f"{self.origin}: world_from_cam", P)
        order = np.argsort(t, kind="stable")
        t, P = t[order], P[order]
        dup = np.flatnonzero(np.diff(t) == 0)
        if dup.size:
            raise ConfigError(f"{self.origin}: two poses share the timestamp {float(t[dup[0]])!r}")
        extrinsic = None
        if self.body_from_cam is not None:
            extrinsic = np.asarray(self.body_from_cam, dtype=np.float64)
            try:
                check_shape("body_from_cam", extrinsic, (4, 4), "f")
            except ShapeError as exc:
                raise ConfigError(str(exc)) from None
            _check_rigid("body_from_cam", extrinsic[None])
            P = P @ extrinsic
        set_frozen(self, timestamps=t, world_from_cam=P, body_from_cam=extrinsic)

    @classmethod
    def load(cls, path: str | os.PathLike, body_from_cam: Optional[np.ndarray] = None) -> "PosePrior":
        """A :class:`PosePrior` from a TUM file (see :func:`load_pose_prior`)."""
        from da3stream.io.export.trajectory import read_tum

        timestamps, world_from_x = read_tum(path)
        return cls(timestamps, world_from_x, origin=os.fspath(path), body_from_cam=body_from_cam)

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def lookup(self, timestamps: np.ndarray, max_diff: float, time_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-timestamp association.

        Args:
            timestamps: (N,) float seconds of the frames.
            max_diff: largest accepted |frame time + time_offset - pose time|, seconds (>= 0).
            time_offset: added to ``timestamps`` before matching (see :meth:`time_offset_for`).

        Returns:
            ``world_from_cam`` (N, 4, 4) float64 (NaN where not found) and ``found`` (N,) bool.
            Ties between two equally near poses take the earlier one.
        """
        q = np.asarray(timestamps, dtype=np.float64)
        check_shape("timestamps", q, ("N",), "fiu")
        if not (isinstance(max_diff, (int, float)) and np.isfinite(max_diff) and max_diff >= 0):
            raise ConfigError(f"pose prior max_diff must be a number >= 0 seconds, got {max_diff!r}")
        if not np.isfinite(time_offset):
            raise ConfigError(f"pose prior time_offset must be finite, got {time_offset!r}")
        q = q + float(time_offset)
        t = self.timestamps
        right = np.clip(np.searchsorted(t, q, side="left"), 0, len(t) - 1)
        left = np.clip(right - 1, 0, len(t) - 1)
        take_left = np.abs(q - t[left]) <= np.abs(t[right] - q)
        nearest = np.where(take_left, left, right)
        found = np.isfinite(q) & (np.abs(t[nearest] - q) <= max_diff)
        out = np.full((q.shape[0], 4, 4), np.nan)
        out[found] = self.world_from_cam[nearest[found]]
        return out, found

    def time_offset_for(self, time_origin: float, first_timestamp: float = 0.0) -> float:
        """0.0 or ``time_origin``: the offset that puts the first frame nearer the prior's time span.

        A frame time inside ``[t_first, t_last]`` has distance 0; ties choose 0.0
        (the prior uses the source's relative times).
        """
        lo, hi = float(self.timestamps[0]), float(self.timestamps[-1])

        def distance(offset: float) -> float:
            t = first_timestamp + offset
            return max(lo - t, 0.0, t - hi)

        return float(time_origin) if distance(float(time_origin)) < distance(0.0) else 0.0

    def describe(self) -> dict:
        """JSON-safe record for the store: origin, pose count, time span, extrinsic."""
        return {
            "origin": self.origin, "n_poses": len(self), "t_first": float(self.timestamps[0]),
            "t_last": float(self.timestamps[-1]),
            "body_from_cam": None if self.body_from_cam is None else self.body_from_cam.tolist(),
        }


def conditioning_kwargs(prior: Optional[PosePrior], timestamps: np.ndarray, intrinsics: Optional[np.ndarray], *,
                        max_diff: float, time_offset: float = 0.0) -> dict:
    """Keyword arguments for ``Predictor.predict(batch, **kwargs)`` that condition one window on known cameras.

    Args:
        prior: the pose prior, or None (no conditioning).
        timestamps: (N,) frame timestamps of the window (``FrameBatch.timestamps``).
        intrinsics: (3, 3) or (N, 3, 3) intrinsics of the frames AS DELIVERED (the
            batch's resolution, e.g. ``FrameSource.intrinsics``), or None.
        max_diff: nearest-timestamp tolerance, seconds.
        time_offset: see :meth:`PosePrior.time_offset_for`.

    Returns:
        ``{"world_from_cam": (N, 4, 4), "intrinsics": (N, 3, 3)}`` when every frame
        has a prior pose; ``{}`` when there is no prior or some frame has none
        (the window is then predicted unconditioned; logged).

    Raises:
        ConfigError: a prior without intrinsics (DA3 conditions on both or neither).
    """
    if prior is None:
        return {}
    if intrinsics is None:
        raise ConfigError(f"{prior.origin}: pose priors need known intrinsics (give a calibration too)")
    t = np.asarray(timestamps, dtype=np.float64)
    check_shape("timestamps", t, ("N",), "fiu")
    K = np.asarray(intrinsics, dtype=np.float64)
    K = np.broadcast_to(K, (t.shape[0], 3, 3)).copy() if K.ndim == 2 else K
    check_shape("intrinsics", K, (t.shape[0], 3, 3), "f")
    world_from_cam, found = prior.lookup(t, max_diff, time_offset)
    if not found.all():
        log.info("%s: %d of %d frames of the window at t=%.3f s have no pose within %g s; predicting it unconditioned",
                 prior.origin, int((~found).sum()), len(t), float(t[0]) if len(t) else 0.0, max_diff)
        return {}
    return {"world_from_cam": world_from_cam, "intrinsics": K}


def _check_rigid(name: str, M: np.ndarray) -> None:
    err, det, last = rigid_defects(M)
    bad = np.flatnonzero((err > RIGID_TOL) | (det <= 0))
    if bad.size:
        raise ConfigError(f"{name}: pose {int(bad[0])} is not a rigid transform (|R^T R - I| = {err[bad[0]]:.3g})")
    if last > 0:
        raise ConfigError(f"{name}: a pose's last row is not [0, 0, 0, 1]")


__all__ = ["PosePrior", "conditioning_kwargs", "load_pose_prior"]
