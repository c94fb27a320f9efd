"""The frame source of each kind: PyAV video, image folder (or one image), ROS bag / MCAP, iterable of frames.

Each subclass of :class:`~da3stream.io.sources.frames.FrameSource` only lists
its frame positions (:meth:`_records`) and describes itself; selection, sizes,
undistortion and prefetching are the base class's (see :mod:`da3stream.io.sources.frames`).
"""

from __future__ import annotations

import logging
import math
import os
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from da3stream.errors import SourceError
from da3stream.io.sources import images as _images
from da3stream.io.sources import rosbag as _rosbag
from da3stream.io.sources import video as _video
from da3stream.io.sources.frames import Frame, FrameRecord, FrameSource

log = logging.getLogger(__name__)

__all__ = ["CAMERA_INFO", "BagSource", "ImageFolderSource", "IterableSource", "VideoSource"]

CAMERA_INFO = "camera_info"
"""``calibration=`` value that takes a bag's intrinsics from its ``sensor_msgs/CameraInfo`` topic."""


FRAME_COUNT_SLACK = 1
"""Frames by which a container's declared count may exceed the decodable frames without a truncation warning
(the real robot video of the benchmarks declares 175 and decodes 174)."""


class VideoSource(FrameSource):
    """Frames decoded in-stream from a video file by PyAV."""

    kind = "video"

    def __init__(self, path: str, *, thread_type: str = "AUTO", **options: Any) -> None:
        self.info = _video.probe_video(path)
        self.truncated: Optional[dict] = None
        """``{"declared": N, "decoded": M}`` after a pass that decoded fewer frames than the container declares."""
        self.thread_type = thread_type
        if self.info.rotation:
            log.warning("%s: the video asks for a %d-degree display rotation; frames are delivered unrotated", path, self.info.rotation)
        super().__init__(str(path), (self.info.width, self.info.height), **options)

    def _records(self) -> Iterator[FrameRecord]:
        self.truncated = None
        n_decoded = 0  # positions without an error (pre-roll positions of a resume included)
        for rec in _video.decode_video(self.name, start_index=self.start_index, thread_type=self.thread_type):
            load = None if rec.frame is None else partial(_video_frame_rgb, rec.frame)
            n_decoded += rec.error is None
            yield FrameRecord(rec.index, rec.timestamp, load, rec.error)
        declared = self.info.n_frames
        # only at the natural end (a stop at max_frames never gets here), and beyond the one frame by which
        # intact files' container counts can exceed what decodes (edit lists, B-frame pre-roll)
        if declared and n_decoded < declared - FRAME_COUNT_SLACK:
            self.truncated = {"declared": int(declared), "decoded": int(n_decoded)}
            log.warning("%s: the container declares %d frames but only %d could be decoded (truncated or damaged "
                        "stream)", self.name, declared, n_decoded)

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

    def _records(self) -> Iterator[FrameRecord]:
        for i, f in enumerate(self.files):
            yield FrameRecord(i, i / self.source_fps, partial(_images.read_image, f), None)

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

    def _records(self) -> Iterator[FrameRecord]:
        for rec in _rosbag.image_records(self.bag):
            yield FrameRecord(rec.index, rec.timestamp, rec.load, rec.error)

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

    def _records(self) -> Iterator[FrameRecord]:
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
            yield FrameRecord(index, t, partial(_images.to_rgb8, image, f"frame {index}"), None)

    def _extra_description(self) -> dict:
        return {"n_frames": self._n, "fps": self.source_fps}



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

