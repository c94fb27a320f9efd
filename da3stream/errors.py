"""The exception tree of da3stream.

Every error the library raises on purpose derives from :class:`Da3StreamError`.
Each subclass carries the CLI exit code it maps to, so ``run_stream.py`` can
print one line and exit without a traceback.
"""

from __future__ import annotations


class Da3StreamError(Exception):
    """Root of all da3stream errors."""

    exit_code: int = 1


class ConfigError(Da3StreamError, ValueError):
    """Invalid configuration: unknown key, wrong type or out-of-range value."""

    exit_code = 2


class SourceError(Da3StreamError):
    """An input (video, image folder, frame iterator, bag) cannot be read."""

    exit_code = 3


class CheckpointError(Da3StreamError):
    """Model weights are missing, corrupt or belong to another architecture."""

    exit_code = 4


class StoreError(Da3StreamError):
    """The Zarr run store is missing, corrupt, from a newer format or incompatible."""

    exit_code = 5


class PredictionError(Da3StreamError):
    """A predictor returned output that violates the Prediction contract."""

    exit_code = 6


class RejectedWindow(PredictionError):
    """A window's prediction is unusable as a whole (non-finite cameras, no finite depth); the run goes on without it."""


class AlignmentError(Da3StreamError):
    """Registration could not produce an estimate (degenerate input)."""

    exit_code = 7


class ExportError(Da3StreamError):
    """An export or a trajectory file could not be written or read."""

    exit_code = 8


class ShapeError(Da3StreamError, ValueError):
    """An array argument has the wrong shape or dtype."""

    exit_code = 9


def check_shape(name: str, array, expected: tuple, dtype_kind: str | None = None) -> None:
    """Raise :class:`ShapeError` unless ``array`` matches ``expected``.

    ``expected`` holds ints for fixed sizes and ``None`` (or a str label such
    as ``"N"``) for free sizes; equal labels must have equal sizes.
    ``dtype_kind`` is a numpy kind string such as ``"f"``, ``"u"`` or ``"fiu"``.
    """
    shape = getattr(array, "shape", None)
    if shape is None:
        raise ShapeError(f"{name}: expected an array of shape {_fmt(expected)}, got {type(array).__name__}")
    if len(shape) != len(expected):
        raise ShapeError(f"{name}: expected shape {_fmt(expected)}, got {tuple(shape)}")
    labels: dict[str, int] = {}
    for got, want in zip(shape, expected):
        if isinstance(want, int) and got != want:
            raise ShapeError(f"{name}: expected shape {_fmt(expected)}, got {tuple(shape)}")
        if isinstance(want, str):
            if labels.setdefault(want, got) != got:
                raise ShapeError(f"{name}: expected shape {_fmt(expected)}, got {tuple(shape)}")
    if dtype_kind is not None:
        kind = getattr(getattr(array, "dtype", None), "kind", None)
        if kind is None or kind not in dtype_kind:
            raise ShapeError(f"{name}: expected dtype kind {dtype_kind!r}, got {getattr(array, 'dtype', None)}")


def _fmt(expected: tuple) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
