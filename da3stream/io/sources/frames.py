"""Frame sources: a video file, an image folder, one image, or an iterable of frames.

:func:`open_source` returns a :class:`FrameSource`, an iterable of :class:`Frame`
(source index, timestamp, ``(H, W, 3) uint8`` RGB image) and a context manager.

Policies (one place for all of them):

- **Indices** are positions in the full source: the decoded-stream position for a
  video (see :func:`da3stream.io.sources.video.decode_video`), the position in the
  naturally sorted file list for a folder, the position in the iterable (or
  ``Frame.index`` when the iterable yields :class:`Frame` objects, which must
  increase).
- **Timestamps**: video ``pts * time_base`` seconds; folders ``index /
  source_fps`` (default 30 fps; names are not parsed); iterables the given
  timestamp (``(image, t)`` tuples or :class:`Frame`) or ``index / source_fps``.
  Timestamps must not decrease.
- **Subsampling** is a pure function of the full index/timestamp sequence, so
  reading from ``start_index`` gives exactly the frames a read from the start
  gives from that index on: ``stride`` keeps frames whose index is a multiple of
  it; then ``fps`` keeps the first frame in each time bin
  ``[k / fps, (k + 1) / fps)`` (bins anchored at t = 0); then ``max_frames``
  stops after that many selected frames, counted from index 0 (a selected frame
  that cannot be decoded counts too).
- **Bad frames**: a selected frame that cannot be decoded (video packet error,
  unreadable or truncated image) is skipped and recorded in
  :attr:`FrameSource.skipped` as ``(index, reason)``; reading continues.
- **Sizes**: every frame comes out at one size. The reference size is the
  video's first decoded frame, the folder's first readable image, or the
  iterable's first frame. A frame of another size whose aspect ratio matches
  within ``aspect_tolerance`` (relative) is resized to it; otherwise it is
  skipped and recorded. ``max_side`` then scales frames down (area averaging)
  so the longer side is at most ``max_side``. A reference size (before or after
  ``max_side``) with a side under ``min_side`` pixels is a :class:`SourceError`.
- **Single image files** are accepted as a one-frame source (kind ``image``).
- **ROS bags**: a ROS 1 ``.bag`` file, a ROS 2 bag folder (``metadata.yaml``
  with sqlite3 or mcap storage), a ``.mcap`` or ``.db3`` file is read with
  ``rosbags`` (see :mod:`da3stream.io.sources.rosbag`): one ``sensor_msgs`` Image or
  CompressedImage topic (``topic=``; required when the bag has several); the
  index is the message position on that topic; the timestamp is the header stamp
  minus the first message's header stamp (:attr:`FrameSource.time_origin` is
  that first stamp, absolute seconds).
- **Calibration**: with ``calibration=`` every frame is undistorted at its
  source size, in the prefetch thread, before any ``max_side`` resize
  (:class:`da3stream.io.sources.calibration.Undistorter`; intrinsics given for another
  size with the same aspect ratio are scaled). :attr:`FrameSource.intrinsics` is
  then the (3, 3) intrinsics of the frames as delivered, and :meth:`describe`
  records the calibration and ``undistorted: true``.
- **Decoding and reading run in a prefetch thread** that keeps up to
  ``prefetch`` frames ready (``prefetch=0`` reads in the caller's thread). An
  exception in the thread is re-raised in the consumer as a one-line
  :class:`SourceError` naming the source; closing the source (or leaving a
  ``for`` loop early) stops the thread.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from da3stream.errors import ConfigError, Da3StreamError, ShapeError, SourceError, check_shape
from da3stream.io.sources import images as _images
from da3stream.io.sources import rosbag as _rosbag
from da3stream.io.sources import video as _video
from da3stream.io.sources.calibration import Calibration, Undistorter, calibration_from_arg

log = logging.getLogger(__name__)

CAMERA_INFO = "camera_info"
"""``calibration=`` value that takes a bag's intrinsics from its ``sensor_msgs/CameraInfo`` topic."""
_BIN_EPS = 1e-6
"""Tolerance, in time bins, for timestamps that land on a bin edge up to float rounding."""
_POLL_SECONDS = 0.05
"""How often a blocked prefetch thread checks whether the consumer has closed the source."""
_JOIN_SECONDS = 5.0
"""How long :meth:`FrameSource.close` waits for the prefetch thread to finish."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source."""

    index: int
    """Source frame index (position in the full source, before any subsampling)."""
    timestamp: float
    """Seconds (video: PTS x time base; folder: index / source fps)."""
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""

    def __post_init__(self) -> None:
        check_shape(f"Frame {self.index} image", self.image, (None, None, 3), "u")
        if self.image.dtype != np.uint8:
            raise ShapeError(f"Frame {self.index} image: expected dtype uint8, got {self.image.dtype}")


