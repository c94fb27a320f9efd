"""Binary little-endian PLY point clouds: xyz float32 + rgb uint8 (+ optional normals float32).

:class:`PlyWriter` streams points block by block (the vertex count is fixed
in the header up front), so maps larger than memory can be exported.
:func:`read_ply` reads back what we write (and any binary little-endian
vertex-only PLY with float/uchar properties).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from da3stream.errors import ExportError, ShapeError, check_shape

PathLike = Union[str, os.PathLike]

__all__ = ["PlyWriter", "read_ply", "write_ply"]

_PLY_TYPES = {
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
    "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1",
    "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
    "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4",
}


def _vertex_dtype(with_normals: bool) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if with_normals:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    return np.dtype(fields)


class PlyWriter:
    """Write exactly ``n_points`` vertices in one or more :meth:`write` calls.

    Use as a context manager; the file appears (atomically renamed into place)
    only when all points were written.
    """

    def __init__(self, path: PathLike, n_points: int, with_normals: bool = False, comment: str = "") -> None:
        self.path = Path(path)
        self.n_points = int(n_points)
        self.with_normals = bool(with_normals)
        self._dtype = _vertex_dtype(self.with_normals)
        self._written = 0
        self._tmp = self.path.with_name(self.path.name + ".partial")
        header = ["ply", "format binary_little_endian 1.0"]
        if comment:
            header.append(f"comment {comment}")
        header.append(f"element vertex {self.n_points}")
        header += [f"property float {c}" for c in ("x", "y", "z")]
        if self.with_normals:
            header += [f"property float {c}" for c in ("nx", "ny", "nz")]
        header += [f"property uchar {c}" for c in ("red", "green", "blue")]
        header.append("end_header")
        try:
            self._f = open(self._tmp, "wb")
            self._f.write(("\n".join(header) + "\n").encode("ascii"))
        except OSError as exc:
            raise ExportError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def write(self, xyz: np.ndarray, rgb: np.ndarray, normals: Optional[np.ndarray] = None) -> None:
        """Append points: ``xyz`` (P, 3) float, ``rgb`` (P, 3) uint8, ``normals`` (P, 3) float when enabled."""
        check_shape("PlyWriter.write(xyz)", xyz, ("P", 3), "f")
        check_shape("PlyWriter.write(rgb)", rgb, (xyz.shape[0], 3))
        if np.asarray(rgb).dtype != np.uint8:
            raise ShapeError(f"PlyWriter.write(rgb): expected dtype uint8, got {np.asarray(rgb).dtype}")
        if self.with_normals:
            if normals is None:
                raise ShapeError("PlyWriter.write(normals): required, the file was opened with normals")
            check_shape("PlyWriter.write(normals)", normals, (xyz.shape[0], 3), "f")
        elif normals is not None:
            raise ShapeError("PlyWriter.write(normals): the file was opened without normals")
        p = xyz.shape[0]
        if self._written + p > self.n_points:
            raise ExportError(f"{self.path}: more points written ({self._written + p}) than declared ({self.n_points})")
        rec = np.empty(p, dtype=self._dtype)
        rec["x"], rec["y"], rec["z"] = (np.asarray(xyz[:, k], np.float32) for k in range(3))
        if self.with_normals:
            rec["nx"], rec["ny"], rec["nz"] = (np.asarray(normals[:, k], np.float32) for k in range(3))
        rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        try:
            self._f.write(rec.tobytes())
        except OSError as exc:
            self.abort()
            raise ExportError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self._written += p

    def close(self) -> None:
        """Finish the file; raises :class:`ExportError` if fewer points than declared were written."""
        if self._f.closed:
            return
        if self._written != self.n_points:
            self.abort()
            raise ExportError(f"{self.path}: {self._written} points written, {self.n_points} declared")
        try:
            self._f.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise ExportError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def abort(self) -> None:
        """Drop the unfinished file."""
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "PlyWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_ply(path: PathLike, xyz: np.ndarray, rgb: np.ndarray, normals: Optional[np.ndarray] = None,
              comment: str = "") -> None:
    """Write ``xyz`` (P, 3) float32, ``rgb`` (P, 3) uint8 and optional ``normals`` (P, 3) as binary PLY
    (``comment``: one header comment line)."""
    check_shape("write_ply(xyz)", xyz, ("P", 3), "f")
    with PlyWriter(path, xyz.shape[0], with_normals=normals is not None, comment=comment) as w:
        w.write(xyz, rgb, normals)


def read_ply(path: PathLike) -> dict[str, np.ndarray]:
    """Read a binary little-endian vertex PLY: ``xyz`` (P, 3) float32, ``rgb`` (P, 3) uint8 when
    present, ``normals`` (P, 3) float32 when present."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: file not found") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc.strerror or exc})") from None
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ExportError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fields, n, in_vertex = [], None, False
    for k, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] in ("ply", "comment", "obj_info"):
            continue
        if parts[0] == "format":
            if parts[1:2] != ["binary_little_endian"]:
                raise ExportError(f"{path}:{k}: only binary_little_endian PLY is supported, got {parts[1:2]}")
        elif parts[0] == "element":
            if parts[1] != "vertex" or n is not None:
                raise ExportError(f"{path}:{k}: only a single 'vertex' element is supported")
            n, in_vertex = int(parts[2]), True
        elif parts[0] == "property" and in_vertex:
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise ExportError(f"{path}:{k}: unsupported property type {' '.join(parts[1:-1])!r}")
            fields.append((parts[2], _PLY_TYPES[parts[1]]))
    if n is None:
        raise ExportError(f"{path}: no vertex element")
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n"):]
    if len(body) != n * dtype.itemsize:
        raise ExportError(f"{path}: vertex data is {len(body)} bytes, expected {n * dtype.itemsize} for {n} vertices")
    rec = np.frombuffer(body, dtype=dtype, count=n)
    names = dtype.names or ()
    if not all(c in names for c in ("x", "y", "z")):
        raise ExportError(f"{path}: vertex element has no x, y, z properties")
    out = {"xyz": np.stack([rec[c] for c in ("x", "y", "z")], axis=1).astype(np.float32)}
    if all(c in names for c in ("red", "green", "blue")):
        out["rgb"] = np.stack([rec[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
    if all(c in names for c in ("nx", "ny", "nz")):
        out["normals"] = np.stack([rec[c] for c in ("nx", "ny", "nz")], axis=1).astype(np.float32)
    return out
