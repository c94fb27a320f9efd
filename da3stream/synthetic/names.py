"""Named builders (worlds, paths, sequence presets): one lookup with one error message."""

from __future__ import annotations

from typing import Mapping, TypeVar

from da3stream.errors import ConfigError

T = TypeVar("T")


def pick(what: str, table: Mapping[str, T], name: str) -> T:
    """``table[name]``; an unknown name raises :class:`ConfigError` naming ``what`` and the choices."""
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]