class _Record(NamedTuple):
    """A frame position: ``load()`` returns the raw RGB image; ``error`` marks an undecodable one."""

    index: int
    timestamp: float
    load: Optional[Callable[[], np.ndarray]]
    error: Optional[str]


class _Selector:
    """stride, then first-frame-per-1/fps-bin, then max_frames; fed every position from index 0."""

    def __init__(self, stride: int, fps: Optional[float], max_frames: Optional[int]) -> None:
        self.stride = stride
        self.fps = fps
        self.max_frames = max_frames
        self.kept = 0
        self.last_bin: Optional[int] = None

    @property
    def exhausted(self) -> bool:
        return self.max_frames is not None and self.kept >= self.max_frames

    def offer(self, index: int, timestamp: float) -> bool:
        if self.exhausted or index % self.stride:
            return False
        if self.fps is not None:
            b = math.floor(timestamp * self.fps + _BIN_EPS)
            if self.last_bin is not None and b <= self.last_bin:
                return False
            self.last_bin = b
        self.kept += 1
        return True


class FrameSource:
    """Iterable of :class:`Frame` with bounded read-ahead; use as a context manager.

    Iterating again starts a new pass from ``start_index`` (except for one-shot
    iterators). ``skipped`` lists ``(index, reason)`` of the selected frames of
    the current pass that could not be delivered; with prefetching it may run
    ahead of the consumer by up to ``prefetch`` frames.
    """

    kind = "abstract"

    def __init__(
        self,
        name: str,
        reference_size: tuple[int, int],
        *,
        reference_name: Optional[str] = None,
        fps: Optional[float],
        stride: int,
        max_frames: Optional[int],
        prefetch: int,
        max_side: Optional[int],
        start_index: int,
        min_side: int,
        aspect_tolerance: float,
        calibration: Optional[Calibration] = None,
        undistort_alpha: Optional[float] = 0.0,
    ) -> None:
        self.name = name
        self.fps = fps
        self.stride = stride
        self.max_frames = max_frames
        self.prefetch = prefetch
        self.max_side = max_side
        self.start_index = start_index
        self.aspect_tolerance = aspect_tolerance
        self.skipped: list[tuple[int, str]] = []
        self.source_size = (int(reference_size[0]), int(reference_size[1]))
        """(width, height) of the reference frame as the source stores it."""
        self.size = _images.fit_max_side(*self.source_size, max_side)
        """(width, height) of every frame this source yields."""
        if min(self.source_size) < min_side or min(self.size) < min_side:
            after = f" ({self.size[0]}x{self.size[1]} after max_side={max_side})" if self.size != self.source_size else ""
            raise SourceError(
                f"{reference_name or name}: frame size {self.source_size[0]}x{self.source_size[1]}{after} is below the {min_side}-pixel minimum side"
            )
        self.calibration = calibration
        self.undistort_alpha = undistort_alpha
        self._undistorter: Optional[Undistorter] = None
        if calibration is not None:
            w, h = self.source_size
            self._undistorter = Undistorter(calibration, (h, w), alpha=undistort_alpha, aspect_tolerance=aspect_tolerance)
        self._closers: list[Callable[[], None]] = []

    # -- subclasses -------------------------------------------------------------------------

    def _records(self) -> Iterator[_Record]:
        """Every frame position from index 0 (or pre-roll positions without ``load``)."""
        raise NotImplementedError

    def _extra_description(self) -> dict:
        return {}

    # -- public API -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        if self.prefetch > 0:
            pump = _Prefetcher(self._produce, self.prefetch, self.name)
            self._closers.append(pump.close)
            try:
                yield from pump
            finally:
                pump.close()
                self._closers.remove(pump.close)
        else:
            gen = self._produce()
            self._closers.append(gen.close)
            try:
                while True:
                    try:
                        frame = next(gen)
                    except StopIteration:
                        return
                    except Exception as exc:  # noqa: BLE001 - re-raised as one line
                        _reraise(exc, self.name)
                    yield frame
            finally:
                gen.close()
                self._closers.remove(gen.close)

    @property
    def intrinsics(self) -> Optional[np.ndarray]:
        """(3, 3) float64 intrinsics of the delivered frames (undistorted, at ``size``), or None without calibration."""
        if self._undistorter is None:
            return None
        return self._undistorter.output_intrinsics((self.size[1], self.size[0]))

    @property
    def time_origin(self) -> float:
        """Absolute time, in seconds, of timestamp 0 (a bag's first header stamp; 0.0 for other sources)."""
        return 0.0

    def close(self) -> None:
        """Stop any pass in progress (its prefetch thread included)."""
        for closer in list(self._closers):
            closer()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def describe(self) -> dict:
        """JSON-safe description: kind, path, n_frames (if known), fps, sizes, options."""
        out = {
            "kind": self.kind,
            "path": self.name,
            "n_frames": None,
            "fps": None,
            "width": self.source_size[0],
            "height": self.source_size[1],
            "output_width": self.size[0],
            "output_height": self.size[1],
            "stride": self.stride,
            "target_fps": self.fps,
            "max_frames": self.max_frames,
            "max_side": self.max_side,
            "start_index": self.start_index,
            "undistorted": self._undistorter is not None,
        }
        if self._undistorter is not None:
            out["calibration"] = self.calibration.describe()
            out["undistort_alpha"] = self.undistort_alpha
            out["intrinsics"] = self.intrinsics.tolist()
        out.update(self._extra_description())
        return out

    # -- the pass ---------------------------------------------------------------------------

    def _produce(self) -> Iterator[Frame]:
        selector = _Selector(self.stride, self.fps, self.max_frames)
        skipped = self.skipped
        with closing(self._records()) as records:
            yield from self._select(records, selector, skipped)

    def _select(self, records: Iterator[_Record], selector: _Selector, skipped: list) -> Iterator[Frame]:
        for rec in records:
            keep = selector.offer(rec.index, rec.timestamp)
            if keep and rec.index >= self.start_index:
                if rec.error is not None or rec.load is None:
                    skipped.append((rec.index, rec.error or "no frame at this position"))
                    log.warning("%s: skipped frame %d: %s", self.name, rec.index, rec.error)
                else:
                    frame = self._deliver(rec, skipped)
                    if frame is not None:
                        yield frame
            if selector.exhausted:
                return

    def _deliver(self, rec: _Record, skipped: list) -> Optional[Frame]:
        try:
            image = rec.load()
        except SourceError as exc:
            skipped.append((rec.index, str(exc)))
            log.warning("skipped frame %d: %s", rec.index, exc)
            return None
        h, w = image.shape[:2]
        if (w, h) != self.source_size:
            ref_w, ref_h = self.source_size
            if abs((w / h) / (ref_w / ref_h) - 1.0) > self.aspect_tolerance:
                reason = f"size {w}x{h} differs in aspect ratio from the first frame's {ref_w}x{ref_h}"
                skipped.append((rec.index, reason))
                log.warning("%s: skipped frame %d: %s", self.name, rec.index, reason)
                return None
        if self._undistorter is not None:
            image = self._undistorter.undistort(_images.resize_to(image, *self.source_size))
        image = _images.resize_to(image, *self.size)
        return Frame(int(rec.index), float(rec.timestamp), image)


