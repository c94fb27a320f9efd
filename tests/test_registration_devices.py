"""Registration on torch tensors (CPU and CUDA) equals registration on numpy arrays; batched fits; align.device.

These moved here from the removed torch twin's tests (registration has one, numpy, implementation; see
``da3stream.alignment.registration``): its inputs may be tensors on any device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from da3stream.alignment.registration import _batched_fits, register, resolve_align_device
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError, ConfigError
from tests.test_registration import degenerate_inputs

F64_TOL = 1e-9  # float64 estimates (the same computation after a tensor round trip)


def random_sim3(rng, rigid: bool = False) -> Sim3:
    s = 1.0 if rigid else float(np.exp(rng.uniform(-2.0, 2.0)))
    return Sim3(s, Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix(), rng.normal(size=3) * 3)


def make_pairs(rng, dst_from_src: Sim3, m: int, outlier_frac: float, noise: float = 0.003):
    dst_true = np.c_[rng.uniform(-5, 5, (m, 2)), rng.uniform(2, 30, m)]
    depth = dst_true[:, 2].copy()
    src = dst_from_src.inverse().apply(dst_true)
    dst = dst_true + rng.normal(size=(m, 3)) * noise * depth[:, None]
    out = rng.random(m) < outlier_frac
    dst[out] += rng.normal(size=(int(out.sum()), 3)) * depth[out, None] * 0.5
    return dst, src, rng.uniform(1.0, 3.0, m), depth


def assert_same_result(a, b) -> None:
    Ta, Tb = a.dst_from_src, b.dst_from_src
    assert abs(Ta.s - Tb.s) <= F64_TOL * Ta.s
    np.testing.assert_allclose(Tb.R, Ta.R, rtol=0, atol=F64_TOL)
    np.testing.assert_allclose(Tb.t, Ta.t, rtol=0, atol=F64_TOL * (1 + np.abs(Ta.t).max()))
    assert abs(a.residual_median - b.residual_median) <= F64_TOL
    assert a.inlier_ratio == b.inlier_ratio and a.n_points == b.n_points
    assert a.iterations == b.iterations and a.converged == b.converged


@pytest.mark.parametrize("mode", ["sim3", "se3", "scale"])
@pytest.mark.parametrize("kernel", ["huber", "cauchy", "tukey"])
def test_tensor_inputs_equal_numpy(mode, kernel):
    rng = np.random.default_rng([7, len(mode), len(kernel)])
    for trial in range(3):
        T = random_sim3(rng, rigid=(mode == "se3"))
        dst, src, w, depth = make_pairs(rng, T, m=int(rng.integers(80, 3000)), outlier_frac=[0.0, 0.2, 0.35][trial])
        init = Sim3(T.s * 1.02, T.R, T.t + 0.05) if (mode == "scale" or trial == 1) else None
        kw = dict(mode=mode, kernel=kernel, init=init, seed=trial, irls_iters=[10, 3, 25][trial])
        a = register(dst, src, w, depth, **kw)
        b = register(*(torch.from_numpy(x) for x in (dst, src, w, depth)), **kw)
        assert_same_result(a, b)


def test_tensors_with_invalid_rows_are_dropped_like_numpy():
    rng = np.random.default_rng(3)
    dst, src, w, depth = make_pairs(rng, random_sim3(rng), m=500, outlier_frac=0.1)
    dst[:7] = np.nan
    w[7:12] = 0.0
    depth[12:15] = -1.0
    a = register(dst, src, w, depth)
    b = register(torch.from_numpy(dst), torch.from_numpy(src), torch.from_numpy(w), torch.from_numpy(depth))
    assert a.n_points == b.n_points == 500 - 15
    assert_same_result(a, b)


@pytest.mark.parametrize("case", ["collinear", "identical", "too_few", "zero_weights", "all_nan", "scale_without_init"])
def test_degenerate_inputs_raise_the_same_one_line_error(case):
    rng = np.random.default_rng(11)
    kw = {"mode": "scale"} if case == "scale_without_init" else {}
    dst, src, w, depth = degenerate_inputs(rng, "zero_weights" if case == "scale_without_init" else case)
    if case == "scale_without_init":
        w = np.ones_like(w)  # valid pairs: the error is the missing init of scale mode
    with pytest.raises(AlignmentError) as ref:
        register(dst, src, w, depth, **kw)
    with pytest.raises(AlignmentError) as got:
        register(*(torch.from_numpy(np.ascontiguousarray(x)) for x in (dst, src, w, depth)), **kw)
    assert str(got.value) == str(ref.value) and "\n" not in str(got.value)


def test_batched_fits_match_umeyama_and_flag_degenerate_sets():
    rng = np.random.default_rng(5)
    B, M = 40, 6
    src = rng.normal(size=(B, M, 3))
    dst = np.empty_like(src)
    truth = [random_sim3(rng) for _ in range(B)]
    for b, T in enumerate(truth):
        dst[b] = T.apply(src[b]) + rng.normal(size=(M, 3)) * 0.05
    dst[3] = src[3] * [1.0, 1.0, -1.0]  # a mirrored pairing: the best proper rotation, positive scale
    src[4] = np.outer(rng.uniform(-1, 1, M), [1.0, -2.0, 0.3])  # collinear
    src[5] = 1.0  # coincident
    w = rng.uniform(0.5, 2.0, (B, M))
    s, R, t, ok = _batched_fits(src, dst, w, "sim3", None, 1e-9)
    assert not ok[4] and not ok[5] and ok.sum() == B - 2
    for b in np.flatnonzero(ok):
        ref = umeyama(src[b], dst[b], w[b])
        np.testing.assert_allclose(s[b], ref.s, rtol=1e-10)
        np.testing.assert_allclose(R[b], ref.R, atol=1e-10)
        np.testing.assert_allclose(t[b], ref.t, atol=1e-9)
    for b in (0, 3, 17):
        ref = umeyama(src[b], dst[b], w[b])
        assert abs(s[b] - ref.s) < 1e-10 * ref.s and np.abs(R[b] - ref.R).max() < 1e-10
    assert np.allclose(np.linalg.det(R[ok]), 1.0) and np.allclose(R[ok] @ np.swapaxes(R[ok], 1, 2), np.eye(3))


def test_align_device_resolution():
    assert resolve_align_device("cpu", "cuda:0") == "cpu"
    assert resolve_align_device("auto", "cpu") == "cpu"
    assert resolve_align_device("auto", None) == "cpu"
    if not torch.cuda.is_available():
        assert resolve_align_device("auto", "cuda") == "cpu"
        with pytest.raises(ConfigError, match="align.device"):
            resolve_align_device("cuda", "cpu")
    with pytest.raises(ConfigError, match="align.device"):
        resolve_align_device("tpu", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_equal_numpy():
    rng = np.random.default_rng(9)
    for mode in ("sim3", "se3", "scale"):
        T = random_sim3(rng, rigid=(mode == "se3"))
        dst, src, w, depth = make_pairs(rng, T, m=4000, outlier_frac=0.3)
        init = Sim3(T.s, T.R, T.t) if mode == "scale" else None
        assert_same_result(register(dst, src, w, depth, mode=mode, init=init),
                           register(*(torch.from_numpy(x).cuda() for x in (dst, src, w, depth)), mode=mode, init=init))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_aligns_on_cuda_like_on_cpu(tmp_path):
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.io.store import RunStore
    from da3stream.streaming.pipeline import reconstruct
    from da3stream.synthetic import make_sequence

    seq = make_sequence("demo", n_frames=60, width=64, height=48)
    cfg = {"chunk_size": 16, "overlap": 4, "loop.enabled": False, "keyframes.enabled": False}
    poses = {}
    for device in ("cpu", "cuda"):
        pred = SimulatedPredictor(seq, depth_hw=(24, 32), params=SimParams(), seed=0)
        reconstruct(list(zip(seq.images(), seq.timestamps.tolist())), tmp_path / f"{device}.zarr", predictor=pred,
                    config={**cfg, "align.device": device})
        poses[device] = RunStore.open(tmp_path / f"{device}.zarr", "r").frames_table()["world_from_cam"]
    np.testing.assert_allclose(poses["cuda"], poses["cpu"], atol=1e-6)


def test_registration_benchmark_reports_each_size():
    import argparse

    from da3stream.bench import registration as bench

    out = bench.run(argparse.Namespace(points=[120, 300], repeats=1, outliers=0.3, seed=0))
    assert [row["points"] for row in out["sizes"]] == [120, 300]
    assert all(row["numpy_ms"] > 0 for row in out["sizes"])
