"""The simulated DA3 predictor: contract, exactness, error statistics, determinism, gauge, descriptors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from da3stream.synthetic.predictor import GroundTruth, SimParams, SimulatedPredictor, da3_depth_hw, scale_intrinsics
from da3stream.core.types import FrameBatch, Predictor
from da3stream.errors import ConfigError, PredictionError
from da3stream.synthetic import intrinsics_from_fov, look_at, make_sequence
from da3stream.alignment.umeyama import umeyama
from da3stream.synthetic.calibration import calibrate, prediction_points

IMG_HW = (48, 64)


def _plane_gt(n_frames: int = 30, plane_z: float = 6.0) -> GroundTruth:
    """Cameras sliding along x, looking down +z at the plane z = plane_z (analytic depth, no rendering)."""
    P = np.tile(np.eye(4), (n_frames, 1, 1))
    P[:, 0, 3] = np.linspace(0.0, 3.0, n_frames)
    P[:, 1, 3] = 0.2 * np.sin(np.linspace(0, 3, n_frames))
    K = intrinsics_from_fov(IMG_HW[1], IMG_HW[0], 70.0)

    def depth_fn(idx, K_grid, hw):
        # camera axes equal world axes and cameras sit at z = 0: the z-depth to the plane is plane_z everywhere
        return np.full((len(idx), hw[0], hw[1]), plane_z, dtype=np.float32)

    return GroundTruth(P, K, IMG_HW, depth_fn)


def _batch(idx, hw=IMG_HW) -> FrameBatch:
    idx = np.asarray(idx, dtype=np.int64)
    return FrameBatch(np.zeros((idx.size, hw[0], hw[1], 3), np.uint8), idx, idx / 30.0)


@pytest.fixture(scope="module")
def demo_seq():
    return make_sequence("demo", n_frames=120, width=80, height=60)


def _assert_same(a, b):
    for name in ("depth", "conf", "world_from_cam", "intrinsics", "descriptors", "rays", "ray_conf", "sky"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_prediction_contract(demo_seq):
    pred_obj = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=SimParams(with_metric_depth=True), seed=3)
    assert isinstance(pred_obj, Predictor) and pred_obj.simulated
    out = pred_obj.predict(demo_seq.batch(np.arange(10, 22)))
    out.validate(12)
    assert out.depth.shape == (12, 30, 40) and out.depth.dtype == np.float32
    assert out.conf.dtype == np.float32 and out.conf.min() >= 1.0
    assert out.world_from_cam.dtype == np.float64 and out.intrinsics.shape == (12, 3, 3)
    assert out.rays.shape == (12, 30, 40, 6) and out.ray_conf.shape == (12, 30, 40)
    assert out.descriptors.shape == (12, 256) and out.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.descriptors, axis=1), 1.0, atol=1e-5)
    assert out.metric_depth.shape == (12, 30, 40) and out.sky.dtype == bool
    R = out.world_from_cam[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    assert pred_obj.describe()["params"]["gauge"] == "random"


def test_default_grid_is_da3_like():
    assert da3_depth_hw((240, 320)) == (378, 504)
    assert da3_depth_hw((576, 1024)) == (280, 504)
    gt = _plane_gt()
    out = SimulatedPredictor(gt, params=SimParams(with_rays=False)).predict(_batch([0, 1]))
    assert out.depth.shape == (2, 378, 504)


def test_exact_params_return_ground_truth(demo_seq):
    idx = np.arange(5, 17)
    out = SimulatedPredictor(demo_seq, depth_hw=demo_seq.image_hw, params=SimParams.exact()).predict(demo_seq.batch(idx))
    np.testing.assert_array_equal(out.depth, demo_seq.depths(idx))
    np.testing.assert_array_equal(out.world_from_cam, demo_seq.world_from_cam[idx])
    np.testing.assert_array_equal(out.intrinsics, np.broadcast_to(demo_seq.intrinsics, (12, 3, 3)))
    # on another grid: the ground truth is re-cast with the scaled intrinsics
    out2 = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=SimParams.exact()).predict(demo_seq.batch(idx))
    K2 = scale_intrinsics(demo_seq.intrinsics, demo_seq.image_hw, (30, 40))
    np.testing.assert_array_equal(out2.depth, demo_seq.gt_depth(idx, K2, (30, 40)))
    # a plain ground-truth provider (no rendering) works the same way
    gt = _plane_gt()
    out3 = SimulatedPredictor(gt, depth_hw=IMG_HW, params=SimParams.exact()).predict(_batch([3, 4, 5]))
    np.testing.assert_array_equal(out3.depth, 6.0)
    np.testing.assert_array_equal(out3.world_from_cam, gt.world_from_cam[3:6])


def test_depth_error_statistics_match_parameters():
    a, b, c = 0.02, 0.004, 0.5
    params = SimParams.exact(depth_noise_rel=a, depth_noise_rel_per_m=b, depth_noise_correlated=c,
                             depth_noise_cells=3)
    hw = (120, 160)
    for plane_z in (2.0, 10.0):
        gt = _plane_gt(plane_z=plane_z)
        out = SimulatedPredictor(gt, depth_hw=hw, params=params, seed=1).predict(_batch(np.arange(30), hw))
        log_err = np.log(out.depth / plane_z)
        sigma = a + b * plane_z
        assert np.std(log_err) == pytest.approx(sigma, rel=0.1)
        assert abs(np.mean(log_err)) < 0.2 * sigma  # unbiased (no per-frame scale jitter here)
        # the smooth field barely changes between neighbours: their differences carry the per-pixel part only
        d = np.diff(log_err, axis=2)
        assert np.var(d) == pytest.approx(2 * (1 - c) * sigma**2, rel=0.15)
    # switching the smooth part off makes neighbours independent
    out = SimulatedPredictor(_plane_gt(), depth_hw=hw, params=params.replace(depth_noise_correlated=0.0),
                             seed=1).predict(_batch(np.arange(10), hw))
    le = np.log(out.depth / 6.0)
    assert np.var(np.diff(le, axis=2)) == pytest.approx(2 * np.var(le), rel=0.05)


def test_confidence_tracks_error_regions(demo_seq):
    params = SimParams(gauge="identity", blob_rate=3.0)
    out = SimulatedPredictor(demo_seq, depth_hw=demo_seq.image_hw, params=params, seed=0).predict(
        demo_seq.batch(np.arange(30, 40)))
    rel = np.abs(np.log(out.depth / demo_seq.depths(np.arange(30, 40))))
    low = out.conf < np.quantile(out.conf, 0.2)
    high = out.conf > np.quantile(out.conf, 0.8)
    assert np.median(rel[low]) > 2.0 * np.median(rel[high])
    h, w = demo_seq.image_hw
    border = np.zeros((h, w), bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    assert np.median(out.conf[:, border]) < np.median(out.conf[:, ~border])


def test_determinism_across_instances_order_and_processes(demo_seq):
    a = SimulatedPredictor(demo_seq, depth_hw=(30, 40), seed=7)
    b = SimulatedPredictor(demo_seq, depth_hw=(30, 40), seed=7)
    w1, w2 = demo_seq.batch(np.arange(0, 12)), demo_seq.batch(np.arange(8, 20))
    a1, a2 = a.predict(w1), a.predict(w2)
    b2, b1 = b.predict(w2), b.predict(w1)  # other call order
    _assert_same(a1, b1)
    _assert_same(a2, b2)
    _assert_same(a1, a.predict(w1))  # repeated call
    assert not np.array_equal(a1.depth[8:], a2.depth[:4])  # the same frame differs between windows
    c = SimulatedPredictor(demo_seq, depth_hw=(30, 40), seed=8).predict(w1)
    assert not np.array_equal(a1.depth, c.depth)
    # another process produces bit-identical output
    code = (
        "import hashlib, numpy as np\n"
        "from da3stream.synthetic.predictor import SimulatedPredictor, GroundTruth\n"
        "from da3stream.core.types import FrameBatch\n"
        "from da3stream.synthetic import intrinsics_from_fov\n"
        "P = np.tile(np.eye(4), (20, 1, 1)); P[:, 0, 3] = np.linspace(0, 2, 20)\n"
        "gt = GroundTruth(P, intrinsics_from_fov(64, 48, 70.0), (48, 64),\n"
        "                 lambda i, K, hw: np.full((len(i),) + tuple(hw), 5.0, np.float32))\n"
        "p = SimulatedPredictor(gt, depth_hw=(24, 32), seed=5).predict(\n"
        "    FrameBatch(np.zeros((8, 48, 64, 3), np.uint8), np.arange(4, 12), np.arange(8) / 30.0))\n"
        "h = hashlib.sha256()\n"
        "for x in (p.depth, p.conf, p.world_from_cam, p.intrinsics, p.descriptors, p.rays): h.update(x.tobytes())\n"
        "print(h.hexdigest())\n"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(2)}
    here = {}
    exec(code.replace("print(h.hexdigest())", "here['d'] = h.hexdigest()"), {"here": here})
    assert digests == {here["d"]}


def _points(pred, frames, use_rays):
    if not use_rays:
        pred = pred.subset(slice(None))
        pred.rays = None
    return prediction_points(pred, frames)


@pytest.mark.parametrize("use_rays", [False, True])
def test_window_gauge_is_an_exact_sim3(demo_seq, use_rays):
    params = SimParams.exact(gauge="random")
    sim = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=params, seed=2)
    ia, ib = np.arange(0, 12), np.arange(6, 18)
    pa, pb = sim.predict(demo_seq.batch(ia)), sim.predict(demo_seq.batch(ib))
    src = _points(pb, np.arange(0, 6), use_rays)  # frames 6..11 in window B
    dst = _points(pa, np.arange(6, 12), use_rays)  # the same frames in window A
    a_from_b = umeyama(src, dst)
    resid = np.linalg.norm(a_from_b.apply(src) - dst, axis=1) / np.linalg.norm(dst - dst.mean(0), axis=1).mean()
    assert resid.max() < 1e-4  # float32 depth
    ga, gb = sim.window_gauge(ia), sim.window_gauge(ib)
    expected = ga @ gb.inverse()
    assert a_from_b.s == pytest.approx(expected.s, rel=1e-5)
    np.testing.assert_allclose(a_from_b.R, expected.R, atol=1e-5)
    assert 0.3 <= ga.s <= 3.0 and 0.3 <= gb.s <= 3.0 and abs(np.log(ga.s / gb.s)) > 1e-3
    # chunk_from_world maps the true poses onto the predicted ones
    np.testing.assert_allclose(ga.apply_pose(demo_seq.world_from_cam[ia]), pa.world_from_cam, atol=1e-9)


def test_first_frame_gauge_starts_at_identity(demo_seq):
    sim = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=SimParams(gauge="first_frame"), seed=0)
    idx = np.arange(20, 32)
    out = sim.predict(demo_seq.batch(idx))
    np.testing.assert_array_equal(out.world_from_cam[0], np.eye(4))
    g = sim.window_gauge(idx)
    np.testing.assert_allclose(g.apply_pose(demo_seq.world_from_cam[idx[:1]])[0], np.eye(4), atol=0.05)


def _rot_err_deg(R_est, R_true):
    c = (np.trace(np.swapaxes(R_est, -1, -2) @ R_true, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_poses_are_noisier_than_geometry(demo_seq):
    sim = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=SimParams(), seed=0)
    head, geom, trans = [], [], []
    for s0 in range(0, 96, 16):
        idx = np.arange(s0, s0 + 24)
        out = sim.predict(demo_seq.batch(idx))
        g = sim.window_gauge(idx)
        true_chunk = g.apply_pose(demo_seq.world_from_cam[idx])
        head.append(_rot_err_deg(out.world_from_cam[:, :3, :3], true_chunk[:, :3, :3]))
        pix = np.array([[0, 0, 1], [39, 0, 1], [0, 29, 1], [39, 29, 1]], dtype=float)  # (u, v, 1) corners
        ray_R = []
        for i in range(len(idx)):
            A = pix @ np.linalg.inv(out.intrinsics[i]).T  # rows K^-1 p
            B = out.rays[i, [0, 0, 29, 29], [0, 39, 0, 39], 3:].astype(float)  # rows R K^-1 p
            ray_R.append(np.linalg.lstsq(A, B, rcond=None)[0].T)
        ray_R = np.stack(ray_R)
        geom.append(_rot_err_deg(ray_R, true_chunk[:, :3, :3]))
        c = demo_seq.world_from_cam[idx, :3, 3]
        extent = np.linalg.norm(c.max(0) - c.min(0))
        trans.append(np.linalg.norm(out.world_from_cam[:, :3, 3] - true_chunk[:, :3, 3], axis=1) / g.s / extent)
    head, geom, trans = map(np.concatenate, (head, geom, trans))
    assert 0.5 < np.mean(head) < 3.0  # DA3-like camera-head rotation error
    assert np.mean(geom) < 0.25 * np.mean(head)  # depth + rays are locally far more consistent
    assert 0.005 < np.median(trans) < 0.08  # a few percent of the window extent


def test_calibration_points_beat_pose_chaining():
    """The default error model: aligning windows on their points is accurate, chaining camera poses drifts.

    The engine's own aligner is tested elsewhere; this pins the simulator's
    calibration with a small stand-in (see docs/SIMULATOR.md for the numbers).
    """
    seq = make_sequence("demo")
    gt = seq.ground_truth()
    res = [calibrate(gt, SimulatedPredictor(gt, depth_hw=(60, 80), params=SimParams(), seed=seed),
                     path_length_m=seq.path_length_m) for seed in range(3)]
    points, poses, poses_ds = (np.array([r[f"ate_{m}_m"] for r in res]) for m in ("points", "poses", "poses_depth_scale"))
    assert np.all(points < 0.005 * seq.path_length_m)  # a fraction of a percent of the path
    assert np.median(poses / points) > 3.0  # camera poses alone drift clearly
    assert np.median(poses_ds / points) > 1.5  # even with the scale taken from depth


def test_descriptors_follow_place_and_aliasing():
    # positions along a corridor-like line; the "world" folds x with period 6 m
    n = 40
    P = np.stack([look_at((x, 0.0, 1.6), (x + 5.0, 0.0, 1.6)) for x in np.linspace(0.0, 39.0, n)])

    def fold(c):
        r = 6.0 / (2 * np.pi)
        ph = 2 * np.pi * c[:, 0] / 6.0
        return np.column_stack([r * np.cos(ph), r * np.sin(ph), c[:, 1], c[:, 2]])

    def descs(aliasing, appearance_fn=fold):
        gt = GroundTruth(P, intrinsics_from_fov(64, 48, 70.0), IMG_HW,
                         lambda i, K, hw: np.ones((len(i),) + tuple(hw), np.float32), appearance_fn=appearance_fn)
        sim = SimulatedPredictor(gt, depth_hw=(6, 8), params=SimParams(desc_aliasing=aliasing), seed=0)
        return sim.predict(_batch(np.arange(n))).descriptors

    x = np.linspace(0.0, 39.0, n)
    look_alike = (np.abs(np.mod(x[:, None] - x[None] + 0.5, 6.0) - 0.5) < 0.3) & (np.abs(x[:, None] - x[None]) > 5)
    for alias, lo, hi in ((0.9, 0.75, 1.0), (0.0, -1.0, 0.4)):
        D = descs(alias)
        np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, atol=1e-5)
        S = D @ D.T
        assert np.all(np.diag(S, 1) > 0.75) and np.median(np.diag(S, 1)) > 0.82  # 1 m apart, same heading
        assert lo < S[look_alike].min() and S[look_alike].max() <= hi
    # without a folding map, far places are dissimilar
    S = descs(0.9, appearance_fn=None) @ descs(0.9, appearance_fn=None).T
    far = np.abs(x[:, None] - x[None]) > 8
    assert np.quantile(S[far], 0.99) < 0.4
    # turning around at the same place changes the descriptor
    P2 = np.stack([look_at((0.0, 0.0, 1.6), (5.0, 0.0, 1.6)), look_at((0.0, 0.0, 1.6), (-5.0, 0.0, 1.6))])
    gt = GroundTruth(P2, intrinsics_from_fov(64, 48, 70.0), IMG_HW, lambda i, K, hw: np.ones((len(i),) + tuple(hw), np.float32))
    D2 = SimulatedPredictor(gt, depth_hw=(6, 8)).predict(_batch([0, 1])).descriptors
    assert D2[0] @ D2[1] < 0.3


def test_rays_match_depth_unprojection_and_coarse_grid(demo_seq):
    exact = SimulatedPredictor(demo_seq, depth_hw=(30, 40), params=SimParams.exact(gauge="random"), seed=1)
    out = exact.predict(demo_seq.batch(np.arange(4)))
    np.testing.assert_allclose(_points(out, np.arange(4), True), _points(out, np.arange(4), False), rtol=0, atol=1e-4)
    coarse = SimulatedPredictor(demo_seq, depth_hw=(28, 42), params=SimParams(ray_grid_ratio=8 / 14), seed=1)
    out = coarse.predict(demo_seq.batch(np.arange(4)))
    assert out.rays.shape == (4, 16, 24, 6) and out.ray_conf.shape == (4, 16, 24)
    out.validate(4)


def test_metric_depth_and_sky():
    seq = make_sequence("street", n_frames=4, width=64, height=48)
    out = SimulatedPredictor(seq, depth_hw=seq.image_hw, params=SimParams(with_metric_depth=True, gauge="random"),
                             seed=0).predict(seq.batch(np.arange(4)))
    gt = seq.depths(np.arange(4))
    assert out.sky.any() and not out.sky.all()
    np.testing.assert_array_equal(out.sky, seq.skies(np.arange(4)))
    ground = ~out.sky
    assert np.median(np.abs(out.metric_depth[ground] / gt[ground] - 1)) < 0.1  # metres, a few percent off
    assert np.median(out.conf[out.sky]) < np.median(out.conf[ground])


def test_bad_input_raises_one_line_errors(demo_seq):
    sim = SimulatedPredictor(demo_seq, depth_hw=(30, 40))
    with pytest.raises(PredictionError, match="outside the ground truth"):
        sim.predict(_batch([118, 119, 120], demo_seq.image_hw))
    with pytest.raises(PredictionError, match="aspect"):
        sim.predict(_batch([0, 1], (60, 60)))
    with pytest.raises(ConfigError, match="gauge"):
        SimParams(gauge="sideways")
    with pytest.raises(ConfigError, match="desc_aliasing"):
        SimParams(desc_aliasing=1.5)
    with pytest.raises(ConfigError, match="GroundTruth or have ground_truth"):
        SimulatedPredictor(object())


def test_alias_hallucination_merges_look_alike_runs():
    seq = make_sequence("aliasing", n_frames=600, width=32, height=24)
    x = seq.world_from_cam[:, 0, 3]
    a = 100
    b = int(np.argmin(np.abs(x - (x[a] + 12.0))))  # two 6 m segments further: a look-alike place
    idx = np.concatenate([np.arange(a, a + 4), np.arange(b, b + 4)])
    for hallucinate in (False, True):
        sim = SimulatedPredictor(seq, depth_hw=(12, 16), params=SimParams.exact(alias_hallucination=hallucinate))
        out = sim.predict(seq.batch(idx))
        gap = np.linalg.norm(out.world_from_cam[4, :3, 3] - out.world_from_cam[0, :3, 3])
        true_gap = np.linalg.norm(seq.world_from_cam[b, :3, 3] - seq.world_from_cam[a, :3, 3])
        if hallucinate:
            assert gap < 0.1 * true_gap  # "the same place": a confident, wrong answer
        else:
            assert gap == pytest.approx(true_gap, rel=1e-9)
    # contiguous windows are never touched
    sim = SimulatedPredictor(seq, depth_hw=(12, 16), params=SimParams.exact(alias_hallucination=True))
    np.testing.assert_array_equal(sim.predict(seq.batch(np.arange(a, a + 80))).world_from_cam,
                                  seq.world_from_cam[a:a + 80])