class VideoSource(FrameSource):
    """Frames decoded in-stream from a video file by PyAV."""

    kind = "video"

    def __init__(self, path: str, *, thread_type: str = "AUTO", **options: Any) -> None:
        self.info = _video.probe_video(path)
        self.thread_type = thread_type
        if self.info.rotation:
            log.warning("%s: the video asks for a %d-degree display rotation; frames are delivered unrotated", path, self.info.rotation)
        super().__init__(str(path), (self.info.width, self.info.height), **options)

    def _records(self) -> Iterator[_Record]:
        for rec in _video.decode_video(self.name, start_index=self.start_index, thread_type=self.thread_type):
            load = None if rec.frame is None else partial(_video_frame_rgb, rec.frame)
            yield _Record(rec.index, rec.timestamp, load, rec.error)

    def _extra_description(self) -> dict:
        i = self.info
        return {"n_frames": i.n_frames, "fps": i.fps, "codec": i.codec, "duration": i.duration, "rotation": i.rotation}


class ImageFolderSource(FrameSource):
    """Image files of a folder in natural order (or one image file)."""

    kind = "images"

    def __init__(self, path: str | os.PathLike, *, source_fps: float, single_file: bool = False, **options: Any) -> None:
        path = Path(path)
        self.files = [path] if single_file else _images.list_images(path)
        self.source_fps = source_fps
        if single_file:
            self.kind = "image"
        reference = None
        errors = []
        for f in self.files:
            try:
                reference = _images.read_image(f)
                break
            except SourceError as exc:
                errors.append(str(exc))
        if reference is None:
            detail = errors[0] if len(errors) == 1 else f"none of {len(errors)} images is readable, e.g. {errors[0]}"
            raise SourceError(detail if single_file else f"{path}: {detail}")
        name = str(self.files[0]) if single_file else str(path)
        super().__init__(name, (reference.shape[1], reference.shape[0]), reference_name=str(f), **options)

    def _records(self) -> Iterator[_Record]:
        for i, f in enumerate(self.files):
            yield _Record(i, i / self.source_fps, partial(_images.read_image, f), None)

    def _extra_description(self) -> dict:
        return {"n_frames": len(self.files), "fps": self.source_fps}


