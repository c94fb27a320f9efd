"""Known camera intrinsics and lens distortion: parsing, loading, scaling, undistortion.

A :class:`Calibration` is a frozen value: ``K`` (3, 3), OpenCV distortion
coefficients ``dist`` (k,), the lens ``model`` (``"pinhole"``: OpenCV's
rational/tangential model, 4, 5, 8, 12 or 14 coefficients; ``"fisheye"``:
OpenCV's equidistant ``cv2.fisheye`` model, 4 coefficients) and the
``image_hw`` it was calibrated for (None when unknown).

Inputs (:func:`calibration_from_arg` picks one):

- text ``"fx,fy,cx,cy"`` or ``"fx,fy,cx,cy,k1,k2,p1,p2[,k3,...]"``
  (:func:`parse_intrinsics`; pinhole, resolution unknown);
- a YAML file (:func:`load_calibration`) in one of these layouts:

  * OpenCV ``FileStorage`` (``%YAML:1.0`` header, ``!!opencv-matrix`` nodes):
    ``camera_matrix``, ``distortion_coefficients``, optional
    ``image_width``/``image_height`` and ``distortion_model``;
  * ROS ``camera_info`` (camera_calibration_parsers): ``camera_matrix``,
    ``distortion_model`` (``plumb_bob``, ``rational_polynomial``,
    ``equidistant``), ``distortion_coefficients``, ``image_width``/``image_height``
    (``rectification_matrix`` and ``projection_matrix`` are ignored: frames are
    undistorted, not stereo-rectified);
  * plain: ``fx, fy, cx, cy``, optional ``dist: [...]``, ``width``, ``height``,
    ``model: pinhole|fisheye``;
  * Kalibr camchain: ``cam0`` with ``camera_model: pinhole``,
    ``intrinsics: [fu, fv, pu, pv]``, ``distortion_model: radtan|equidistant|none``,
    ``distortion_coeffs``, ``resolution: [w, h]`` (the first camera is used).

Resolution: intrinsics given for another resolution than the frames are scaled
when the aspect ratio matches (:meth:`Calibration.for_size`), following the
project's pixel convention (``da3stream.core.preprocess``: a resize multiplies
``fx, cx`` by ``w_new / w`` and ``fy, cy`` by ``h_new / h``); distortion
coefficients act on normalised coordinates and do not change.

Undistortion (:class:`Undistorter`) precomputes ``cv2.initUndistortRectifyMap``
maps once per frame size and remaps every frame. ``K_new``, the intrinsics of the
undistorted image, comes from ``cv2.getOptimalNewCameraMatrix`` (pinhole) or
``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify`` (fisheye) with
``alpha = 0`` by default: the undistorted frame is zoomed so that every output
pixel sees the lens image, with no black border (the network would otherwise
take the border for content). ``alpha = 1`` keeps every source pixel (black
corners); ``alpha = None`` keeps ``K_new = K``. Without distortion the frames
pass through unchanged and ``K_new = K``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from da3stream.errors import ConfigError, ShapeError, check_shape
from da3stream.frozen import set_frozen

log = logging.getLogger(__name__)

MODELS = ("pinhole", "fisheye")
"""Lens models: OpenCV's standard (rational + tangential + thin prism + tilt) model, and cv2.fisheye."""
PINHOLE_DIST_SIZES = (0, 4, 5, 8, 12, 14)
"""Numbers of distortion coefficients OpenCV accepts for the pinhole model."""
FISHEYE_DIST_SIZES = (0, 4)
"""Numbers of distortion coefficients of the fisheye model (k1..k4)."""

# distortion_model names of ROS camera_info and Kalibr -> our model
_ROS_MODELS = {
    "plumb_bob": "pinhole", "rational_polynomial": "pinhole", "radtan": "pinhole", "pinhole": "pinhole",
    "none": "pinhole", "opencv": "pinhole", "equidistant": "fisheye", "fisheye": "fisheye",
    "kannala_brandt": "fisheye",
}
_NUMBER = re.compile(r"^[\s\d.,eE+\-]+$")


