"""Camera images from robot logs: ROS 1 bags, ROS 2 bags (sqlite3 or mcap storage) and MCAP files.

Reading goes through the pure-Python ``rosbags`` library (its ``AnyReader``),
one message at a time: a bag is never loaded into memory. Accepted paths
(:func:`is_bag_path`): a ROS 1 ``.bag`` file, a ROS 2 bag folder (with
``metadata.yaml``), a ``.mcap`` file or a ``.db3`` storage file.

Policies:

- **Topic**: one ``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage``
  topic is read. ``topic=None`` picks the only image topic; with several (or
  none) the error lists the image topics present.
- **Index** = the message's position on that topic, in bag (receive-time) order.
- **Timestamps** are the header stamps (``sec + nanosec * 1e-9``) relative to the
  first message on the topic, computed in integer nanoseconds (no float64
  rounding of absolute epoch times). :attr:`BagTopic.first_stamp_ns` keeps the
  absolute first stamp. When the first message's header stamp is zero (a
  publisher that does not fill it), the bag's receive times are used for the
  whole topic instead (``time_source = "bag"``, logged). A message whose stamp
  is earlier than the previous one is reported as an undecodable record.
- **Pixels**: raw encodings ``rgb8 bgr8 rgba8 bgra8 mono8 mono16 16UC1``
  (plus ``8UC1 8UC3 8UC4`` as mono8/bgr8/bgra8 and 8-bit Bayer patterns)
  become ``(H, W, 3) uint8`` RGB; 16-bit values are scaled by ``255 / 65535``
  like 16-bit image files (:mod:`da3stream.io.sources.images`). Row padding
  (``step``) and big-endian data are handled. Compressed images are decoded by
  ``cv2.imdecode`` (JPEG, PNG and what else OpenCV reads). Any other encoding is
  a one-line :class:`SourceError` naming it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np

from da3stream.errors import Da3StreamError, SourceError
from da3stream.io.sources import images as _images

log = logging.getLogger(__name__)

IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
"""Message types read as frames."""
CAMERA_INFO_MSGTYPE = "sensor_msgs/msg/CameraInfo"
BAG_FILE_SUFFIXES = (".bag", ".mcap", ".db3")
"""File suffixes (lower-case) read as bags: ROS 1, MCAP, ROS 2 sqlite3 storage."""
_ROS2_METADATA_KEY = b"rosbag2_bagfile_information"
"""Top-level key of a ROS 2 bag's metadata.yaml (a folder with another metadata.yaml is not a bag)."""
_METADATA_PEEK_BYTES = 4096

# encoding -> (channels, numpy dtype, conversion to RGB)
_RAW_ENCODINGS: dict[str, tuple[int, str, str]] = {
    "rgb8": (3, "u1", "rgb"), "bgr8": (3, "u1", "bgr"), "rgba8": (4, "u1", "rgba"), "bgra8": (4, "u1", "bgra"),
    "mono8": (1, "u1", "mono"), "mono16": (1, "u2", "mono"), "16uc1": (1, "u2", "mono"),
    "8uc1": (1, "u1", "mono"), "8uc3": (3, "u1", "bgr"), "8uc4": (4, "u1", "bgra"),
    "bayer_rggb8": (1, "u1", "bayer_rggb"), "bayer_bggr8": (1, "u1", "bayer_bggr"),
    "bayer_gbrg8": (1, "u1", "bayer_gbrg"), "bayer_grbg8": (1, "u1", "bayer_grbg"),
}
# Bayer pattern (ROS names the top-left 2x2 block) -> OpenCV code (OpenCV names the block at (1, 1))
_BAYER_CODES = {"bayer_rggb": "COLOR_BayerBG2RGB", "bayer_bggr": "COLOR_BayerRG2RGB",
                "bayer_gbrg": "COLOR_BayerGR2RGB", "bayer_grbg": "COLOR_BayerGB2RGB"}


def is_bag_path(path: str | os.PathLike) -> bool:
    """True for a ``.bag``/``.mcap``/``.db3`` path or a folder whose ``metadata.yaml`` describes a ROS 2 bag."""
    p = Path(path)
    if p.is_dir():
        meta = p / "metadata.yaml"
        try:
            with open(meta, "rb") as f:
                return _ROS2_METADATA_KEY in f.read(_METADATA_PEEK_BYTES)
        except OSError:
            return False
    return p.suffix.lower() in BAG_FILE_SUFFIXES


