"""Compatibility names for ``streaming/pipeline.py``; registration has one (numpy) implementation.

The torch twin was removed (measurement: :mod:`da3stream.alignment.registration`).
Delete this module once the pipeline imports :func:`resolve_align_device` from
:mod:`da3stream.alignment.registration` and always calls ``register``.
"""

from __future__ import annotations

from da3stream.alignment.registration import RegistrationResult, register, resolve_align_device

__all__ = ["register_torch", "resolve_align_device"]


def register_torch(*args, device=None, **kwargs) -> RegistrationResult:
    """:func:`~da3stream.alignment.registration.register` (``device`` is ignored: it runs on the host)."""
    return register(*args, **kwargs)
