"""Pose priors: TUM loading, nearest-timestamp lookup, time bases, extrinsics, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.errors import ConfigError, ExportError, ShapeError
from da3stream.io.sources.priors import PosePrior, load_pose_prior
from da3stream.io.export.trajectory import write_tum


def random_poses(rng, n):
    """(n, 4, 4) random rigid world_from_cam."""
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, :3, :3] = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    P[:, :3, 3] = rng.normal(size=(n, 3))
    return P


def test_load_round_trips_a_tum_file(tmp_path, rng):
    t = np.sort(rng.uniform(0, 10, 20))
    P = random_poses(rng, 20)
    path = tmp_path / "prior.tum"
    write_tum(path, t, P)
    ts, world_from_cam = load_pose_prior(path)
    np.testing.assert_array_equal(ts, t)
    np.testing.assert_allclose(world_from_cam, P, atol=1e-12)
    prior = PosePrior.load(path)
    assert len(prior) == 20 and prior.describe()["origin"] == str(path)


def test_lookup_takes_the_nearest_pose_within_max_diff(rng):
    t = np.array([0.0, 0.1, 0.2, 0.35, 0.5])
    P = random_poses(rng, 5)
    prior = PosePrior(t, P)
    q = np.array([0.0, 0.02, 0.04, 0.08, 0.26, 0.33, 0.5, 0.52, 0.60, -0.01, -0.05])
    world_from_cam, found = prior.lookup(q, max_diff=0.03)
    want_idx = [0, 0, None, 1, None, 3, 4, 4, None, 0, None]
    np.testing.assert_array_equal(found, [i is not None for i in want_idx])
    for row, i in enumerate(want_idx):
        if i is None:
            assert np.isnan(world_from_cam[row]).all()
        else:
            np.testing.assert_array_equal(world_from_cam[row], P[i])
    assert world_from_cam.shape == (11, 4, 4) and world_from_cam.dtype == np.float64
    # an exact tie takes the earlier pose
    tie, ok = PosePrior(np.array([0.0, 1.0, 2.0]), P[:3]).lookup(np.array([0.5]), max_diff=0.5)
    assert ok[0]
    np.testing.assert_array_equal(tie[0], P[0])


def test_lookup_matches_brute_force(rng):
    t = np.sort(rng.uniform(0, 5, 50))
    prior = PosePrior(t, random_poses(rng, 50))
    q = rng.uniform(-0.5, 5.5, 300)
    world_from_cam, found = prior.lookup(q, max_diff=0.02)
    d = np.abs(q[:, None] - t[None])
    nearest = d.argmin(1)
    np.testing.assert_array_equal(found, d.min(1) <= 0.02)
    np.testing.assert_array_equal(world_from_cam[found], prior.world_from_cam[nearest[found]])


def test_unsorted_input_is_sorted_and_duplicates_rejected(rng):
    P = random_poses(rng, 3)
    prior = PosePrior(np.array([2.0, 0.0, 1.0]), P)
    np.testing.assert_array_equal(prior.timestamps, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(prior.world_from_cam[0], P[1])
    with pytest.raises(ConfigError, match="share the timestamp 1.0"):
        PosePrior(np.array([1.0, 1.0, 2.0]), P)


def test_time_offset_for_bag_sources(rng):
    absolute = PosePrior(1.7e9 + np.arange(10) * 0.1, random_poses(rng, 10))
    relative = PosePrior(np.arange(10) * 0.1, random_poses(rng, 10))
    origin = 1.7e9 + 0.05
    assert absolute.time_offset_for(origin) == origin
    assert relative.time_offset_for(origin) == 0.0
    assert relative.time_offset_for(0.0) == 0.0
    _, found = absolute.lookup(np.array([0.05, 0.15]), 0.001, time_offset=origin)
    assert found.all()


def test_body_from_cam_extrinsic_is_applied(rng):
    world_from_body = random_poses(rng, 4)
    body_from_cam = random_poses(rng, 1)[0]
    prior = PosePrior(np.arange(4.0), world_from_body, body_from_cam=body_from_cam)
    np.testing.assert_allclose(prior.world_from_cam, world_from_body @ body_from_cam, atol=1e-12)
    assert prior.describe()["body_from_cam"] == body_from_cam.tolist()


def test_values_are_immutable(rng):
    prior = PosePrior(np.arange(3.0), random_poses(rng, 3))
    with pytest.raises(ValueError):
        prior.world_from_cam[0, 0, 0] = 2.0
    with pytest.raises(ValueError):
        prior.timestamps[0] = 2.0


def test_errors(tmp_path, rng):
    P = random_poses(rng, 3)
    with pytest.raises(ConfigError, match="no poses"):
        PosePrior(np.zeros(0), np.zeros((0, 4, 4)))
    with pytest.raises(ConfigError, match=r"world_from_cam: expected shape \(3, 4, 4\)"):
        PosePrior(np.arange(3.0), P[:2])
    bent = P.copy()
    bent[1, :3, :3] *= 1.1
    with pytest.raises(ConfigError, match="pose 1 is not a rigid transform"):
        PosePrior(np.arange(3.0), bent)
    with pytest.raises(ConfigError, match="NaN or inf"):
        PosePrior(np.array([0.0, np.nan, 1.0]), P)
    prior = PosePrior(np.arange(3.0), P)
    with pytest.raises(ConfigError, match="max_diff"):
        prior.lookup(np.zeros(2), max_diff=-1.0)
    with pytest.raises(ShapeError):
        prior.lookup(np.zeros((2, 2)), max_diff=0.1)
    bad = tmp_path / "bad.tum"
    bad.write_text("0.0 1 2 3 0 0 0\n")
    with pytest.raises(ExportError, match=r"bad\.tum:1: expected 8 numbers"):
        load_pose_prior(bad)
    with pytest.raises(ExportError, match="file not found"):
        load_pose_prior(tmp_path / "missing.tum")


def test_conditioning_kwargs(rng):
    from da3stream.io.sources.priors import conditioning_kwargs

    t = np.arange(5) * 0.1
    P = random_poses(rng, 5)
    prior = PosePrior(t, P)
    K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
    kw = conditioning_kwargs(prior, t[1:4] + 0.001, K, max_diff=0.01)
    np.testing.assert_array_equal(kw["world_from_cam"], P[1:4])
    assert kw["intrinsics"].shape == (3, 3, 3) and np.all(kw["intrinsics"] == K)
    assert conditioning_kwargs(prior, np.array([0.1, 0.9]), K, max_diff=0.01) == {}  # one frame uncovered
    assert conditioning_kwargs(None, t, None, max_diff=0.01) == {}
    with pytest.raises(ConfigError, match="pose priors need known intrinsics"):
        conditioning_kwargs(prior, t, None, max_diff=0.01)


def test_pose_prior_and_calibration_condition_the_da3_predictor(tmp_path, rng):
    """The hand-off the pipeline makes: source intrinsics + prior poses -> DA3 predict -> the caller's cameras back."""
    pytest.importorskip("torch")
    from da3stream.core import FrameBatch, random_predictor
    from da3stream.io.sources.priors import conditioning_kwargs
    from da3stream.io.sources import open_source

    n, h, w = 4, 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.clip(np.stack([xx * 3 + 9 * i, yy * 4, (xx + yy) * 2], -1), 0, 255).astype(np.uint8) for i in range(n)]
    world_from_cam = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        th = 0.15 * i
        world_from_cam[i, :3, :3] = Rotation.from_rotvec([0.0, th, 0.0]).as_matrix()
        world_from_cam[i, :3, 3] = [2.0 * np.sin(th), 0.05 * i, 2.0 * (1 - np.cos(th))]
    tum = tmp_path / "prior.tum"
    write_tum(tum, np.arange(n) / 30.0, world_from_cam)
    prior = PosePrior.load(tum)
    with open_source(frames, calibration="70,70,40,30", max_side=40) as src:  # for the 80x60 frames, delivered at 40x30
        got = list(src)
        K = src.intrinsics
    np.testing.assert_allclose(K, [[35.0, 0, 20.0], [0, 35.0, 15.0], [0, 0, 1]])
    batch = FrameBatch(np.stack([f.image for f in got]), np.array([f.index for f in got]), np.array([f.timestamp for f in got]))
    kw = conditioning_kwargs(prior, batch.timestamps, K, max_diff=0.005)
    assert set(kw) == {"world_from_cam", "intrinsics"}
    predictor = random_predictor("small", seed=0, device="cpu", dtype="float32", process_res=56)
    pred = predictor.predict(batch, **kw)
    np.testing.assert_allclose(pred.world_from_cam, world_from_cam, atol=1e-9)
    np.testing.assert_allclose(predictor.to_original_intrinsics(pred.intrinsics, (30, 40)), np.broadcast_to(K, (n, 3, 3)),
                               rtol=1e-9)
