"""Frame sources: a video file, an image folder, one image, or an iterable of frames.

:func:`~da3stream.io.sources.dispatch.open_source` returns a :class:`FrameSource`, an iterable of :class:`Frame`
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

This module holds the values and the base class that carries these policies;
:mod:`~da3stream.io.sources.kinds` the source of each kind,
:mod:`~da3stream.io.sources.prefetch` the prefetch thread and
:mod:`~da3stream.io.sources.dispatch` :func:`open_source`.
"""

from __future__ import annotations

import logging
import math
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

from da3stream.errors import ShapeError, SourceError, check_shape
from da3stream.io.sources import images as _images
from da3stream.io.sources.calibration import Calibration, Undistorter
from da3stream.io.sources.prefetch import Prefetcher, reraise_in_consumer

log = logging.getLogger(__name__)

__all__ = ["Frame", "FrameRecord", "FrameSource"]

_BIN_EPS = 1e-6
"""Tolerance, in time bins, for timestamps that land on a bin edge up to float rounding."""


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


class FrameRecord(NamedTuple):
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
        self._warned_resize = False

    # -- subclasses -------------------------------------------------------------------------

    def _records(self) -> Iterator[FrameRecord]:
        """Every frame position from index 0 (or pre-roll positions without ``load``)."""
        raise NotImplementedError

    def _extra_description(self) -> dict:
        return {}

    # -- public API -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        if self.prefetch > 0:
            pump = Prefetcher(self._produce, self.prefetch, self.name)
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
                        reraise_in_consumer(exc, self.name)
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

    def _select(self, records: Iterator[FrameRecord], selector: _Selector, skipped: list) -> Iterator[Frame]:
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

    def _deliver(self, rec: FrameRecord, skipped: list) -> Optional[Frame]:
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
            if not self._warned_resize:  # once per source: a folder of mixed sizes would repeat it per frame
                self._warned_resize = True
                log.warning("%s: frame %d is %dx%d, the first frame %dx%d; frames of another size are resized to "
                            "the first frame's (warned once)", self.name, rec.index, w, h, ref_w, ref_h)
        if self._undistorter is not None:
            image = self._undistorter.undistort(_images.resize_to(image, *self.source_size))
        image = _images.resize_to(image, *self.size)
        return Frame(int(rec.index), float(rec.timestamp), image)

