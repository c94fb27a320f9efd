"""Still images: listing a frame folder in natural order and reading frames as RGB uint8.

Reading goes through ``cv2.imdecode(np.fromfile(path, np.uint8), flags)`` so
paths with spaces or non-ASCII characters work on every platform. The flags are
``IMREAD_COLOR | IMREAD_ANYDEPTH`` rather than ``IMREAD_UNCHANGED``: OpenCV then
converts grayscale and palette images to three channels, drops alpha, converts
CMYK JPEGs and applies the EXIF orientation tag (which ``IMREAD_UNCHANGED``
ignores, leaving phone photos sideways), while keeping 16-bit samples so they
can be scaled to 8 bits with rounding here (``v * 255 / 65535``). Float TIFFs
with values in 0..1 are scaled by 255; other float images are rejected.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from da3stream.errors import ShapeError, SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""File suffixes (compared lower-case) read as frames."""

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_JPEG_EOI = b"\xff\xd9"
# A JPEG may carry a few padding bytes after its end-of-image marker.
_JPEG_TAIL_BYTES = 64
_DIGITS = re.compile(r"(\d+)")


def is_image_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image suffix this module reads (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame_2`` before ``frame_10``.

    Text parts compare case-insensitively; the raw name breaks ties so the
    order is total and deterministic.
    """
    parts = _DIGITS.split(name)
    key = tuple((0, int(p)) if i % 2 else (1, p.casefold()) for i, p in enumerate(parts))
    return key + ((2, name),)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` in natural order.

    Hidden files (names starting with ``.``, such as macOS ``._frame.jpg``
    resource forks) and sub-folders are ignored.

    Raises:
        SourceError: the folder is missing, unreadable, empty or holds no image files.
    """
    folder = Path(folder)
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except FileNotFoundError:
        raise SourceError(f"{folder}: no such folder") from None
    except NotADirectoryError:
        raise SourceError(f"{folder}: not a folder") from None
    except OSError as exc:
        raise SourceError(f"{folder}: cannot list folder ({exc.strerror})") from None
    if not entries:
        raise SourceError(f"{folder}: folder is empty")
    files = [Path(e.path) for e in entries if is_image_path(e.name) and e.is_file()]
    if not files:
        kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
        raise SourceError(f"{folder}: no image files ({kinds}) among {len(entries)} entries")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as ``(H, W, 3) uint8`` RGB.

    Raises:
        SourceError: the file is missing, unreadable, corrupt or truncated (a JPEG
            without its end-of-image marker), or has an unsupported pixel type.
    """
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise SourceError(f"{path}: file is empty")
    if path.suffix.lower() in _JPEG_SUFFIXES and _JPEG_EOI not in data[-_JPEG_TAIL_BYTES:].tobytes():
        raise SourceError(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise SourceError(f"{path}: not a readable image (corrupt or unsupported format)")
    return _bgr_to_rgb8(image, str(path))


def to_rgb8(image: np.ndarray, name: str) -> np.ndarray:
    """Convert an in-memory RGB frame to ``(H, W, 3) uint8`` RGB.

    Accepts ``(H, W)`` / ``(H, W, 1)`` grayscale, ``(H, W, 3)`` RGB and
    ``(H, W, 4)`` RGBA (alpha dropped); uint8, uint16 (scaled) or float in 0..1
    (scaled). Returns the input itself when it already conforms.

    Raises:
        ShapeError: the array has another shape or dtype, or float values outside 0..1.
    """
    if not isinstance(image, np.ndarray):
        raise ShapeError(f"{name}: expected an (H, W, 3) uint8 array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ShapeError(f"{name}: expected shape (H, W, 3), got {image.shape}")
    image = _to_uint8(image, name, ShapeError)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` to ``(height, width, 3)``: area averaging when shrinking, bilinear when enlarging."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    interp = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_LINEAR
    return cv2.resize(image, (int(width), int(height)), interpolation=interp)


def fit_max_side(width: int, height: int, max_side: Optional[int]) -> tuple[int, int]:
    """Size ``(width, height)`` scaled down so its longer side is at most ``max_side`` (aspect kept)."""
    if max_side is None or max(width, height) <= max_side:
        return int(width), int(height)
    scale = max_side / max(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _bgr_to_rgb8(image: np.ndarray, name: str) -> np.ndarray:
    image = _to_uint8(image, name, SourceError)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])


def _to_uint8(image: np.ndarray, name: str, error: type) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype.kind == "f":
        if not np.all(np.isfinite(image)) or image.min(initial=0.0) < 0.0 or image.max(initial=0.0) > 1.0:
            raise error(f"{name}: float pixel values must lie in 0..1")
        return np.round(image * 255.0).astype(np.uint8)
    raise error(f"{name}: unsupported pixel type {image.dtype}")