class BagSource(FrameSource):
    """Images of one topic of a ROS 1 / ROS 2 bag or an MCAP file (see :mod:`da3stream.io.sources.rosbag`)."""

    kind = "rosbag"

    def __init__(self, path: str | os.PathLike, *, topic: Optional[str] = None, **options: Any) -> None:
        self.bag = _rosbag.open_image_topic(path, topic)
        if isinstance(options.get("calibration"), str) and options["calibration"] == CAMERA_INFO:
            options["calibration"] = _rosbag.calibration_from_bag(path, image_topic=self.bag.topic)
        h, w = self.bag.image_hw
        super().__init__(str(path), (w, h), reference_name=f"{path}: {self.bag.topic} message {self.bag.first_index}", **options)

    def _records(self) -> Iterator[_Record]:
        for rec in _rosbag.image_records(self.bag):
            yield _Record(rec.index, rec.timestamp, rec.load, rec.error)

    @property
    def time_origin(self) -> float:
        return self.bag.first_stamp

    def _extra_description(self) -> dict:
        return {"n_frames": self.bag.count, **self.bag.describe()}


class IterableSource(FrameSource):
    """Frames from an iterable of arrays, ``(image, timestamp)`` tuples or :class:`Frame` objects."""

    kind = "iterator"

    def __init__(self, frames: Iterable, *, source_fps: float, **options: Any) -> None:
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise SourceError(f"frame array: expected shape (N, H, W, 3), got {frames.shape}")
        self._one_shot = iter(frames) is frames
        self._frames = frames
        self._used = False
        self.source_fps = source_fps
        self._n = len(frames) if hasattr(frames, "__len__") else None
        it = iter(frames)
        try:
            first = next(it)
        except StopIteration:
            raise SourceError("frame iterable: no frames") from None
        if self._one_shot:
            self._frames = chain([first], it)
        index, _, image = _unpack(first, 0, source_fps)
        image = _images.to_rgb8(image, f"frame {index}")
        super().__init__("frame iterable", (image.shape[1], image.shape[0]), reference_name=f"frame iterable: frame {index}", **options)

    def _records(self) -> Iterator[_Record]:
        if self._one_shot:
            if self._used:
                raise SourceError("frame iterable: a one-shot iterator can be read only once")
            self._used = True
        last_index, last_t = -1, -math.inf
        for pos, item in enumerate(self._frames):
            index, t, image = _unpack(item, pos, self.source_fps)
            if index <= last_index:
                raise SourceError(f"frame iterable: frame index {index} after {last_index}; indices must increase")
            if not math.isfinite(t) or t < last_t:
                raise SourceError(f"frame iterable: frame {index} has timestamp {t} after {last_t}; timestamps must not decrease")
            last_index, last_t = index, t
            yield _Record(index, t, partial(_images.to_rgb8, image, f"frame {index}"), None)

    def _extra_description(self) -> dict:
        return {"n_frames": self._n, "fps": self.source_fps}