@dataclass(frozen=True, eq=False)
class Calibration:
    """Intrinsics and distortion of one camera (see the module docstring)."""

    K: np.ndarray
    """(3, 3) float64 pinhole intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels."""
    dist: np.ndarray
    """(k,) float64 OpenCV distortion coefficients (k in PINHOLE_DIST_SIZES or FISHEYE_DIST_SIZES)."""
    model: str = "pinhole"
    """``"pinhole"`` (OpenCV standard model) or ``"fisheye"`` (cv2.fisheye equidistant model)."""
    image_hw: Optional[tuple] = None
    """(H, W) the calibration is for, or None when unknown."""
    origin: str = "intrinsics"
    """Where it came from (file path or the text given), for error messages and the store."""

    def __post_init__(self) -> None:
        K = np.array(self.K, dtype=np.float64)
        dist = np.array(self.dist, dtype=np.float64).reshape(-1)
        try:
            check_shape(f"{self.origin}: K", K, (3, 3), "f")
        except ShapeError as exc:
            raise ConfigError(str(exc)) from None
        if not np.all(np.isfinite(K)) or not np.all(np.isfinite(dist)):
            raise ConfigError(f"{self.origin}: intrinsics and distortion must be finite numbers")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ConfigError(f"{self.origin}: focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
        if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
            raise ConfigError(f"{self.origin}: camera matrix must have the form [[fx, s, cx], [0, fy, cy], [0, 0, 1]]")
        if self.model not in MODELS:
            raise ConfigError(f"{self.origin}: model must be pinhole or fisheye, got {self.model!r}")
        sizes = PINHOLE_DIST_SIZES if self.model == "pinhole" else FISHEYE_DIST_SIZES
        if dist.size not in sizes:
            raise ConfigError(
                f"{self.origin}: the {self.model} model takes {', '.join(map(str, sizes[1:]))} distortion coefficients, got {dist.size}")
        hw = self.image_hw
        if hw is not None:
            if len(hw) != 2 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in hw):
                raise ConfigError(f"{self.origin}: image size must be two positive integers (H, W), got {hw}")
            hw = (int(hw[0]), int(hw[1]))
        set_frozen(self, K=K, dist=dist, image_hw=hw)

    @property
    def has_distortion(self) -> bool:
        """True when any distortion coefficient is non-zero."""
        return bool(np.any(self.dist != 0))

    def for_size(self, image_hw: tuple, aspect_tolerance: float = 0.01) -> "Calibration":
        """This calibration for frames of ``image_hw`` = (H, W).

        Returns ``self`` when the sizes agree or the calibration's size is unknown;
        scales ``K`` when the aspect ratios agree within ``aspect_tolerance``
        (relative). Raises :class:`ConfigError` naming the origin otherwise.
        """
        H, W = int(image_hw[0]), int(image_hw[1])
        if self.image_hw is None or self.image_hw == (H, W):
            return self
        h0, w0 = self.image_hw
        if abs((W / H) / (w0 / h0) - 1.0) > aspect_tolerance:
            raise ConfigError(
                f"{self.origin}: calibration is for {w0}x{h0} images but the frames are {W}x{H} (different aspect ratio)")
        scale = np.diag([W / w0, H / h0, 1.0])
        log.info("%s: scaling intrinsics from %dx%d to %dx%d", self.origin, w0, h0, W, H)
        return Calibration(scale @ self.K, self.dist, self.model, (H, W), self.origin)

    def describe(self) -> dict:
        """JSON-safe record for the store: K (3x3 list), dist, model, image_hw, origin."""
        return {
            "K": self.K.tolist(), "dist": self.dist.tolist(), "model": self.model,
            "image_hw": None if self.image_hw is None else list(self.image_hw), "origin": self.origin,
        }


# --------------------------------------------------------------------------- parsing


