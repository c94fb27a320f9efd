"""Global descriptors of the simulator: random Fourier features of the camera's place and heading.

Two parts: one of the true camera centre, one of its "look-alike" coordinates
(``GroundTruth.appearance_fn``), mixed by ``SimParams.desc_aliasing`` so places
the world folds together get similar descriptors; isotropic noise, then L2
normalisation. The feature basis depends on the seed only.
"""

from __future__ import annotations

import numpy as np

from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.seeding import S_DESC, S_DESC_BASIS, window_rng
from da3stream.synthetic.predictor.truth import GroundTruth


class DescriptorModel:
    """(N, D) float32 L2-normalised descriptors of a window's frames; caches the feature bases."""

    def __init__(self, params: SimParams, seed: int) -> None:
        self.params = params
        self.seed = int(seed)
        self._basis: dict = {}

    def basis(self, part: int, dim: int) -> tuple:
        """Random Fourier feature basis (W_place (D, dim), W_heading (D, 3), phase (D,)) of one descriptor part."""
        key = (part, dim)
        if key not in self._basis:
            p = self.params
            gen = np.random.default_rng([self.seed, S_DESC_BASIS, part, dim])
            D = p.descriptor_dim
            self._basis[key] = (gen.standard_normal((D, dim)) / p.desc_place_sigma_m,
                                gen.standard_normal((D, 3)) / np.radians(p.desc_heading_sigma_deg),
                                gen.uniform(0.0, 2 * np.pi, D))
        return self._basis[key]

    def __call__(self, gt: GroundTruth, idx: np.ndarray, key: tuple) -> np.ndarray:
        """Descriptors of the frames ``idx`` of the window with key ``key`` (noise drawn per window)."""
        p = self.params
        P = gt.world_from_cam[idx]
        centre = P[:, :3, 3]
        fwd = P[:, :3, 2]
        look = centre if gt.appearance_fn is None else np.asarray(gt.appearance_fn(centre), dtype=np.float64)
        D = p.descriptor_dim
        norm = np.sqrt(2.0 / D)

        def rff(part, pos):
            Wp, Wf, b = self.basis(part, pos.shape[1])
            return norm * np.cos(pos @ Wp.T + fwd @ Wf.T + b)

        a = p.desc_aliasing
        desc = np.sqrt(1.0 - a) * rff(0, centre) + np.sqrt(a) * rff(1, look.reshape(idx.size, -1))
        if p.desc_noise > 0:
            gen = window_rng(self.seed, key, S_DESC)
            desc = desc + gen.standard_normal(desc.shape) * (p.desc_noise / np.sqrt(D))
        desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return desc.astype(np.float32)
