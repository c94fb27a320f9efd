"""``open_source``: which frame source a path, a folder, a bag or an iterable becomes, with checked options.

:func:`source_options` turns a ``SourceConfig`` into its keyword arguments.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

from da3stream.errors import ConfigError, SourceError
from da3stream.io.sources import images as _images
from da3stream.io.sources import rosbag as _rosbag
from da3stream.io.sources import video as _video
from da3stream.io.sources.calibration import calibration_from_arg
from da3stream.io.sources.frames import FrameSource
from da3stream.io.sources.kinds import CAMERA_INFO, BagSource, ImageFolderSource, IterableSource, VideoSource

log = logging.getLogger(__name__)

__all__ = ["declared_frame_count", "open_source", "source_options"]


def open_source(
    source: Any, *, fps: Optional[float] = None, stride: int = 1, max_frames: Optional[int] = None,
    prefetch: int = 64, max_side: Optional[int] = None, start_index: int = 0, source_fps: float = 30.0,
    min_side: int = 28, aspect_tolerance: float = 0.01, topic: Optional[str] = None, calibration: Any = None,
    undistort_alpha: Optional[float] = 0.0,
) -> FrameSource:
    """Open a video path, an image folder, an image file, a ROS bag, or an iterable of frames.

    Args:
        source: a video (``.mp4 .mkv .mov .webm .avi .m4v``, any case; other
            suffixes that are not images are tried as video too; ``scheme://``
            URLs go to PyAV), a folder of ``jpg/jpeg/png/bmp/tif/tiff`` images, one
            image file, a ROS 1 ``.bag``, a ROS 2 bag folder (``metadata.yaml``), a
            ``.mcap`` or ``.db3`` file, an iterable of ``(H, W, 3) uint8`` RGB arrays,
            ``(image, timestamp)`` tuples or :class:`Frame` objects, an
            ``(N, H, W, 3)`` array, or a :class:`FrameSource` (returned as is).
        fps: target rate: keep the first frame in each ``1 / fps`` s time bin; None keeps all.
        stride: keep frames whose source index is a multiple of ``stride`` (before ``fps``).
        max_frames: stop after this many selected frames, counted from index 0.
        prefetch: frames decoded ahead in a background thread; 0 reads in the caller's thread.
        max_side: scale frames down so the longer side is at most this many pixels.
        start_index: yield only frames with index >= this; videos seek to it and
            give exactly the frames a read from the start gives.
        source_fps: assumed frame rate of folders and of iterables without timestamps.
        min_side: smallest accepted frame side, in pixels.
        aspect_tolerance: relative aspect-ratio difference within which a
            differently sized frame is resized to the reference size (else skipped).
        topic: the image topic of a bag (needed when it has several); only for bags.
        calibration: known intrinsics: a :class:`~da3stream.io.sources.calibration.Calibration`,
            a calibration YAML path, ``"fx,fy,cx,cy[,k1,k2,p1,p2,...]"`` text, or
            ``"camera_info"`` (bags: the CameraInfo topic beside the image topic);
            frames are undistorted on read and :attr:`FrameSource.intrinsics` is set.
        undistort_alpha: free scaling of the undistorted camera (0: only valid
            pixels, 1: every source pixel, None: keep K); see :class:`~da3stream.io.sources.calibration.Undistorter`.

    Raises:
        SourceError: the source is missing, empty, unreadable, not a video or an
            image, has no decodable frame, or its frames are too small.
        ConfigError: an option is out of range, ``topic`` is given for a source
            that is not a bag, or the calibration is invalid or does not fit the frames.
    """
    if isinstance(source, FrameSource):
        return source
    _check_options(fps, stride, max_frames, prefetch, max_side, start_index, source_fps, min_side, aspect_tolerance)
    options = dict(fps=fps, stride=stride, max_frames=max_frames, prefetch=prefetch, max_side=max_side,
                   start_index=start_index, min_side=min_side, aspect_tolerance=aspect_tolerance,
                   undistort_alpha=undistort_alpha)
    is_bag = isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source) and _rosbag.is_bag_path(source)
    if topic is not None and not is_bag:
        raise ConfigError(f"source option topic={topic!r} applies only to ROS bags and MCAP files")
    options["calibration"] = _calibration_option(calibration, is_bag)
    if is_bag:
        return BagSource(source, topic=topic, **options)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.fspath(source), source_fps, options)
    if isinstance(source, (bytes, bytearray)):
        raise SourceError("source: bytes are not a source; pass a path or an iterable of frames")
    try:
        iter(source)
    except TypeError:
        raise SourceError(f"source: expected a path or an iterable of frames, got {type(source).__name__}") from None
    return IterableSource(source, source_fps=source_fps, **options)


def _calibration_option(calibration: Any, is_bag: bool) -> Any:
    """The ``calibration`` a source gets: :data:`CAMERA_INFO` (bags only) or a parsed :class:`Calibration` / None."""
    if isinstance(calibration, str) and calibration == CAMERA_INFO:
        if not is_bag:
            raise ConfigError(f"calibration={CAMERA_INFO!r} applies only to ROS bags and MCAP files")
        return CAMERA_INFO
    return calibration_from_arg(calibration)


def _open_path(text: str, source_fps: float, options: dict) -> FrameSource:
    """The source of a path that is not a bag: a URL or video file, an image folder, or one image."""
    if "://" in text:
        return VideoSource(text, **options)
    path = Path(text)
    if path.is_dir():
        storage = [p.name for p in path.iterdir() if p.suffix.lower() in (".db3", ".mcap")][:3]
        if storage and not any(_images.is_image_path(p) for p in path.iterdir()):
            raise SourceError(f"{path}: looks like a ROS 2 bag without metadata.yaml; pass its storage file ({', '.join(storage)})")
        return ImageFolderSource(path, source_fps=source_fps, **options)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if _images.is_image_path(path):
        return ImageFolderSource(path, source_fps=source_fps, single_file=True, **options)
    if not _video.is_video_path(path):
        log.info("%s: unknown suffix %r; trying it as a video", path, path.suffix)
    return VideoSource(str(path), **options)


def source_options(cfg: Any) -> dict:
    """Keyword arguments of :func:`open_source` from a ``SourceConfig``.

    ``topic``, ``intrinsics`` (-> ``calibration``) and ``undistort_alpha`` are
    passed on when the config has those fields.
    """
    out = dict(fps=cfg.fps, stride=cfg.stride, max_frames=cfg.max_frames, prefetch=cfg.prefetch, max_side=cfg.max_side)
    for field, key in (("topic", "topic"), ("intrinsics", "calibration"), ("undistort_alpha", "undistort_alpha")):
        if hasattr(cfg, field):
            out[key] = getattr(cfg, field)
    return out


def _check_options(fps, stride, max_frames, prefetch, max_side, start_index, source_fps, min_side, aspect_tolerance) -> None:
    def bad(name, value, what):
        raise ConfigError(f"source option {name} must be {what}, got {value!r}")

    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        bad("fps", fps, "a positive number or None")
    if not isinstance(stride, int) or stride < 1:
        bad("stride", stride, "an integer >= 1")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        bad("max_frames", max_frames, "an integer >= 1 or None")
    if not isinstance(prefetch, int) or prefetch < 0:
        bad("prefetch", prefetch, "an integer >= 0")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        bad("max_side", max_side, "an integer >= 1 or None")
    if not isinstance(start_index, int) or start_index < 0:
        bad("start_index", start_index, "an integer >= 0")
    if not (isinstance(source_fps, (int, float)) and math.isfinite(source_fps) and source_fps > 0):
        bad("source_fps", source_fps, "a positive number")
    if not isinstance(min_side, int) or min_side < 1:
        bad("min_side", min_side, "an integer >= 1")
    if not (isinstance(aspect_tolerance, (int, float)) and 0 <= aspect_tolerance < 1):
        bad("aspect_tolerance", aspect_tolerance, "a number in [0, 1)")



def declared_frame_count(desc: dict) -> Optional[int]:
    """Frames a source declares in :meth:`describe` (``n_frames``, else duration x fps), or None when unknown."""
    n, rate = desc.get("n_frames"), desc.get("fps")
    if not n and desc.get("duration") and rate:
        n = int(round(float(desc["duration"]) * float(rate)))
    return int(n) if n else None