def open_source(
    source: Any,
    *,
    fps: Optional[float] = None,
    stride: int = 1,
    max_frames: Optional[int] = None,
    prefetch: int = 64,
    max_side: Optional[int] = None,
    start_index: int = 0,
    source_fps: float = 30.0,
    min_side: int = 28,
    aspect_tolerance: float = 0.01,
    topic: Optional[str] = None,
    calibration: Any = None,
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
    options = dict(
        fps=fps, stride=stride, max_frames=max_frames, prefetch=prefetch, max_side=max_side,
        start_index=start_index, min_side=min_side, aspect_tolerance=aspect_tolerance,
        undistort_alpha=undistort_alpha,
    )
    is_bag = isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source) and _rosbag.is_bag_path(source)
    if topic is not None and not is_bag:
        raise ConfigError(f"source option topic={topic!r} applies only to ROS bags and MCAP files")
    if isinstance(calibration, str) and calibration == CAMERA_INFO:
        if not is_bag:
            raise ConfigError(f"calibration={CAMERA_INFO!r} applies only to ROS bags and MCAP files")
        options["calibration"] = CAMERA_INFO
    else:
        options["calibration"] = calibration_from_arg(calibration)
    if is_bag:
        return BagSource(source, topic=topic, **options)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
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
    if isinstance(source, (bytes, bytearray)):
        raise SourceError("source: bytes are not a source; pass a path or an iterable of frames")
    try:
        iter(source)
    except TypeError:
        raise SourceError(f"source: expected a path or an iterable of frames, got {type(source).__name__}") from None
    return IterableSource(source, source_fps=source_fps, **options)


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


# --------------------------------------------------------------------------- helpers


def _video_frame_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _unpack(item: Any, pos: int, source_fps: float) -> tuple[int, float, Any]:
    if isinstance(item, Frame):
        return int(item.index), float(item.timestamp), item.image
    if isinstance(item, tuple):
        if len(item) != 2:
            raise SourceError(f"frame iterable: item {pos} is a tuple of {len(item)}; expected (image, timestamp)")
        image, t = item
        try:
            return pos, float(t), image
        except (TypeError, ValueError):
            raise SourceError(f"frame iterable: item {pos} has a non-numeric timestamp {t!r}") from None
    return pos, pos / source_fps, item


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


def _reraise(exc: BaseException, name: str) -> None:
    """Raise in the consumer: da3stream errors as they are, others as a one-line SourceError."""
    if isinstance(exc, (Da3StreamError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    text = " ".join(str(exc).split()) or "no details"
    raise SourceError(f"{name}: reading failed ({type(exc).__name__}: {text})") from exc


class _Prefetcher:
    """Runs a generator in a daemon thread, handing items over through a bounded queue."""

    def __init__(self, factory: Callable[[], Iterator], depth: int, name: str) -> None:
        self._factory = factory
        self._name = name
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"da3stream-prefetch {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        gen = self._factory()
        try:
            for item in gen:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(("error", exc))
        finally:
            gen.close()

    def _put(self, message) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            try:
                kind, payload = self._queue.get(timeout=_POLL_SECONDS * 10)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                if self._queue.empty():
                    if self._stop.is_set():
                        return
                    raise SourceError(f"{self._name}: the prefetch thread ended without a result")
                continue
            if kind == "item":
                yield payload
            elif kind == "end":
                return
            else:
                _reraise(payload, self._name)

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("%s: the prefetch thread did not stop within %.0f s", self._name, _JOIN_SECONDS)
