"""Video files through PyAV: decoding frames in-stream (writing test/demo videos: :mod:`.video_write`).

Nothing here extracts frames to disk. :func:`probe_video` reads the stream header; :func:`decode_video`
yields ``(index, timestamp, image)`` for every decodable frame, optionally
starting at a source index (seek to the keyframe before it, then decode forward).

Frame indices are positions in the decoded stream (0 = first decoded frame),
timestamps are ``(pts - first_pts) * time_base`` seconds, so the first frame of a
file is at 0.0 s even when the container starts at a negative PTS (B-frame edit
lists). Threading and subsampling live in :mod:`da3stream.io.sources.frames`.
"""

from __future__ import annotations

import heapq
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Generator, Iterator, NamedTuple, Optional

from da3stream.errors import SourceError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
"""File suffixes (compared lower-case) that :func:`is_video_path` treats as video."""


def is_video_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has a video file suffix (any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def av_reason(exc: BaseException) -> str:
    """One-line description of a PyAV/OS error without its file name repeated."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__



# --------------------------------------------------------------------------- reading

_REORDER_MARGIN = 64
"""Packets scanned past a seek target: more than any codec's frame reordering depth (H.264/HEVC: 16)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container header and the first decoded frame say about a video stream."""

    path: str
    codec: str
    width: int
    """Width of the first decoded frame, in pixels."""
    height: int
    """Height of the first decoded frame, in pixels."""
    fps: Optional[float]
    """Average frame rate from the header, or None when the container has none."""
    n_frames: Optional[int]
    """Frame count from the header (may include frames an edit list hides), or None."""
    duration: Optional[float]
    """Stream duration in seconds from the header, or None."""
    rotation: int
    """Display rotation in degrees stored with the video (not applied to frames)."""
    seekable: bool
    """Packets carry timestamps, so :func:`decode_video` can seek to ``start_index``."""


class VideoRecord(NamedTuple):
    """One source frame position in presentation order.

    ``frame`` is the decoded ``av.VideoFrame``; it is None for a frame that could
    not be decoded (``error`` says why) and for the positions before
    ``start_index`` that a seek passed over (``error`` is None).
    """

    index: int
    timestamp: float
    frame: Any
    error: Optional[str]


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video, read its header and decode its first frame.

    Raises:
        SourceError: the file is missing, is not a video (or its header is
            truncated), has no video stream, or has no decodable frame.
    """
    import av

    name = str(path)
    with _open(name) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        first = None
        seekable = True
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is None:
                    seekable = False
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue
                if frames:
                    first = frames[0]
                    break
        except av.FFmpegError as exc:
            raise SourceError(f"{name}: cannot read video packets ({av_reason(exc)})") from None
        if first is None:
            try:
                first = next(iter(stream.codec_context.decode(None)), None)
            except av.FFmpegError:
                first = None
        if first is None:
            raise SourceError(f"{name}: no decodable video frames")
        if first.pts is None:
            seekable = False
        rotation = int(round(getattr(first, "rotation", 0) or 0))
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        return VideoInfo(
            path=name,
            codec=stream.codec_context.name,
            width=int(first.width),
            height=int(first.height),
            fps=float(rate) if rate else None,
            n_frames=int(stream.frames) if stream.frames else None,
            duration=duration,
            rotation=rotation,
            seekable=seekable and "://" not in name,
        )


def decode_video(
    path: str | os.PathLike,
    *,
    start_index: int = 0,
    thread_type: str = "AUTO",
    skip_corrupt: bool = True,
    max_demux_errors: int = 100,
) -> Iterator[VideoRecord]:
    """Yield a :class:`VideoRecord` for every frame position of the first video stream.

    Frame ``index`` is the rank of the frame's PTS among the stream's packets
    (those an edit list marks as discarded excluded): the position in the
    decoded stream when every frame decodes. A packet that fails to decode
    (per-packet ``av.FFmpegError``, or no frame ever comes out for its PTS)
    yields a record with ``frame=None`` and the reason in ``error``, and
    decoding continues; so does a demuxer error, up to ``max_demux_errors``
    in a row. With ``skip_corrupt``, frames the decoder flags as corrupt (it
    concealed damaged data) are reported the same way. Packets the demuxer
    drops entirely leave no position: later indices close up and only the
    timestamps show the gap. ``timestamp`` is ``pts * time_base`` in seconds.

    With ``start_index > 0`` and a seekable file, the packets up to the target
    are scanned (demuxed, not decoded) to find its PTS and the keyframe before
    it; the decoder seeks there and decodes forward, so frames from
    ``start_index`` on are identical (index, timestamp, pixels) to a read from
    the start. Positions before the target are yielded first as records with
    neither frame nor error (callers use their timestamps to keep subsampling
    consistent). If the seek lands after the target, decoding restarts from the
    beginning. Frames are decoded with ``thread_type`` ("AUTO": frame and slice
    threads).

    Raises:
        SourceError: the file cannot be opened, or decoding from the start yields no frame.
    """
    name = str(path)
    if start_index > 0 and "://" not in name:
        if (yield from _seek_records(name, start_index, thread_type, skip_corrupt, max_demux_errors)):
            return
    yield from _records_from_start(name, thread_type, skip_corrupt, max_demux_errors)


def _seek_records(name: str, start_index: int, thread_type: str, skip_corrupt: bool,
                  max_demux_errors: int) -> Generator[VideoRecord, None, bool]:
    """The records of a read that seeks to ``start_index`` (see :func:`decode_video`).

    Returns True when it delivered the whole read; False (having yielded
    nothing) when seeking is not possible or overshot, and the caller must
    decode from the start.
    """
    with _open(name) as container:
        plan = _plan_seek(container, start_index)
        if plan is not None and plan.target_pts is None:
            yield from plan.preroll(container.streams.video[0].time_base)
            return True
        if plan is not None:
            records = _decode_after_seek(container, plan, thread_type, skip_corrupt, max_demux_errors, name)
            first = next(records, None)
            if first is not None:
                yield from plan.preroll(container.streams.video[0].time_base)
                yield first
                yield from records
                return True
            log.info("%s: seek to frame %d overshot; decoding from the start", name, start_index)
    return False


def _records_from_start(name: str, thread_type: str, skip_corrupt: bool, max_demux_errors: int) -> Iterator[VideoRecord]:
    """Every record of the stream, decoded from its first packet; SourceError when no frame decodes."""
    with _open(name) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        rate = stream.average_rate or stream.guessed_rate
        indexer = _Indexer(stream.time_base, floor_pts=None, counter=0, rate=rate, skip_corrupt=skip_corrupt)
        n_decoded = 0
        for record in _decode_stream(container, stream, indexer, max_demux_errors, name):
            n_decoded += record.frame is not None
            yield record
        if n_decoded == 0:
            raise SourceError(f"{name}: no decodable video frames")


class _SeekPlan(NamedTuple):
    start_index: int
    target_pts: int
    seek_pts: int
    sorted_pts: list

    def preroll(self, time_base) -> Iterator[VideoRecord]:
        for i, pts in enumerate(self.sorted_pts[: self.start_index]):
            yield VideoRecord(i, _seconds(pts, time_base), None, None)


def _plan_seek(container, start_index: int) -> Optional[_SeekPlan]:
    """Scan packets (no decoding) up to past ``start_index``; None when seeking is not possible."""
    import av

    stream = container.streams.video[0]
    pts_list: list[int] = []
    keyframes: list[tuple[int, int]] = []  # (pts, min(pts, dts)) in demux order
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                return None
            if packet.is_keyframe:
                dts = packet.dts if packet.dts is not None else packet.pts
                keyframes.append((packet.pts, min(packet.pts, dts)))
            if not packet.is_discard:
                pts_list.append(packet.pts)
            if len(pts_list) > start_index + _REORDER_MARGIN:
                break
    except av.FFmpegError:
        return None
    pts_list.sort()
    if start_index >= len(pts_list):
        # Past the end: every position is before the target; nothing to decode.
        return _SeekPlan(start_index, None, None, pts_list)
    target = pts_list[start_index]
    before = [k for k in keyframes if k[0] <= target]
    if not before:
        return None
    return _SeekPlan(start_index, target, before[-1][1], pts_list)


def _decode_after_seek(container, plan: _SeekPlan, thread_type: str, skip_corrupt: bool, max_demux_errors: int, name: str) -> Iterator[VideoRecord]:
    """Records from ``plan.start_index`` on; yields nothing if the seek overshot the target."""
    stream = container.streams.video[0]
    container.seek(plan.seek_pts, stream=stream, backward=True, any_frame=False)
    stream.thread_type = thread_type
    indexer = _Indexer(stream.time_base, floor_pts=plan.target_pts, counter=plan.start_index, skip_corrupt=skip_corrupt)
    log.debug("%s: seeking to pts %d for frame %d (pts %d)", name, plan.seek_pts, plan.start_index, plan.target_pts)
    yield from _decode_stream(container, stream, indexer, max_demux_errors, name)


class _Indexer:
    """Turns decoder output (presentation order) plus demuxed PTS into indexed records.

    When the decoder emits a frame with PTS ``p``, every packet with a smaller
    PTS has been demuxed; those not yet emitted are frames that failed to decode.
    PTS below ``floor_pts`` (before a seek target) are dropped without an index.
    """

    def __init__(self, time_base, floor_pts: Optional[int], counter: int, rate=None, skip_corrupt: bool = True) -> None:
        self.time_base = time_base
        self.skip_corrupt = skip_corrupt
        self.rate = rate
        self.floor_pts = floor_pts
        self.counter = counter
        self.pending: list[int] = []
        self.first_frame_pts: Optional[int] = None
        self.last_error: Optional[str] = None

    def add_packet(self, packet) -> None:
        if packet.size and packet.pts is not None and not packet.is_discard:
            heapq.heappush(self.pending, packet.pts)

    def add_frame(self, frame) -> list[VideoRecord]:
        pts = frame.pts
        if self.first_frame_pts is None:
            self.first_frame_pts = pts
        if pts is None:  # no timestamps at all: count frames, time them by the header rate
            seconds = self.counter / float(self.rate) if self.rate else float(self.counter)
            out = [VideoRecord(self.counter, seconds, frame, None)]
            self.counter += 1
            return out
        out = self._lost_below(pts)
        while self.pending and self.pending[0] == pts:
            heapq.heappop(self.pending)
        if self.floor_pts is not None and pts < self.floor_pts:
            return out
        if self.skip_corrupt and frame.is_corrupt:
            out.append(VideoRecord(self.counter, _seconds(pts, self.time_base), None, "corrupt frame (the decoder concealed damaged data)"))
        else:
            out.append(VideoRecord(self.counter, _seconds(pts, self.time_base), frame, None))
        self.counter += 1
        return out

    def finish(self) -> list[VideoRecord]:
        return self._lost_below(None)

    def _lost_below(self, pts: Optional[int]) -> list[VideoRecord]:
        out = []
        while self.pending and (pts is None or self.pending[0] < pts):
            lost = heapq.heappop(self.pending)
            if self.floor_pts is not None and lost < self.floor_pts:
                continue
            reason = f"undecodable frame ({self.last_error})" if self.last_error else "undecodable frame (the decoder returned none)"
            out.append(VideoRecord(self.counter, _seconds(lost, self.time_base), None, reason))
            self.counter += 1
        return out


def _decode_stream(container, stream, indexer: _Indexer, max_demux_errors: int, name: str) -> Iterator[VideoRecord]:
    """Demux and decode to the end, one packet at a time, surviving per-packet errors."""
    import av

    demux_errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            demux_errors = 0
        except StopIteration:
            break
        except av.FFmpegError as exc:
            demux_errors += 1
            indexer.last_error = av_reason(exc)
            log.warning("%s: demuxer error (%s)", name, indexer.last_error)
            if demux_errors > max_demux_errors:
                log.warning("%s: %d demuxer errors in a row; stopping", name, demux_errors)
                break
            packets = container.demux(stream)
            continue
        indexer.add_packet(packet)
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            indexer.last_error = av_reason(exc)
            log.debug("%s: packet pts=%s failed to decode (%s)", name, packet.pts, indexer.last_error)
            continue
        for frame in frames:
            if indexer.floor_pts is not None and indexer.first_frame_pts is None and frame.pts is not None and frame.pts > indexer.floor_pts:
                return  # the seek landed after the target: the caller falls back
            yield from indexer.add_frame(frame)
    try:
        for frame in stream.codec_context.decode(None):
            yield from indexer.add_frame(frame)
    except av.FFmpegError as exc:
        indexer.last_error = av_reason(exc)
    yield from indexer.finish()


@contextmanager
def _open(name: str):
    import av

    if "://" not in name and not Path(name).exists():
        raise SourceError(f"{name}: no such file")
    try:
        container = av.open(name, mode="r")
    except av.FFmpegError as exc:
        raise SourceError(f"{name}: not a readable video ({av_reason(exc)})") from None
    except OSError as exc:
        raise SourceError(f"{name}: cannot open ({av_reason(exc)})") from None
    try:
        if not container.streams.video:
            raise SourceError(f"{name}: no video stream")
        yield container
    finally:
        container.close()


def _seconds(pts: int, time_base) -> float:
    return float(Fraction(pts) * Fraction(time_base))
