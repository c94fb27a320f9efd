"""Small, seeded synthetic runs shared by the pipeline tests (also run in subprocesses)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.synthetic import make_sequence

SMALL_CFG = {"chunk_size": 16, "overlap": 4, "loop.enabled": False}


def small_sequence(n_frames: int = 80, preset: str = "demo", width: int = 160, height: int = 120, seed: int = 0):
    return make_sequence(preset, n_frames=n_frames, width=width, height=height, seed=seed)


def small_predictor(seq, seed: int = 0, **params) -> SimulatedPredictor:
    return SimulatedPredictor(seq, depth_hw=(height_of(seq) // 2, width_of(seq) // 2), params=SimParams(**params), seed=seed)


def height_of(seq) -> int:
    return int(seq.image_hw[0])


def width_of(seq) -> int:
    return int(seq.image_hw[1])


HOLD_S = 300.0
"""How long a held forward waits for the test to kill its process."""


class SlowPredictor:
    """Wraps a predictor and sleeps after each window (so a test can kill a run mid-way).

    With ``hold_from_call`` the forward of that call (1-based) and later ones touch ``marker``
    and then wait: a test that kills the process once the marker exists lands inside that
    window however loaded the machine is (the run cannot finish first).
    """

    def __init__(self, inner, delay_s: float, hold_from_call=None, marker=None) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.model_id = getattr(inner, "model_id", "slow")
        self.hold_from_call, self.marker, self.calls = hold_from_call, marker, 0

    def predict(self, batch):
        self.calls += 1
        if self.hold_from_call is not None and self.calls >= self.hold_from_call:
            Path(self.marker).touch()
            time.sleep(HOLD_S)
        out = self.inner.predict(batch)
        time.sleep(self.delay_s)
        return out


def trajectory(store_path) -> tuple[np.ndarray, np.ndarray]:
    from da3stream.io.store import RunStore

    st = RunStore.open(store_path, "r")
    t = st.frames_table()
    return t["index"], t["world_from_cam"]
