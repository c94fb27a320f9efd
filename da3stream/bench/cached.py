"""A cached-prediction predictor and a cheap frame stream, for engine benchmarks.

:class:`CachedPredictor` replays a bank of ``P`` precomputed per-frame
predictions (made once by the simulated predictor on a closed camera path) for
any number of frames: source frame ``i`` gets bank entry ``i mod P``, expressed
in a fresh random gauge per window (a Sim(3) and a scale, as DA3's windows are).
Its own cost is a few array copies per frame, so an engine benchmark measures
the engine — alignment, fusion, loop retrieval, store writes — and not a
network. Descriptors are random per absolute frame index, so retrieval runs
against a growing index but finds no false loops on the repeated laps; with
``revisit=True`` they are the bank entry's own (plus a little per-frame noise),
so every lap is recognised as a revisit of the earlier ones and loop closure
(candidates, verification, the pose graph) runs for real.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from da3stream.alignment.sim3 import Sim3
from da3stream.core.types import FrameBatch, Prediction
from da3stream.io.sources import Frame


@dataclass(frozen=True)
class PredictionBank:
    """P per-frame predictions in one common frame, plus the images they came from."""

    images: np.ndarray
    """(P, H, W, 3) uint8."""
    depth: np.ndarray
    """(P, h, w) float32."""
    conf: np.ndarray
    """(P, h, w) float32."""
    world_from_cam: np.ndarray
    """(P, 4, 4) float64."""
    intrinsics: np.ndarray
    """(P, 3, 3) float64 for the depth grid."""
    fps: float
    """Frame rate of the stream."""


def build_bank(n_frames: int = 120, hw: tuple = (280, 504), seed: int = 0, preset: str = "robot_loop") -> PredictionBank:
    """Render a closed synthetic path once and predict it with the simulator (one window, no gauge)."""
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.synthetic import make_sequence

    seq = make_sequence(preset, n_frames=n_frames, width=hw[1], height=hw[0], seed=seed)
    sim = SimulatedPredictor(seq, depth_hw=hw, params=SimParams(gauge="identity", with_rays=False, with_descriptors=False), seed=seed)
    images = seq.images()
    idx = np.arange(len(seq), dtype=np.int64)
    pred = sim.predict(FrameBatch(images=images, indices=idx, timestamps=idx / seq.fps))
    return PredictionBank(images, pred.depth, pred.conf, pred.world_from_cam, pred.intrinsics, seq.fps)


class CachedPredictor:
    """Replays a :class:`PredictionBank` in a random gauge per window (a benchmark tool, not a model)."""

    simulated = True
    weights_random = False
    weights_sha256 = None

    REVISIT_NOISE = 0.1
    """Per-frame noise (relative to the unit slot descriptor) of ``revisit`` descriptors: laps match at ~0.99."""

    def __init__(self, bank: PredictionBank, *, seed: int = 0, descriptor_dim: int = 256, revisit: bool = False) -> None:
        self.bank = bank
        self.seed = int(seed)
        self.descriptor_dim = int(descriptor_dim)
        self.revisit = bool(revisit)
        self.model_id = f"cached-simulated:P{len(bank.depth)}:seed{seed}" + (":revisit" if revisit else "")

    def _gauge(self, indices: np.ndarray) -> Sim3:
        key = int.from_bytes(hashlib.blake2b(indices.tobytes(), digest_size=8).digest(), "little")
        rng = np.random.default_rng([self.seed, key])
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        from scipy.spatial.transform import Rotation

        return Sim3(float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))), Rotation.from_quat(q).as_matrix(), rng.normal(size=3))

    def predict(self, batch: FrameBatch) -> Prediction:
        b = self.bank
        idx = np.asarray(batch.indices, np.int64)
        slot = idx % len(b.depth)
        chunk_from_world = self._gauge(idx)
        desc = np.empty((len(idx), self.descriptor_dim), np.float32)
        for k, i in enumerate(idx):
            v = np.random.default_rng([self.seed, 7, int(i)]).standard_normal(self.descriptor_dim)
            if self.revisit:
                base = np.random.default_rng([self.seed, 8, int(slot[k])]).standard_normal(self.descriptor_dim)
                v = base / np.linalg.norm(base) + self.REVISIT_NOISE * v / np.sqrt(self.descriptor_dim)
            v = v.astype(np.float32)
            desc[k] = v / np.linalg.norm(v)
        return Prediction(
            depth=b.depth[slot] * np.float32(chunk_from_world.s),
            conf=b.conf[slot].copy(),
            world_from_cam=chunk_from_world.apply_pose(b.world_from_cam[slot]),
            intrinsics=b.intrinsics[slot].copy(),
            descriptors=desc,
        )


def frame_stream(bank: PredictionBank, n_frames: int) -> Iterator[Frame]:
    """``n_frames`` frames cycling through the bank's images, with real timestamps."""
    P = len(bank.images)
    for i in range(n_frames):
        yield Frame(index=i, timestamp=i / bank.fps, image=bank.images[i % P])