def parse_intrinsics(text: str) -> Calibration:
    """``"fx,fy,cx,cy"`` or ``"fx,fy,cx,cy,k1,k2,p1,p2[,k3,...]"`` -> pinhole :class:`Calibration`.

    Raises:
        ConfigError: not comma-separated numbers, a wrong count (4 + 0/4/5/8/12/14),
            non-positive focal lengths or non-finite values.
    """
    origin = f"intrinsics {text!r}"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{origin}: expected comma-separated numbers fx,fy,cx,cy[,k1,k2,p1,p2,...]") from None
    n_dist = len(values) - 4
    if n_dist not in PINHOLE_DIST_SIZES:
        raise ConfigError(
            f"{origin}: expected 4 values (fx,fy,cx,cy) or 4 plus 4, 5, 8, 12 or 14 distortion coefficients, got {len(values)}")
    fx, fy, cx, cy = values[:4]
    return Calibration(_k_matrix(fx, fy, cx, cy), np.array(values[4:]), "pinhole", None, origin)


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration YAML in any layout of the module docstring.

    Raises:
        ConfigError: missing or unreadable file, malformed YAML, unknown layout,
            missing keys, wrong value counts or non-positive focal lengths
            (one line naming the file).
    """
    path = Path(path)
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{origin}: calibration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: cannot read calibration ({getattr(exc, 'strerror', None) or exc})") from None
    data = _parse_yaml(text, origin)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of calibration keys at the top level")
    if "camera_matrix" in data or "K" in data:
        return _from_camera_matrix(data, origin)
    if all(k in data for k in ("fx", "fy", "cx", "cy")):
        return _from_plain(data, origin)
    cams = sorted(k for k, v in data.items() if isinstance(k, str) and re.fullmatch(r"cam\d+", k) and isinstance(v, dict))
    if cams:
        if len(cams) > 1:
            log.info("%s: %d cameras in the camchain; using %s", origin, len(cams), cams[0])
        return _from_kalibr(data[cams[0]], origin)
    keys = ", ".join(map(str, list(data)[:8]))
    raise ConfigError(f"{origin}: unknown calibration layout (keys: {keys}); expected camera_matrix, fx/fy/cx/cy or cam0")


def calibration_from_arg(value: Any) -> Optional[Calibration]:
    """A :class:`Calibration` from None, a Calibration, a YAML path or ``"fx,fy,cx,cy[,...]"`` text.

    A string naming an existing file is loaded as YAML; a string of numbers and
    commas is parsed as intrinsics; anything else is a :class:`ConfigError`.
    """
    if value is None or isinstance(value, Calibration):
        return value
    if isinstance(value, os.PathLike):
        return load_calibration(value)
    if isinstance(value, str):
        if Path(value).is_file():
            return load_calibration(value)
        if "," in value and _NUMBER.match(value):
            return parse_intrinsics(value)
        if Path(value).suffix.lower() in (".yaml", ".yml"):
            raise ConfigError(f"{value}: calibration file not found")
        raise ConfigError(f"intrinsics {value!r}: neither a calibration file nor fx,fy,cx,cy numbers")
    raise ConfigError(f"intrinsics: expected a path, 'fx,fy,cx,cy' text or a Calibration, got {type(value).__name__}")


def _k_matrix(fx: float, fy: float, cx: float, cy: float, skew: float = 0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _parse_yaml(text: str, origin: str) -> Any:
    import yaml

    class _Loader(yaml.SafeLoader):
        """SafeLoader that also reads OpenCV's ``!!opencv-matrix`` nodes as mappings."""

    def matrix(loader, node):
        return dict(loader.construct_mapping(node, deep=True), _opencv_matrix=True)

    _Loader.add_constructor("tag:yaml.org,2002:opencv-matrix", matrix)
    lines = text.splitlines()
    if lines and lines[0].startswith("%YAML:"):  # OpenCV writes "%YAML:1.0", which YAML 1.1 parsers reject
        lines[0] = ""
    try:
        return yaml.load("\n".join(lines), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(f"{origin}: malformed YAML{where}" + (f" ({problem})" if problem else "")) from None


def _numbers(value: Any, origin: str, key: str) -> np.ndarray:
    """A list of numbers from a list, a nested list, or a ``{rows, cols, data}`` matrix node."""
    if isinstance(value, dict):
        if "data" not in value:
            raise ConfigError(f"{origin}: {key} has no 'data' list")
        data = _numbers(value["data"], origin, key)
        rows, cols = value.get("rows"), value.get("cols")
        if isinstance(rows, int) and isinstance(cols, int) and rows * cols != data.size:
            raise ConfigError(f"{origin}: {key} declares {rows}x{cols} values but has {data.size}")
        return data
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.array([float(value)])
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{origin}: {key} must be a list of numbers, got {value!r}")
    try:
        arr = np.array(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {key} must be a list of numbers") from None
    return arr


def _size(data: dict, origin: str, w_key: str, h_key: str) -> Optional[tuple]:
    w, h = data.get(w_key), data.get(h_key)
    if w is None and h is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise ConfigError(f"{origin}: {w_key} and {h_key} must both be positive integers, got {w!r} and {h!r}")
    return (h, w)


def _model(name: Any, origin: str) -> str:
    key = str(name).strip().lower()
    if key not in _ROS_MODELS:
        raise ConfigError(f"{origin}: unsupported distortion model {name!r} (supported: {', '.join(sorted(_ROS_MODELS))})")
    return _ROS_MODELS[key]


def _from_camera_matrix(data: dict, origin: str) -> Calibration:
    key = "camera_matrix" if "camera_matrix" in data else "K"
    k = _numbers(data[key], origin, key)
    if k.size != 9:
        raise ConfigError(f"{origin}: {key} must have 9 values (3x3), got {k.size}")
    dist_key = next((d for d in ("distortion_coefficients", "D", "dist") if d in data), None)
    dist = np.zeros(0) if dist_key is None else _numbers(data[dist_key], origin, dist_key)
    model = _model(data.get("distortion_model", "plumb_bob"), origin)
    return Calibration(k.reshape(3, 3), dist, model, _size(data, origin, "image_width", "image_height"), origin)


def _from_plain(data: dict, origin: str) -> Calibration:
    vals = {}
    for key in ("fx", "fy", "cx", "cy"):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{origin}: {key} must be a number, got {v!r}")
        vals[key] = float(v)
    dist = _numbers(data["dist"], origin, "dist") if data.get("dist") is not None else np.zeros(0)
    model = str(data.get("model", "pinhole")).strip().lower()
    if model not in MODELS:
        raise ConfigError(f"{origin}: model must be pinhole or fisheye, got {data.get('model')!r}")
    return Calibration(_k_matrix(vals["fx"], vals["fy"], vals["cx"], vals["cy"]), dist, model,
                       _size(data, origin, "width", "height"), origin)


def _from_kalibr(cam: dict, origin: str) -> Calibration:
    camera_model = str(cam.get("camera_model", "pinhole")).lower()
    if camera_model != "pinhole":
        raise ConfigError(f"{origin}: unsupported Kalibr camera_model {camera_model!r} (only pinhole)")
    if "intrinsics" not in cam:
        raise ConfigError(f"{origin}: cam0 has no 'intrinsics' [fu, fv, pu, pv]")
    intr = _numbers(cam["intrinsics"], origin, "intrinsics")
    if intr.size != 4:
        raise ConfigError(f"{origin}: intrinsics must have 4 values [fu, fv, pu, pv], got {intr.size}")
    model = _model(cam.get("distortion_model", "none"), origin)
    dist = _numbers(cam["distortion_coeffs"], origin, "distortion_coeffs") if cam.get("distortion_coeffs") is not None else np.zeros(0)
    size = None
    if cam.get("resolution") is not None:
        res = cam["resolution"]
        if not (isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res)):
            raise ConfigError(f"{origin}: resolution must be [width, height], got {res!r}")
        size = (res[1], res[0])
    return Calibration(_k_matrix(*intr), dist, model, size, origin)


# --------------------------------------------------------------------------- undistortion


class Undistorter:
    """Undistorts frames of one size with maps computed once (see the module docstring).

    Args:
        calib: the calibration; scaled to ``image_hw`` when it is for another
            resolution with the same aspect ratio (else :class:`ConfigError`).
        image_hw: (H, W) of the frames.
        alpha: free scaling of the new camera matrix: 0 (default) keeps only valid
            pixels, 1 keeps every source pixel, None keeps ``K_new = K``.
        aspect_tolerance: relative aspect-ratio difference accepted when scaling.
        interpolation: a cv2 interpolation flag for the remap (default bilinear).
    """

    def __init__(self, calib: Calibration, image_hw: tuple, *, alpha: Optional[float] = 0.0,
                 aspect_tolerance: float = 0.01, interpolation: Optional[int] = None) -> None:
        import cv2

        if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise ConfigError(f"undistort alpha must be in [0, 1] or None, got {alpha!r}")
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.calib = calib.for_size(self.image_hw, aspect_tolerance)
        self.alpha = alpha
        self.interpolation = cv2.INTER_LINEAR if interpolation is None else int(interpolation)
        H, W = self.image_hw
        K, dist = self.calib.K, self.calib.dist
        cx, cy = K[0, 2], K[1, 2]
        if not (0.0 <= cx <= W and 0.0 <= cy <= H):
            raise ConfigError(
                f"{self.calib.origin}: principal point ({cx:g}, {cy:g}) lies outside the {W}x{H} frames; "
                "are the intrinsics for another resolution?")
        self._maps = None
        if not self.calib.has_distortion:
            K_new = K.copy()
        elif self.calib.model == "fisheye":
            K_new = K.copy() if alpha is None else cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                K, dist, (W, H), np.eye(3), balance=float(alpha))
            self._maps = cv2.fisheye.initUndistortRectifyMap(K, dist, np.eye(3), K_new, (W, H), cv2.CV_16SC2)
        else:
            K_new = K.copy() if alpha is None else cv2.getOptimalNewCameraMatrix(K, dist, (W, H), float(alpha), (W, H))[0]
            self._maps = cv2.initUndistortRectifyMap(K, dist, None, K_new, (W, H), cv2.CV_16SC2)
        K_new = np.asarray(K_new, dtype=np.float64)
        if not np.all(np.isfinite(K_new)) or K_new[0, 0] <= 0 or K_new[1, 1] <= 0:
            raise ConfigError(f"{self.calib.origin}: the distortion is too strong to undistort with alpha={alpha}")
        K_new.setflags(write=False)
        self.K_new = K_new
        """(3, 3) float64 intrinsics of the undistorted frames (same (H, W))."""

    @property
    def is_identity(self) -> bool:
        """True when frames pass through unchanged (no distortion)."""
        return self._maps is None

    def undistort(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` or ``(H, W)`` image of ``image_hw`` -> a new undistorted image of the same shape and dtype."""
        import cv2

        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or tuple(image.shape[:2]) != self.image_hw:
            raise ShapeError(
                f"undistort: expected an image of shape ({self.image_hw[0]}, {self.image_hw[1]}[, C]), got {getattr(image, 'shape', None)}")
        if self._maps is None:
            return image
        return cv2.remap(image, self._maps[0], self._maps[1], self.interpolation, borderMode=cv2.BORDER_CONSTANT)

    def undistort_points(self, uv: np.ndarray) -> np.ndarray:
        """(M, 2) float pixel positions in the distorted frame -> (M, 2) float64 positions in the undistorted one."""
        import cv2

        uv = np.asarray(uv, dtype=np.float64)
        check_shape("uv", uv, (None, 2), "f")
        if self._maps is None or len(uv) == 0:
            return uv.copy()
        pts = uv.reshape(-1, 1, 2)
        K, dist = self.calib.K, self.calib.dist
        if self.calib.model == "fisheye":
            out = cv2.fisheye.undistortPoints(pts, K, dist, R=np.eye(3), P=self.K_new)
        else:
            out = cv2.undistortPointsIter(pts, K, dist, np.eye(3), self.K_new,
                                          (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10))
        return out.reshape(-1, 2).astype(np.float64)

    def output_intrinsics(self, output_hw: tuple) -> np.ndarray:
        """(3, 3) intrinsics of undistorted frames resized to ``output_hw`` = (h, w) (the project's resize convention)."""
        return frame_intrinsics(self.K_new, self.image_hw, output_hw)


def frame_intrinsics(K: np.ndarray, from_hw: tuple, to_hw: tuple) -> np.ndarray:
    """(3, 3) intrinsics of frames of ``from_hw`` = (H, W) resized to ``to_hw`` (``fx, cx`` times ``w / W``)."""
    K = np.asarray(K, dtype=np.float64)
    check_shape("K", K, (3, 3), "f")
    return np.diag([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0], 1.0]) @ K


__all__ = ["Calibration", "Undistorter", "calibration_from_arg", "frame_intrinsics", "load_calibration", "parse_intrinsics"]
