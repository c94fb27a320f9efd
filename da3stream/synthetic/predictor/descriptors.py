"""Global descriptors of the simulator: from the pixels (honest), or random Fourier features of the true pose.

``descriptor_source = "pixels"`` (:func:`pixel_descriptors`, the honest preset):
a fixed random projection of each image's normalised colour thumbnail and its
gradient-orientation histogram; a function of ``FrameBatch.images`` only, as a
network's would be, so look-alike places look alike and nothing knows the pose.

``descriptor_source = "pose"`` (the default, NOT honest: place recognition
becomes a ground-truth proximity test): two parts: one of the true camera centre, one of its "look-alike" coordinates
(``GroundTruth.appearance_fn``), mixed by ``SimParams.desc_aliasing`` so places
the world folds together get similar descriptors; isotropic noise, then L2
normalisation. The feature basis depends on the seed only.
"""

from __future__ import annotations

import numpy as np

from da3stream.synthetic.predictor.params import SimParams
from da3stream.synthetic.predictor.seeding import S_DESC, S_DESC_BASIS, window_rng
from da3stream.synthetic.predictor.truth import GroundTruth

THUMB_HW = (12, 16)
"""(h, w) of the colour thumbnail of :func:`image_features`."""
GRAD_HW = (48, 64)
"""(h, w) of the grey image the gradient histogram is taken on."""
GRAD_CELLS = (3, 4)
"""Histogram cells (rows, columns) across the grey image."""
GRAD_BINS = 8
"""Unsigned gradient-orientation bins per cell."""


def image_features(image: np.ndarray) -> np.ndarray:
    """(F,) float64 appearance features of one (H, W, 3) uint8 image: colour thumbnail and gradient histogram.

    Each part is zero-mean and unit-norm, so brightness and contrast changes
    matter little.
    """
    import cv2

    img = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    thumb = cv2.resize(img, THUMB_HW[::-1], interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    thumb -= thumb.mean()
    grey = cv2.resize(img.mean(axis=2), GRAD_HW[::-1], interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy).astype(np.float64)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * GRAD_BINS).astype(np.int64), GRAD_BINS - 1)
    ch, cw = GRAD_CELLS
    rows = np.arange(GRAD_HW[0])[:, None] * ch // GRAD_HW[0]
    cols = np.arange(GRAD_HW[1])[None, :] * cw // GRAD_HW[1]
    cell = (rows * cw + cols) * GRAD_BINS + b
    hist = np.sqrt(np.bincount(cell.ravel(), weights=mag.ravel(), minlength=ch * cw * GRAD_BINS))
    hist -= hist.mean()
    parts = [v / max(float(np.linalg.norm(v)), 1e-12) for v in (thumb, hist)]
    return np.concatenate(parts)


def pixel_descriptors(images: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """(N, dim) float32 L2-normalised descriptors of (N, H, W, 3) uint8 images: a fixed random projection
    (seeded by ``seed`` only, like a network's weights) of :func:`image_features`."""
    feats = np.stack([image_features(img) for img in images])
    gen = np.random.default_rng([int(seed), S_DESC_BASIS, 1000, feats.shape[1]])
    W = gen.standard_normal((dim, feats.shape[1]))
    desc = feats @ W.T
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    return desc.astype(np.float32)


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
