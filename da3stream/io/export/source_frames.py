"""The source frames of a run at the ORIGINAL resolution, re-read from the source the store records.

The store keeps RGB only on the predictor's depth grid (``frames/rgb``), but
3DGS / COLMAP tools want the frames the intrinsics describe: the store's
intrinsics are for ``image_hw``, the size the source delivered (docs/STORE.md),
so the frames are re-read from the source recorded in the root attribute
``source`` (``path``, ``kind``) with the run's own source options
(``config.source``: ``max_side``, ``intrinsics`` -> undistortion,
``undistort_alpha``, ``topic``) through :func:`~da3stream.io.sources.open_source`.
The frames are then exactly those the run saw (undistorted when a calibration
with distortion was given), and each is checked against ``image_hw``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from da3stream.errors import Da3StreamError, ExportError
from da3stream.io.export.depth import make_dir, write_rgb_png
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["iter_source_frames", "write_source_images"]

REREADABLE_KINDS = ("video", "images", "image", "rosbag")
"""Source kinds with a path to read again (an in-memory iterable has none)."""


def _open_recorded_source(store: RunStore, source: Optional[PathLike], start_index: int):
    """The run's source opened again with the run's options, from ``start_index``."""
    from da3stream.io.sources import open_source

    desc = store.source
    kind = desc.get("kind")
    path = os.fspath(source) if source is not None else desc.get("path")
    if source is None and (kind not in REREADABLE_KINDS or not path):
        raise ExportError(f"{store.path}: the run's source ({kind or 'unknown'}) is not a file or folder to re-read "
                          "the original frames from; pass the source path (--source)")
    if "://" not in str(path) and not Path(path).exists():
        raise ExportError(f"{path}: the run's source is not there any more; pass where it is now (--source)")
    opts = store.config.get("source", {}) if isinstance(store.config.get("source"), dict) else {}
    try:
        return open_source(path, max_side=opts.get("max_side"), calibration=opts.get("intrinsics"),
                           undistort_alpha=opts.get("undistort_alpha", 0.0), topic=opts.get("topic"),
                           source_fps=float(desc.get("fps") or 30.0), prefetch=0, start_index=int(start_index))
    except Da3StreamError as exc:
        raise ExportError(f"{path}: cannot re-read the run's source ({exc})") from None


def iter_source_frames(store: RunStore, indices: Sequence[int], source: Optional[PathLike] = None
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """``(source index, (H, W, 3) uint8 RGB)`` of each of ``indices``, in source order, at ``image_hw``.

    ``source``: where the source is now (default: the path the store records).
    Raises :class:`ExportError` when a frame is missing or its size is not the store's ``image_hw``.
    """
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    H, W = store.image_hw
    pending = set(wanted)
    with _open_recorded_source(store, source, wanted[0]) as src:
        for frame in src:
            if frame.index not in pending:
                if frame.index > wanted[-1]:
                    break
                continue
            if frame.image.shape[:2] != (H, W):
                h, w = frame.image.shape[:2]
                raise ExportError(f"{src.name}: frame {frame.index} is {w}x{h}, the run's frames were {W}x{H}; "
                                  "is this the run's source?")
            pending.discard(frame.index)
            yield frame.index, frame.image
            if not pending:
                break
    if pending:
        missing = sorted(pending)
        raise ExportError(f"{src.name}: {len(missing)} frames of the run could not be read again "
                          f"(first: {missing[0]}); is this the run's source?")


def write_source_images(store: RunStore, indices: Sequence[int], names: Sequence[str], out_dir: PathLike,
                        source: Optional[PathLike] = None) -> int:
    """Write the source frames ``indices`` as PNG files ``out_dir/names[k]`` at ``image_hw``; return the count."""
    out = Path(out_dir)
    make_dir(out)
    name_of = {int(i): n for i, n in zip(indices, names)}
    n = 0
    for index, image in iter_source_frames(store, list(name_of), source):
        path = out / name_of[index]
        make_dir(path.parent)
        write_rgb_png(path, image)
        n += 1
    log.info("wrote %d source frames (%dx%d) to %s", n, store.image_hw[1], store.image_hw[0], out)
    return n
