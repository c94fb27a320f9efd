"""Core: the predictor interface, the DA3 network and the simulated predictor.

``load_predictor`` and ``random_predictor`` import torch lazily, so the
engine can run a simulated or third-party predictor without it.
"""

from __future__ import annotations

from da3stream.core.types import FrameBatch, Prediction, Predictor


def load_predictor(weights, device: str = "auto", dtype: str = "auto", process_res: int = 504, **kwargs) -> Predictor:
    """Load a DA3 checkpoint (local directory or hub id) as a :class:`Predictor`."""
    from da3stream.core.da3_predictor import load_predictor as _load

    return _load(weights, device=device, dtype=dtype, process_res=process_res, **kwargs)


def random_predictor(preset: str = "small", seed: int = 0, **kwargs) -> Predictor:
    """A DA3 predictor of ``preset`` with RANDOM weights (for tests and benchmarks only)."""
    from da3stream.core.da3_predictor import random_predictor as _random

    return _random(preset, seed=seed, **kwargs)


__all__ = ["FrameBatch", "Prediction", "Predictor", "load_predictor", "random_predictor"]
