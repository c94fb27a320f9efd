"""Field assignment for frozen dataclasses: their arrays are made read-only (values never change in place)."""

from __future__ import annotations

import numpy as np

__all__ = ["set_frozen"]


def set_frozen(obj, **values) -> None:
    """Set each ``name=value`` on the frozen dataclass ``obj`` (from its ``__post_init__``).

    numpy arrays among the values are marked read-only first; other values
    (floats, tuples, None) are set as they are.
    """
    for name, value in values.items():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
        object.__setattr__(obj, name, value)
