"""Voxel fusion of a window's new frames."""

from __future__ import annotations

import numpy as np

from da3stream.alignment.voxel import voxel_ids as _voxel_ids
from da3stream.streaming.fusion import fuse_window


def _frames(n=2, h=24, w=32, depth=2.0):
    K = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    return (np.full((n, h, w), depth, np.float32), np.ones((n, h, w), np.float32),
            np.repeat(K[None], n, 0), np.repeat(np.eye(4)[None], n, 0))


def test_identical_frames_fuse_into_the_same_voxels():
    d, c, K, P = _frames(n=1)
    one = fuse_window(d, c, K, P, None, conf_quantile=0.0, voxel_size=0.05, voxel_fraction_of_depth=0.0,
                      pixel_stride=1, max_points=10**6)
    d2, c2, K2, P2 = _frames(n=3)
    three = fuse_window(d2, c2, K2, P2, None, conf_quantile=0.0, voxel_size=0.05, voxel_fraction_of_depth=0.0,
                        pixel_stride=1, max_points=10**6)
    assert len(three) == len(one) > 0  # the same surface seen three times is written once
    np.testing.assert_allclose(three.xyz[:, 2], 2.0, atol=1e-5)


def test_voxel_average_colour_and_best_confidence():
    d, c, K, P = _frames(n=1, h=2, w=2, depth=1.0)
    K[:, :2, 2] = -5.0  # every point at positive x, y: one voxel of size 10 holds them all
    c[0] = [[1.0, 2.0], [3.0, 4.0]]
    rgb = np.array([[[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [20, 20, 20]]]], np.uint8)
    out = fuse_window(d, c, K, P, rgb, conf_quantile=0.0, voxel_size=10.0, voxel_fraction_of_depth=0.0,
                      pixel_stride=1, max_points=10)
    assert len(out) == 1
    np.testing.assert_array_equal(out.rgb[0], [80, 80, 80])
    assert out.conf[0] == 4.0


def test_confidence_quantile_and_cap():
    d, c, K, P = _frames(n=1)
    c[0, :12] = 0.1
    out = fuse_window(d, c, K, P, None, conf_quantile=0.5, voxel_size=1e-4, voxel_fraction_of_depth=0.0,
                      pixel_stride=1, max_points=10**6)
    assert np.all(out.conf >= 1.0)
    capped = fuse_window(d, c, K, P, None, conf_quantile=0.0, voxel_size=1e-4, voxel_fraction_of_depth=0.0,
                         pixel_stride=1, max_points=50)
    assert len(capped) == 50


def test_packed_voxel_ids_match_rowwise_unique(rng):
    keys = rng.integers(-50, 50, size=(5000, 3))
    inv, counts = _voxel_ids(keys)
    _, inv_ref, counts_ref = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    # same partition of the points
    assert len(counts) == len(counts_ref)
    pairs = set(zip(inv.tolist(), inv_ref.reshape(-1).tolist()))
    assert len(pairs) == len(counts)
