"""Writing test and demo videos through PyAV: :func:`write_video` encodes an iterable of RGB frames.

Frame ``i`` gets the timestamp ``i / fps``; :func:`da3stream.io.sources.video.decode_video`
reads such a file back with the same indices and timestamps.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from da3stream.errors import ExportError, ShapeError, check_shape
from da3stream.io.sources.video import av_reason

log = logging.getLogger(__name__)

__all__ = ["write_video"]

# Codecs whose yuv420p output needs even width and height.
_CHROMA_SUBSAMPLED = ("yuv420p", "yuvj420p", "nv12", "yuv422p")
# Encoder option name for a constant rate factor, per codec.
_CRF_CODECS = {"libx264": {}, "libx264rgb": {}, "libx265": {}, "libvpx-vp9": {"b": "0"}, "libaom-av1": {"b": "0"}, "libsvtav1": {}}



def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "libx264",
    crf: Optional[int] = None,
    *,
    pix_fmt: str = "yuv420p",
    gop: Optional[int] = None,
) -> int:
    """Encode RGB frames into a video file; return the number of frames written.

    Args:
        path: output file; the container is chosen from its suffix (``.mp4``,
            ``.mkv``, ``.avi``, ...). Parent folders must exist.
        frames: iterable of ``(H, W, 3) uint8`` RGB images, all of one size.
        fps: frame rate; frame ``i`` gets the timestamp ``i / fps`` seconds.
        codec: FFmpeg encoder name (``libx264``, ``mpeg4``, ``libvpx-vp9``,
            ``ffv1`` ...).
        crf: constant rate factor for codecs that have one (x264/x265/vp9/av1);
            ``0`` with ``libx264rgb``/``pix_fmt="rgb24"`` or ``ffv1`` with
            ``pix_fmt="bgr0"`` is lossless. None keeps the encoder default.
        pix_fmt: encoder pixel format, ``yuv420p`` by default (what players and
            the real-world videos use).
        gop: keyframe interval in frames; None keeps the encoder default.

    Odd sizes: chroma-subsampled formats (``yuv420p``) need even width and
    height, so an odd-sized frame is padded by one replicated row/column at the
    bottom/right; the video is then one pixel larger than the input (logged
    once). Other pixel formats keep the size.

    Raises:
        ShapeError: a frame is not ``(H, W, 3) uint8`` or differs in size from the first.
        ExportError: no frames, a bad ``fps``, an unknown codec, or the file cannot be written.
    """
    import av

    path = Path(path)
    rate, options = _encoder_settings(path, fps, codec, crf)
    try:
        container = av.open(str(path), mode="w")
    except (OSError, av.FFmpegError, ValueError) as exc:
        raise ExportError(f"{path}: cannot open for writing ({av_reason(exc)})") from None

    ok = False
    try:
        n = _encode_frames(container, frames, path, codec, rate, pix_fmt, options, gop)
        ok = True
    finally:
        try:
            container.close()
        except av.FFmpegError as exc:  # pragma: no cover - closing a broken muxer
            if ok:
                raise ExportError(f"{path}: cannot finish the file ({av_reason(exc)})") from None
        if not ok:
            path.unlink(missing_ok=True)
    log.debug("wrote %d frames to %s (%s, %s fps)", n, path, codec, fps)
    return n


def _encoder_settings(path: Path, fps: float, codec: str, crf: Optional[int]) -> tuple[Fraction, dict[str, str]]:
    """``(frame rate, encoder options)`` of :func:`write_video`, or :class:`ExportError` for a bad fps / codec / crf."""
    import av

    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ExportError(f"{path}: fps must be a positive number, got {fps!r}")
    if codec not in av.codecs_available:
        raise ExportError(f"{path}: unknown video codec {codec!r}")
    rate = Fraction(fps).limit_denominator(1001 * 1000)
    options: dict[str, str] = {}
    if crf is not None:
        if codec not in _CRF_CODECS:
            raise ExportError(f"{path}: codec {codec!r} has no crf setting (use one of {sorted(_CRF_CODECS)})")
        options = {"crf": str(int(crf)), **_CRF_CODECS[codec]}
    return rate, options


def _encode_frames(container, frames: Iterable[np.ndarray], path: Path, codec: str, rate: Fraction, pix_fmt: str,
                   options: dict, gop: Optional[int]) -> int:
    """Encode and mux every frame, then flush the encoder; return the frame count (see :func:`write_video`)."""
    import av

    n = 0
    stream = None
    size = None
    pad = (0, 0)
    try:
        for image in frames:
            _check_frame(image, n, path)
            if size is None:
                size = image.shape[:2]
                if pix_fmt in _CHROMA_SUBSAMPLED:
                    pad = (size[0] % 2, size[1] % 2)
                    if any(pad):
                        log.info("%s: padding %dx%d frames to even size for %s", path.name, size[1], size[0], pix_fmt)
                stream = _add_stream(container, codec, rate, size[1] + pad[1], size[0] + pad[0], pix_fmt, options, gop, path)
            elif image.shape[:2] != size:
                raise ShapeError(f"{path.name} frame {n}: size {image.shape[1]}x{image.shape[0]} differs from the first frame's {size[1]}x{size[0]}")
            if any(pad):
                image = np.pad(image, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = n
            frame.time_base = Fraction(1) / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ExportError(f"{path}: no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
    except av.FFmpegError as exc:
        raise ExportError(f"{path}: encoding failed at frame {n} ({av_reason(exc)})") from None
    return n


def _check_frame(image: np.ndarray, n: int, path: Path) -> None:
    """ShapeError unless frame ``n`` is an ``(H, W, 3) uint8`` image."""
    check_shape(f"{path.name} frame {n}", image, (None, None, 3), "u")
    if image.dtype != np.uint8:
        raise ShapeError(f"{path.name} frame {n}: expected dtype uint8, got {image.dtype}")


def _add_stream(container, codec, rate, width, height, pix_fmt, options, gop, path):
    import av

    try:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = Fraction(1) / rate
        if gop is not None:
            stream.codec_context.gop_size = int(gop)
    except (av.FFmpegError, ValueError, TypeError) as exc:
        raise ExportError(f"{path}: cannot set up codec {codec!r} with {pix_fmt} ({av_reason(exc)})") from None
    return stream
