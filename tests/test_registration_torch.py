"""Torch registration (the GPU code path, run on the CPU) equals the numpy one within float64 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from da3stream.alignment.registration import _batched_fits, register
from da3stream.alignment.registration_torch import fit_sim3_batched, register_torch, resolve_align_device
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.errors import AlignmentError, ConfigError

F64_TOL = 1e-9  # float64 estimates from different summation orders and a different (but exact) rotation solver


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
def test_torch_on_cpu_equals_numpy(mode, kernel):
    rng = np.random.default_rng([7, len(mode), len(kernel)])
    for trial in range(3):
        T = random_sim3(rng, rigid=(mode == "se3"))
        dst, src, w, depth = make_pairs(rng, T, m=int(rng.integers(80, 3000)), outlier_frac=[0.0, 0.2, 0.35][trial])
        init = Sim3(T.s * 1.02, T.R, T.t + 0.05) if (mode == "scale" or trial == 1) else None
        kw = dict(mode=mode, kernel=kernel, init=init, seed=trial, irls_iters=[10, 3, 25][trial])
        a = register(dst, src, w, depth, **kw)
        b = register_torch(dst, src, w, depth, device="cpu", **kw)
        assert_same_result(a, b)


def test_torch_accepts_tensors_and_drops_invalid_rows_like_numpy():
    rng = np.random.default_rng(3)
    dst, src, w, depth = make_pairs(rng, random_sim3(rng), m=500, outlier_frac=0.1)
    dst[:7] = np.nan
    w[7:12] = 0.0
    depth[12:15] = -1.0
    a = register(dst, src, w, depth)
    b = register_torch(torch.from_numpy(dst), torch.from_numpy(src), torch.from_numpy(w), torch.from_numpy(depth))
    assert a.n_points == b.n_points == 500 - 15
    assert_same_result(a, b)


@pytest.mark.parametrize("case", ["collinear", "identical", "too_few", "zero_weights", "all_nan", "scale_without_init"])
def test_degenerate_inputs_raise_the_same_one_line_error(case):
    rng = np.random.default_rng(11)
    m = 500
    src = rng.normal(size=(m, 3))
    dst = src + [0.0, 0.0, 5.0]
    w, depth = np.ones(m), np.full(m, 5.0)
    kw = {}
    if case == "collinear":
        src = np.outer(rng.uniform(-1, 1, m), [1.0, 2.0, 0.5])
        dst = src * 2.0 + [0.0, 0.0, 5.0]
    elif case == "identical":
        src = np.tile([1.0, 2.0, 3.0], (m, 1))
        dst = src + 1.0
    elif case == "too_few":
        src, dst, w, depth = src[:10], dst[:10], w[:10], depth[:10]
    elif case == "zero_weights":
        w = np.zeros(m)
    elif case == "all_nan":
        dst = np.full((m, 3), np.nan)
    else:
        kw = {"mode": "scale"}
    with pytest.raises(AlignmentError) as ref:
        register(dst, src, w, depth, **kw)
    with pytest.raises(AlignmentError) as got:
        register_torch(dst, src, w, depth, **kw)
    assert str(got.value) == str(ref.value) and "\n" not in str(got.value)


def test_batched_fit_matches_umeyama_and_flags_degenerate_sets():
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
    s, R, t, ok = (x.numpy() for x in fit_sim3_batched(torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(w),
                                                      "sim3"))
    s_np, R_np, t_np, ok_np = _batched_fits(src, dst, w, "sim3", None, 1e-9)
    np.testing.assert_array_equal(ok, ok_np)
    assert not ok[4] and not ok[5] and ok.sum() == B - 2
    np.testing.assert_allclose(s[ok], s_np[ok], rtol=1e-10)
    np.testing.assert_allclose(R[ok], R_np[ok], atol=1e-10)
    np.testing.assert_allclose(t[ok], t_np[ok], atol=1e-9)
    for b in (0, 3, 17):
        ref = umeyama(src[b], dst[b], w[b])
        assert abs(s[b] - ref.s) < 1e-10 * ref.s and np.abs(R[b] - ref.R).max() < 1e-10
    assert np.allclose(np.linalg.det(R[ok]), 1.0) and np.allclose(R[ok] @ np.swapaxes(R[ok], 1, 2), np.eye(3))


def test_irls_loop_never_reads_a_device_value_back(monkeypatch):
    """One transfer of the result per call: no .item(), no bool(tensor), one .cpu() (what a GPU would sync on)."""
    rng = np.random.default_rng(2)
    dst, src, w, depth = make_pairs(rng, random_sim3(rng), m=800, outlier_frac=0.3)
    counts = {"item": 0, "bool": 0, "cpu": 0, "tolist": 0, "numpy": 0}
    originals = {name: getattr(torch.Tensor, attr) for name, attr in
                 (("item", "item"), ("bool", "__bool__"), ("cpu", "cpu"), ("tolist", "tolist"), ("numpy", "numpy"))}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)
        return wrapper

    for name, attr in (("item", "item"), ("bool", "__bool__"), ("cpu", "cpu"), ("tolist", "tolist"), ("numpy", "numpy")):
        monkeypatch.setattr(torch.Tensor, attr, counting(name))
    result = register_torch(dst, src, w, depth, irls_iters=30, tol=0.0)
    monkeypatch.undo()
    assert result.iterations == 30
    assert counts == {"item": 0, "bool": 0, "cpu": 1, "tolist": 0, "numpy": 1}, counts


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
def test_cuda_equals_numpy():
    rng = np.random.default_rng(9)
    for mode in ("sim3", "se3", "scale"):
        T = random_sim3(rng, rigid=(mode == "se3"))
        dst, src, w, depth = make_pairs(rng, T, m=4000, outlier_frac=0.3)
        init = Sim3(T.s, T.R, T.t) if mode == "scale" else None
        assert_same_result(register(dst, src, w, depth, mode=mode, init=init),
                           register_torch(dst, src, w, depth, mode=mode, init=init, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_aligns_on_cuda_like_on_cpu(tmp_path):
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.io.store.run_store import RunStore
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