def bag_format(path: str | os.PathLike) -> str:
    """``"ros1"`` (.bag), ``"ros2"`` (bag folder), ``"mcap"`` (.mcap file) or ``"ros2-db3"`` (.db3 file)."""
    p = Path(path)
    if p.is_dir():
        return "ros2"
    return {".bag": "ros1", ".mcap": "mcap", ".db3": "ros2-db3"}.get(p.suffix.lower(), "unknown")


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag."""

    name: str
    msgtype: str
    """Message type in ROS 2 spelling (``sensor_msgs/msg/Image``), also for ROS 1 bags."""
    count: int
    """Number of messages."""


@dataclass(frozen=True)
class BagTopic:
    """The image topic a source reads, with what was learned from its first messages."""

    path: str
    format: str
    """See :func:`bag_format`."""
    topic: str
    msgtype: str
    count: int
    """Messages on the topic (from the bag's index)."""
    first_stamp_ns: int
    """Absolute stamp of message 0, integer nanoseconds (header or receive time, see ``time_source``)."""
    time_source: str
    """``"header"`` (header stamps) or ``"bag"`` (receive times; the first header stamp was zero)."""
    image_hw: tuple
    """(H, W) of the first decodable image."""
    encoding: str
    """Encoding (raw) or format (compressed) of the first decodable image."""
    first_index: int
    """Index of the first decodable image."""

    @property
    def first_stamp(self) -> float:
        """Absolute first stamp in seconds (float64; use ``first_stamp_ns`` for exact arithmetic)."""
        return self.first_stamp_ns / 1e9

    def describe(self) -> dict:
        """JSON-safe description for the store."""
        return {
            "format": self.format, "topic": self.topic, "msgtype": self.msgtype, "n_messages": self.count,
            "first_stamp": self.first_stamp, "first_stamp_ns": self.first_stamp_ns, "time_source": self.time_source,
            "encoding": self.encoding,
        }


class _Unsupported(SourceError):
    """An encoding or format this module does not decode (fails a source at once)."""


class ImageRecord(NamedTuple):
    """One message position on the topic: ``load()`` decodes it; ``error`` marks an unusable one."""

    index: int
    timestamp: float
    """Seconds since the topic's first stamp."""
    load: Optional[Callable[[], np.ndarray]]
    error: Optional[str]


# --------------------------------------------------------------------------- opening


@contextmanager
def open_bag(path: str | os.PathLike):
    """An open ``rosbags`` ``AnyReader`` for ``path``; every failure is a one-line :class:`SourceError`."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    fmt = bag_format(p)
    if fmt == "unknown":
        raise SourceError(f"{p}: not a ROS bag (expected a .bag, .mcap or .db3 file or a ROS 2 bag folder)")
    default = get_typestore(Stores.ROS1_NOETIC if fmt == "ros1" else Stores.LATEST)
    try:
        reader = AnyReader([p], default_typestore=default)
        reader.open()
    except Da3StreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags, sqlite3 and OS errors all become one line
        raise SourceError(f"{p}: not a readable ROS bag ({_reason(exc)})") from None
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the real error
            log.debug("%s: closing the bag failed (%s)", p, _reason(exc))


def list_topics(path: str | os.PathLike) -> list[TopicSummary]:
    """Every topic of the bag, sorted by name."""
    with open_bag(path) as reader:
        return _topics(reader)


def _topics(reader) -> list[TopicSummary]:
    return [TopicSummary(name, info.msgtype or "(mixed types)", int(info.msgcount)) for name, info in sorted(reader.topics.items())]


def select_image_topic(topics: list[TopicSummary], topic: Optional[str], name: str) -> TopicSummary:
    """The topic to read: ``topic`` itself (checked) or the only image topic.

    Raises:
        SourceError: no image topic, several and none chosen, or ``topic`` missing or not an image topic.
    """
    images = [t for t in topics if t.msgtype in IMAGE_MSGTYPES]
    listing = ", ".join(f"{t.name} ({t.msgtype.rsplit('/', 1)[-1]}, {t.count} msgs)" for t in images)
    if topic is None:
        if len(images) == 1:
            return images[0]
        if not images:
            others = ", ".join(t.name for t in topics[:10]) or "none"
            raise SourceError(f"{name}: no sensor_msgs Image or CompressedImage topic (topics: {others})")
        raise SourceError(f"{name}: {len(images)} image topics; choose one with topic= / --topic: {listing}")
    by_name = {t.name: t for t in topics}
    if topic not in by_name and "/" + topic.lstrip("/") in by_name:
        topic = "/" + topic.lstrip("/")  # "camera/image" names "/camera/image"
    if topic not in by_name:
        raise SourceError(f"{name}: no topic {topic!r}; image topics: {listing or 'none'}")
    chosen = by_name[topic]
    if chosen.msgtype not in IMAGE_MSGTYPES:
        raise SourceError(f"{name}: topic {topic!r} is {chosen.msgtype}, not an image topic; image topics: {listing or 'none'}")
    return chosen


def open_image_topic(path: str | os.PathLike, topic: Optional[str] = None, max_probe: int = 100) -> BagTopic:
    """Choose the image topic and read up to its first decodable image (size, first stamp).

    An unsupported encoding fails at once; other undecodable messages are passed
    over, up to ``max_probe`` of them.

    Raises:
        SourceError: unreadable bag, topic choice errors (see :func:`select_image_topic`),
            an empty topic, an unsupported encoding, or no decodable image among the
            first ``max_probe`` messages (the first error is named).
    """
    name = str(path)
    with open_bag(path) as reader:
        chosen = select_image_topic(_topics(reader), topic, name)
        if chosen.count == 0:
            raise SourceError(f"{name}: topic {chosen.name} has no messages")
        first_ns, time_source, first_error = None, "header", None
        for index, (stamp_ns, bag_ns, msg, error) in enumerate(_messages(reader, chosen.name)):
            if first_ns is None and msg is not None:
                first_ns = stamp_ns
                if stamp_ns == 0:
                    time_source, first_ns = "bag", bag_ns
                    log.warning("%s: %s has a zero header stamp; using the bag's receive times", name, chosen.name)
            if index >= max_probe:
                break
            if msg is None:
                first_error = first_error or error
                continue
            try:
                image = decode_image(msg, chosen.msgtype, f"{name}: {chosen.name} message {index}")
            except _Unsupported:
                raise
            except SourceError as exc:
                first_error = first_error or str(exc)
                continue
            return BagTopic(name, bag_format(path), chosen.name, chosen.msgtype, chosen.count, int(first_ns),
                            time_source, tuple(image.shape[:2]), image_encoding(msg, chosen.msgtype), index)
    detail = f" (first error: {first_error})" if first_error else ""
    raise SourceError(f"{name}: no decodable image among the first messages of {chosen.name}{detail}")


def image_records(bag: BagTopic) -> Iterator[ImageRecord]:
    """Every message position on ``bag.topic`` from index 0, streamed; images decode lazily on ``load()``.

    A read error in the middle of the bag (e.g. a truncated file) ends the stream
    with one error record after the last good message.
    """
    name = f"{bag.path}: {bag.topic}"
    with open_bag(bag.path) as reader:
        last_ns = bag.first_stamp_ns
        index = -1
        for index, (stamp_ns, bag_ns, msg, error) in enumerate(_messages(reader, bag.topic)):
            t_ns = bag_ns if bag.time_source == "bag" else stamp_ns
            if msg is None:
                yield ImageRecord(index, (last_ns - bag.first_stamp_ns) / 1e9, None, error)
                continue
            if t_ns < last_ns:
                reason = f"stamp {(t_ns - bag.first_stamp_ns) / 1e9:.9f} s is earlier than the previous {(last_ns - bag.first_stamp_ns) / 1e9:.9f} s"
                yield ImageRecord(index, (last_ns - bag.first_stamp_ns) / 1e9, None, reason)
                continue
            last_ns = t_ns
            yield ImageRecord(index, (t_ns - bag.first_stamp_ns) / 1e9,
                              _Loader(msg, bag.msgtype, f"{name} message {index}"), None)


class _Loader:
    """Decodes one deserialized message when called."""

    __slots__ = ("msg", "msgtype", "name")

    def __init__(self, msg: Any, msgtype: str, name: str) -> None:
        self.msg, self.msgtype, self.name = msg, msgtype, name

    def __call__(self) -> np.ndarray:
        return decode_image(self.msg, self.msgtype, self.name)


def _messages(reader, topic: str) -> Iterator[tuple[int, int, Any, Optional[str]]]:
    """``(header stamp ns, bag ns, message or None, error)`` per message on ``topic``, in bag order."""
    connections = [c for c in reader.connections if c.topic == topic]
    stream = reader.messages(connections=connections)
    while True:
        try:
            connection, bag_ns, raw = next(stream)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - a damaged bag ends the stream
            reason = f"reading the bag failed ({_reason(exc)}); stopped"
            log.warning("%s: %s", topic, reason)
            yield 0, 0, None, reason
            return
        try:
            msg = reader.deserialize(raw, connection.msgtype)
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        except Exception as exc:  # noqa: BLE001 - one corrupt message is skipped
            yield 0, int(bag_ns), None, f"cannot deserialize message ({_reason(exc)})"
            continue
        yield stamp_ns, int(bag_ns), msg, None


# --------------------------------------------------------------------------- decoding


def image_encoding(msg: Any, msgtype: str) -> str:
    """The raw ``encoding`` or the compressed ``format`` string of a message."""
    return str(msg.format if msgtype.endswith("CompressedImage") else msg.encoding).strip()


def decode_image(msg: Any, msgtype: str, name: str) -> np.ndarray:
    """A deserialized Image or CompressedImage message -> ``(H, W, 3) uint8`` RGB.

    Raises:
        SourceError: unsupported encoding or format, or data that does not match
            the declared size (one line naming ``name`` and the problem).
    """
    if msgtype.endswith("CompressedImage"):
        return decode_compressed(msg.format, msg.data, name)
    return decode_raw(msg.encoding, int(msg.height), int(msg.width), int(msg.step), bool(msg.is_bigendian), msg.data, name)


def decode_raw(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any, name: str) -> np.ndarray:
    """Pixels of a ``sensor_msgs/Image`` -> ``(H, W, 3) uint8`` RGB (see the module docstring)."""
    import cv2

    key = str(encoding).strip().lower()
    spec = _RAW_ENCODINGS.get(key)
    if spec is None:
        supported = " ".join(k if not k[0].isdigit() else k.upper() for k in _RAW_ENCODINGS)
        raise _Unsupported(f"{name}: unsupported image encoding {encoding!r} (supported: {supported})")
    channels, kind, convert = spec
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if height < 1 or width < 1:
        raise SourceError(f"{name}: empty image ({width}x{height})")
    if step < row_bytes:
        raise SourceError(f"{name}: row step {step} is smaller than {width} pixels of {encoding} ({row_bytes} bytes)")
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    needed = (height - 1) * step + row_bytes
    if buf.size < needed:
        raise SourceError(f"{name}: {buf.size} bytes of pixel data, expected {needed} for {width}x{height} {encoding}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if dtype.itemsize > 1:
        pixels = pixels.astype(dtype.newbyteorder("="))
    if convert == "rgb":
        return np.ascontiguousarray(pixels)
    if convert == "bgr":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if convert == "rgba":
        return np.ascontiguousarray(pixels[:, :, :3])
    if convert == "bgra":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if convert == "mono":
        return _images.to_rgb8(pixels[:, :, 0], name)
    return cv2.cvtColor(pixels[:, :, 0], getattr(cv2, _BAYER_CODES[convert]))


def decode_compressed(fmt: str, data: Any, name: str) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` payload (JPEG, PNG, ...) -> ``(H, W, 3) uint8`` RGB."""
    import cv2

    if "compresseddepth" in str(fmt).lower():
        raise _Unsupported(f"{name}: unsupported compressed format {fmt!r} (a depth image, not a camera image)")
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise SourceError(f"{name}: empty compressed image")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{name}: cannot decode compressed image of format {fmt!r} (expected JPEG or PNG)")
    return np.ascontiguousarray(image[:, :, ::-1])


# --------------------------------------------------------------------------- camera info


def calibration_from_bag(path: str | os.PathLike, topic: Optional[str] = None, image_topic: Optional[str] = None):
    """A :class:`~da3stream.io.sources.calibration.Calibration` from the first ``sensor_msgs/CameraInfo`` message.

    ``topic`` names the CameraInfo topic; when None, the only CameraInfo topic is
    used, or, with several, the one in ``image_topic``'s namespace
    (``/cam/image_raw`` -> ``/cam/camera_info``).

    Raises:
        SourceError: no (unambiguous) CameraInfo topic, or no message on it.
        ConfigError: the message holds an invalid calibration (e.g. all-zero K).
    """
    from da3stream.io.sources.calibration import Calibration

    name = str(path)
    with open_bag(path) as reader:
        infos = [t for t in _topics(reader) if t.msgtype == CAMERA_INFO_MSGTYPE]
        listing = ", ".join(t.name for t in infos) or "none"
        if topic is None:
            if len(infos) == 1:
                topic = infos[0].name
            elif infos and image_topic is not None:
                ns = image_topic.rsplit("/", 1)[0]
                match = [t for t in infos if t.name == f"{ns}/camera_info"]
                topic = match[0].name if match else None
            if topic is None:
                raise SourceError(f"{name}: cannot choose a CameraInfo topic (CameraInfo topics: {listing})")
        elif topic not in {t.name for t in infos}:
            raise SourceError(f"{name}: no CameraInfo topic {topic!r} (CameraInfo topics: {listing})")
        for _, _, msg, error in _messages(reader, topic):
            if msg is None:
                continue
            K = np.asarray(getattr(msg, "k", getattr(msg, "K", None)), dtype=np.float64).reshape(3, 3)
            dist = np.asarray(getattr(msg, "d", getattr(msg, "D", None)), dtype=np.float64)
            model_name = str(msg.distortion_model).strip().lower() or "plumb_bob"
            model = "fisheye" if model_name in ("equidistant", "fisheye") else "pinhole"
            hw = (int(msg.height), int(msg.width)) if msg.height and msg.width else None
            return Calibration(K, dist, model, hw, f"{name}:{topic}")
    raise SourceError(f"{name}: no readable message on {topic}")


# --------------------------------------------------------------------------- writing (tests, benchmarks, demos)


def write_image_bag(path: str | os.PathLike, frames, stamps_ns, *, fmt: str = "ros2-mcap", topic: str = "/camera/image",
                    compression: Optional[str] = None) -> Path:
    """Write RGB frames as one image topic with the ``rosbags`` writers; returns the bag path.

    Args:
        path: a ``.bag`` file (``fmt="ros1"``) or a new folder (ROS 2 formats).
        frames: iterable of ``(H, W, 3) uint8`` RGB images (streamed, not held).
        stamps_ns: matching header stamps, integer nanoseconds (also the receive times).
        fmt: ``"ros1"``, ``"ros2-sqlite3"`` or ``"ros2-mcap"``.
        topic: topic name.
        compression: None writes ``sensor_msgs/Image`` rgb8; ``"jpeg"`` or ``"png"``
            writes ``sensor_msgs/CompressedImage``.
    """
    import cv2
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as Writer2
    from rosbags.typesys import Stores, get_typestore

    if fmt not in ("ros1", "ros2-sqlite3", "ros2-mcap"):
        raise SourceError(f"write_image_bag: fmt must be ros1, ros2-sqlite3 or ros2-mcap, got {fmt!r}")
    ros1 = fmt == "ros1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.LATEST)
    T = store.types
    msgtype = IMAGE_MSGTYPES[1] if compression else IMAGE_MSGTYPES[0]
    path = Path(path)
    if ros1:
        writer = Writer1(path)
    else:
        plugin = StoragePlugin.SQLITE3 if fmt == "ros2-sqlite3" else StoragePlugin.MCAP
        writer = Writer2(path, version=Writer2.VERSION_LATEST, storage_plugin=plugin)
    with writer:
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for seq, (rgb, stamp_ns) in enumerate(zip(frames, stamps_ns)):
            stamp_ns = int(stamp_ns)
            stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
            header = (T["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id="camera") if ros1
                      else T["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"))
            rgb = np.ascontiguousarray(rgb)
            if compression:
                ok, buf = cv2.imencode("." + compression, rgb[:, :, ::-1])
                if not ok:
                    raise SourceError(f"write_image_bag: cannot encode frame {seq} as {compression}")
                msg = T[msgtype](header=header, format=compression, data=buf.reshape(-1))
            else:
                h, w = rgb.shape[:2]
                msg = T[msgtype](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                                 data=rgb.reshape(-1))
            data = store.serialize_ros1(msg, msgtype) if ros1 else store.serialize_cdr(msg, msgtype)
            writer.write(conn, stamp_ns, data)
    return path


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
