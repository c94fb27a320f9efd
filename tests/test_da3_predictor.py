"""DA3Predictor: end-to-end parity with the official pipeline, pose conditioning, identity, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
network = pytest.importorskip("da3stream.core.network", reason="network module not available")

from da3stream.alignment.sim3 import Sim3, cam_from_world_3x4_to_world_from_cam  # noqa: E402
from da3stream.core import FrameBatch, Predictor, load_predictor, random_predictor  # noqa: E402
from da3stream.core.da3_predictor import (  # noqa: E402
    PoseConditioning,
    normalise_cam_from_world,
    resolve_dtype,
    robust_umeyama_sim3,
    umeyama_sim3,
)
from da3stream.errors import ConfigError, PredictionError, ShapeError  # noqa: E402

FP32_REL_TOL = 1e-4
"""Max relative error (max|d| / max|ref|) against the official fp32 pipeline."""
PROCESS_RES = 140
"""Tiny network inputs keep the end-to-end tests fast."""


def _frames(rng, n, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([127 + 90 * np.sin((xx + 5 * i) / 9.0) * np.cos(yy / 7.0),
                         127 + 90 * np.sin((xx + yy + 9 * i) / 13.0),
                         255.0 * (xx + 3 * i) / (w + 3 * n) * (yy / h)], -1)
        out.append(np.clip(base + rng.normal(0, 15, size=(h, w, 3)), 0, 255).astype(np.uint8))
    return np.stack(out)


def _batch(images):
    n = len(images)
    return FrameBatch(images, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.float64) / 30.0)


def _rel(ref, got):
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def _known_cameras(n, h, w, seed=3):
    """(N, 4, 4) world_from_cam on a non-collinear arc (metres) and (N, 3, 3) intrinsics at (h, w)."""
    rng = np.random.default_rng(seed)
    world_from_cam = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        th = 0.12 * i
        c, s = np.cos(th), np.sin(th)
        world_from_cam[i, :3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        world_from_cam[i, :3, 3] = [2.0 * np.sin(th), 0.05 * i + 0.02 * rng.normal(), 2.0 * (1 - np.cos(th))]
    K = np.array([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1.0]])
    return world_from_cam, np.tile(K, (n, 1, 1))


@pytest.fixture(scope="module")
def official():
    """(official net, our predictor loading its checkpoint) for the small preset."""
    oracle = pytest.importorskip("oracle")
    oracle.require_official()
    torch.manual_seed(0)
    net = oracle.build_official("small", seed=0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        oracle.write_official_checkpoint(net, "small", tmp)
        ours = load_predictor(tmp, device="cpu", dtype="float32", process_res=PROCESS_RES)
    return net, ours


@pytest.fixture(scope="module")
def rnd():
    return random_predictor("small", seed=0, device="cpu", process_res=PROCESS_RES)


# ---------------------------------------------------------------- end-to-end parity
@pytest.mark.parametrize("n, hw, method", [(4, (90, 130), "upper_bound_resize"),
                                           (2, (150, 100), "upper_bound_crop")])
def test_parity_with_official_pipeline(official, rng, n, hw, method):
    from official_input import official_inference

    net, ours = official
    ours.process_res_method = method
    images = _frames(rng, n, *hw)
    ref, raw = official_inference(net, images, process_res=PROCESS_RES, method=method)
    got = ours.predict(_batch(images))
    errors = {
        "depth": _rel(ref.depth, got.depth),
        "conf": _rel(ref.conf, got.conf),
        "world_from_cam": _rel(cam_from_world_3x4_to_world_from_cam(ref.extrinsics), got.world_from_cam),
        "intrinsics": _rel(ref.intrinsics, got.intrinsics),
        "rays": _rel(raw["ray"][0].numpy(), np.concatenate([got.rays[..., 3:], got.rays[..., :3]], -1)),  # official [dir, origin]
        "ray_conf": _rel(raw["ray_conf"][0].numpy(), got.ray_conf),
    }
    assert max(errors.values()) <= FP32_REL_TOL, errors
    assert got.depth.dtype == np.float32 and got.world_from_cam.dtype == np.float64
    assert ours.network_hw(hw) == got.depth.shape[1:]
    ours.process_res_method = "upper_bound_resize"


@pytest.mark.parametrize("n", [4, 10])
def test_pose_conditioned_parity_with_official_api(official, rng, n):
    """Known cameras: official api normalisation + Umeyama (RANSAC from 10 views) vs ours."""
    from official_input import official_inference

    net, ours = official
    h, w = 90, 120
    images = _frames(rng, n, h, w)
    world_from_cam, K = _known_cameras(n, h, w)
    ref, _ = official_inference(net, images, world_from_cam, K, process_res=PROCESS_RES)
    got = ours.predict(_batch(images), world_from_cam=world_from_cam, intrinsics=K)
    np.testing.assert_allclose(got.world_from_cam, world_from_cam, rtol=0, atol=1e-12)
    errors = {
        "depth": _rel(ref.depth, got.depth),
        "conf": _rel(ref.conf, got.conf),
        "world_from_cam": _rel(cam_from_world_3x4_to_world_from_cam(ref.extrinsics), got.world_from_cam),
        "intrinsics": _rel(ref.intrinsics, got.intrinsics),
    }
    assert max(errors.values()) <= FP32_REL_TOL, errors


def test_normalisation_matches_official_api(rng):
    from official_input import official_api

    api = official_api()
    for n in (1, 2, 5, 6):
        world_from_cam, _ = _known_cameras(n, 10, 10, seed=n)
        cam_from_world = np.linalg.inv(world_from_cam)
        ref = api.DepthAnything3._normalize_extrinsics(None, torch.from_numpy(cam_from_world)[None].float())
        got, _ = normalise_cam_from_world(cam_from_world)
        np.testing.assert_allclose(got, ref[0].double().numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- properties of pose conditioning
def test_conditioning_is_gauge_and_scale_equivariant(rnd, rng):
    """Known poses moved by a Sim(3) give the same network input: depth scales by s, poses are returned."""
    n, h, w = 4, 60, 80
    images = _frames(rng, n, h, w)
    world_from_cam, K = _known_cameras(n, h, w)
    a = rnd.predict(_batch(images), world_from_cam=world_from_cam, intrinsics=K)
    from scipy.spatial.transform import Rotation

    moved = Sim3(2.5, Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix(), np.array([1.0, -2.0, 0.5]))
    b = rnd.predict(_batch(images), world_from_cam=moved.apply_pose(world_from_cam), intrinsics=K)
    np.testing.assert_allclose(b.depth, 2.5 * a.depth, rtol=1e-4)
    np.testing.assert_allclose(b.conf, a.conf, rtol=1e-4)
    np.testing.assert_allclose(b.world_from_cam, moved.apply_pose(world_from_cam), atol=1e-12)
    # rays are in the caller's frame: moving the poses moves the ray origins by the same Sim(3)
    np.testing.assert_allclose(b.rays[..., :3], moved.apply(a.rays[..., :3].astype(np.float64)), rtol=1e-3, atol=1e-3)


def test_umeyama_recovers_similarity_and_handles_collinear(rng):
    from scipy.spatial.transform import Rotation

    src = rng.normal(size=(12, 3))
    R = Rotation.from_rotvec([0.1, 0.7, -0.3]).as_matrix()
    dst = 1.7 * src @ R.T + np.array([0.3, 0.2, -1.0])
    s, R_est, t = umeyama_sim3(src, dst)
    assert s == pytest.approx(1.7, rel=1e-10)
    np.testing.assert_allclose(R_est, R, atol=1e-10)
    line = np.outer(np.arange(5.0), [1.0, 0.5, 0.0])
    assert umeyama_sim3(line, 3.0 * line + 1.0)[0] == pytest.approx(3.0, rel=1e-10)
    with pytest.raises(PredictionError, match="no spread"):
        umeyama_sim3(np.zeros((4, 3)), np.ones((4, 3)))
    # RANSAC variant ignores a gross outlier
    dst_bad = dst.copy()
    dst_bad[3] += 50.0
    s_r, _, _ = robust_umeyama_sim3(src, dst_bad, PoseConditioning(ransac_min_views=10))
    assert s_r == pytest.approx(1.7, rel=1e-6)


# ---------------------------------------------------------------- identity, dtypes, shapes
def test_random_predictor_identity(rnd):
    assert isinstance(rnd, Predictor)
    assert rnd.model_id == "random:small:seed0"
    assert rnd.weights_random is True
    assert rnd.preset == "small" and rnd.device == "cpu" and rnd.dtype == torch.float32
    same = random_predictor("small", seed=0, device="cpu")
    other = random_predictor("small", seed=1, device="cpu")
    assert same.weights_sha256 == rnd.weights_sha256 != other.weights_sha256
    info = rnd.describe()
    assert info["weights_random"] is True and info["model_id"] == "random:small:seed0"


def test_prediction_contract_and_intrinsics_maps(rnd, rng):
    h, w = 72, 100
    images = _frames(rng, 3, h, w)
    pred = rnd.predict(_batch(images))
    pred.validate(3)
    hh, ww = rnd.network_hw((h, w))
    assert pred.depth.shape == (3, hh, ww) and pred.conf.shape == (3, hh, ww)
    assert pred.rays.shape == (3, hh // 14 * 8, ww // 14 * 8, 6)
    assert pred.ray_conf.shape == pred.rays.shape[:3]
    np.testing.assert_allclose(np.linalg.norm(pred.descriptors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.world_from_cam[:, 3], np.tile([0, 0, 0, 1.0], (3, 1)))
    K_orig = rnd.to_original_intrinsics(pred.intrinsics, (h, w))
    np.testing.assert_allclose(rnd.to_network_intrinsics(K_orig, (h, w)), pred.intrinsics, rtol=1e-12)
    # a centred depth-grid principal point stays centred in the original frame
    np.testing.assert_allclose(K_orig[:, 0, 2], w / 2, rtol=1e-9)
    np.testing.assert_allclose(K_orig[:, 1, 2], h / 2, rtol=1e-9)
    single = rnd.to_original_intrinsics(pred.intrinsics[0], (h, w))
    np.testing.assert_allclose(single, K_orig[0])


def test_head_chunk_does_not_change_outputs(rng):
    images = _frames(rng, 3, 42, 56)
    pred = random_predictor("small", seed=0, device="cpu", process_res=56, head_chunk=1)
    a = pred.predict(_batch(images))
    pred.net.head_chunk = 8
    b = pred.predict(_batch(images))
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-5)
    np.testing.assert_allclose(a.rays, b.rays, rtol=1e-5, atol=1e-6)


def test_bf16_weights_run_on_cpu_and_stay_close(rng):
    images = _frames(rng, 2, 42, 56)
    fp32 = random_predictor("small", seed=0, device="cpu", dtype="float32", process_res=56).predict(_batch(images))
    pred = random_predictor("small", seed=0, device="cpu", dtype="bfloat16", process_res=56)
    assert next(pred.net.parameters()).dtype == torch.bfloat16
    bf16 = pred.predict(_batch(images))
    assert bf16.depth.dtype == np.float32
    assert np.all(np.isfinite(bf16.depth))
    # bf16 keeps ~3 significant digits; the net compounds it over 12 blocks
    assert _rel(np.log(fp32.depth), np.log(bf16.depth)) < 0.1


def test_dtype_and_device_resolution():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ConfigError, match="device"):
        random_predictor("small", device="tpu")
    with pytest.raises(ConfigError, match="preset"):
        random_predictor("tiny")


def test_bad_arguments(rnd, rng):
    images = _frames(rng, 2, 40, 50)
    world_from_cam, K = _known_cameras(2, 40, 50)
    with pytest.raises(ConfigError, match="both"):
        rnd.predict(_batch(images), intrinsics=K)
    with pytest.raises(ShapeError, match="world_from_cam"):
        rnd.predict(_batch(images), world_from_cam=world_from_cam[:1], intrinsics=K)
    skewed = world_from_cam.copy()
    skewed[:, :3, :3] *= 2.0
    with pytest.raises(ShapeError, match="rigid"):
        rnd.predict(_batch(images), world_from_cam=skewed, intrinsics=K)
    with pytest.raises(ShapeError, match="FrameBatch"):
        rnd.predict(images)
    with pytest.raises(ConfigError, match="process_res_method"):
        random_predictor("small", device="cpu", process_res_method="nearest")
