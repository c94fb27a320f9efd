"""Preprocessing equals the official InputProcessor, pixel maps move intrinsics both ways."""

from __future__ import annotations

import numpy as np
import pytest

from da3stream.core.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    METHODS,
    intrinsics_to_network,
    intrinsics_to_original,
    network_hw,
    plan_view,
    preprocess,
)
from da3stream.errors import ConfigError, ShapeError

pytest.importorskip("depth_anything_3", reason="official DA3 package (test oracle) not installed")
cv2 = pytest.importorskip("cv2")

from official_input import official_preprocess  # noqa: E402

# landscape, portrait, enlarging small images, odd sizes, exact-bound sizes
SIZES = [(540, 960), (960, 540), (61, 97), (33, 20), (376, 504), (504, 378), (1000, 999), (250, 700)]


def _textured(rng, h, w, n=1):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([127 + 100 * np.sin(xx / 7.0), 127 + 100 * np.cos(yy / 5.0), (xx * 3 + yy) % 256], -1)
    out = [np.clip(base + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8) for _ in range(n)]
    return np.stack(out)


def _K(h, w):
    return np.array([[0.8 * w, 0.0, w / 2 + 3.5], [0.0, 0.85 * w, h / 2 - 2.25], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("hw", SIZES)
def test_matches_official_on_synthetic_frames(rng, hw, method):
    imgs = _textured(rng, *hw, n=2)
    K = np.stack([_K(*hw)] * 2)
    ref_x, ref_K = official_preprocess(list(imgs), K, 504, method)
    ours = preprocess(imgs, 504, method)
    assert tuple(ours.images.shape) == tuple(ref_x.shape)
    assert ours.images.dtype == ref_x.dtype
    assert np.array_equal(ours.images.numpy(), ref_x.numpy()), "normalised pixels differ from the official ones"
    np.testing.assert_allclose(ours.to_network_intrinsics(K), ref_K.numpy(), rtol=1e-6, atol=1e-4)
    assert network_hw(hw, 504, method) == ours.network_hw


@pytest.mark.parametrize("method", METHODS)
def test_matches_official_on_real_photos(shared_dir, method):
    paths = [shared_dir / "data" / f"soh_{i:03d}.png" for i in (0, 10)]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        pytest.skip("shared/data/soh_*.png not found")
    imgs = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
    K = np.stack([_K(*im.shape[:2]) for im in imgs])
    ref_x, ref_K = official_preprocess(imgs, K, 504, method)
    ours = preprocess(imgs, 504, method)
    assert np.array_equal(ours.images.numpy(), ref_x.numpy())
    np.testing.assert_allclose(ours.to_network_intrinsics(K), ref_K.numpy(), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("method", ["upper_bound_resize", "lower_bound_crop"])
def test_mixed_sizes_are_cropped_like_official(rng, method):
    imgs = [_textured(rng, 540, 960)[0], _textured(rng, 480, 640)[0], _textured(rng, 300, 300)[0]]
    K = np.stack([_K(*im.shape[:2]) for im in imgs])
    ref_x, ref_K = official_preprocess(imgs, K, 280, method)
    ours = preprocess(imgs, 280, method)
    assert np.array_equal(ours.images.numpy(), ref_x.numpy())
    np.testing.assert_allclose(ours.to_network_intrinsics(K), ref_K.numpy(), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("process_res", [280, 504, 518])
def test_official_sizes(process_res):
    assert network_hw((540, 960)) == (280, 504)
    assert network_hw((480, 640)) == (378, 504)
    for hw in SIZES:
        for m in METHODS:
            h, w = network_hw(hw, process_res, m)
            assert h % 14 == 0 and w % 14 == 0


def test_pixel_map_round_trip_and_projection(rng):
    imgs = _textured(rng, 300, 457, n=3)
    K = np.stack([_K(300, 457)] * 3)
    for m in METHODS:
        pre = preprocess(imgs, 196, m)
        K_net = pre.to_network_intrinsics(K)
        np.testing.assert_allclose(pre.to_original_intrinsics(K_net), K, rtol=1e-12, atol=1e-9)
        # a 3D point projects to net_from_orig applied to its original projection
        pts_cam = np.array([0.3, -0.2, 2.0])
        uv_orig = K[0] @ pts_cam
        uv_net = K_net[0] @ pts_cam
        np.testing.assert_allclose(pre.net_from_orig[0] @ uv_orig, uv_net, rtol=1e-12)


def test_normalisation_constants(rng):
    flat = np.full((1, 28, 28, 3), 255, np.uint8)
    x = preprocess(flat, 28, "upper_bound_resize").images.numpy()
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="images: expected dtype"):
        preprocess(np.zeros((1, 20, 20, 3), np.float32))
    with pytest.raises(ShapeError, match="images"):
        preprocess(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ShapeError, match="at least one"):
        preprocess([])
    with pytest.raises(ConfigError, match="process_res_method"):
        plan_view((20, 20), 504, "bilinear")
    with pytest.raises(ShapeError, match="elongated"):
        plan_view((2, 2000), 504, "upper_bound_crop")
    with pytest.raises(ShapeError):
        intrinsics_to_network(np.eye(3), np.eye(3)[None])
    with pytest.raises(ShapeError):
        intrinsics_to_original(np.eye(3)[None], np.eye(3)[None].repeat(2, 0))
