"""Predict-ahead (streaming/overlap.py): the same run, the same predictor calls, errors propagated, real overlap."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.io.store import RunStore
from da3stream.streaming.overlap import SerializedPredictor
from da3stream.streaming.pipeline import reconstruct
from da3stream.synthetic import make_sequence

HW = (48, 64)
DEPTH_HW = (24, 32)
CFG = {"chunk_size": 16, "overlap": 4, "loop.enabled": False, "keyframes.enabled": False, "fusion.pixel_stride": 8}
LOOP_CFG = {"chunk_size": 16, "overlap": 4, "loop.enabled": True, "loop.exclude_seconds": 1.5,
            "keyframes.enabled": True, "fusion.pixel_stride": 8}


@pytest.fixture(scope="module")
def seq():
    return make_sequence("demo", n_frames=60, width=HW[1], height=HW[0])


@pytest.fixture(scope="module")
def loop_seq():
    return make_sequence("robot_loop", n_frames=120, width=HW[1], height=HW[0])


def sim(seq) -> SimulatedPredictor:
    return SimulatedPredictor(seq, depth_hw=DEPTH_HW, params=SimParams(), seed=0)


def frames_of(seq) -> list:
    """A re-iterable source; the simulator reads ground truth by frame index."""
    return [(np.zeros(HW + (3,), np.uint8), float(t)) for t in seq.timestamps]


class Recording:
    """Records every call (first and last frame index, thread, start/end time); ``hook`` may spoil or raise."""

    def __init__(self, inner, hook=None, delay_s: float = 0.0) -> None:
        self.inner, self.hook, self.delay_s = inner, hook, delay_s
        self.model_id = inner.model_id
        self.calls: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.spans: list[tuple[float, float]] = []
        self._active = 0
        self.max_active = 0

    def predict(self, batch):
        t0 = time.perf_counter()
        self._active += 1
        self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append((int(batch.indices[0]), int(batch.indices[-1])))
            self.threads.add(threading.current_thread().name)
            pred = self.inner.predict(batch)
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.hook is not None:
                pred = self.hook(batch, len(self.calls), pred) or pred
            return pred
        finally:
            self._active -= 1
            self.spans.append((t0, time.perf_counter()))


def assert_identical_stores(a_path, b_path) -> None:
    """Every committed array of two stores is bit-identical (frames, depth, chunks, map, source log, loops)."""
    a, b = RunStore.open(a_path, "r"), RunStore.open(b_path, "r")
    for table in ("frames_table", "chunks_table", "source_table", "loops_table"):
        ta, tb = getattr(a, table)(), getattr(b, table)()
        assert ta.keys() == tb.keys(), table
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{table}[{k}]")
    rows = slice(None)
    np.testing.assert_array_equal(a.depth(rows), b.depth(rows))
    for world in (False, True):
        pa, pb = a.map_points(world=world), b.map_points(world=world)
        for x, y in zip(pa, pb):
            np.testing.assert_array_equal(x, y)
    assert a.status == b.status == "complete"


def run(seq, out, cfg, ahead: int, hook=None, delay_s: float = 0.0, images: bool = False):
    pred = Recording(sim(seq), hook, delay_s)
    source = list(zip(seq.images(), seq.timestamps.tolist())) if images else frames_of(seq)
    summary = reconstruct(source, out, predictor=pred, config={**cfg, "predict_ahead": ahead})
    return pred, summary


def test_predict_ahead_gives_the_serial_run_bit_for_bit_with_loop_closure(tmp_path, loop_seq):
    serial, s0 = run(loop_seq, tmp_path / "serial.zarr", LOOP_CFG, 0, images=True)
    ahead, s1 = run(loop_seq, tmp_path / "ahead.zarr", LOOP_CFG, 1, images=True)
    assert s0.n_loops > 0, "the scenario must close loops (the loop closer predicts from the main thread)"
    assert_identical_stores(tmp_path / "serial.zarr", tmp_path / "ahead.zarr")
    assert (s1.n_frames, s1.n_chunks, s1.n_loops) == (s0.n_frames, s0.n_chunks, s0.n_loops)
    assert sorted(ahead.calls) == sorted(serial.calls)  # loop windows may interleave with the worker's
    assert any(name.startswith("da3stream-predict") for name in ahead.threads)
    assert ahead.max_active == 1, "two forwards ran at once"


def spoil_window_with(frame: int):
    def hook(batch, call, pred):
        if frame in batch.indices:
            pred.world_from_cam[0, 0, 3] = np.nan  # rejected: the next window starts a new segment
        return pred
    return hook


def oom_above(limit: int, from_call: int):
    import torch

    def hook(batch, call, pred):
        if call >= from_call and len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return hook


@pytest.mark.parametrize("fault", ["rejected", "out_of_memory"])
def test_faults_take_the_serial_path_with_the_same_predictor_calls(tmp_path, seq, fault):
    hook = spoil_window_with(30) if fault == "rejected" else oom_above(12, from_call=3)
    serial, s0 = run(seq, tmp_path / "serial.zarr", CFG, 0, hook)
    ahead, s1 = run(seq, tmp_path / "ahead.zarr", CFG, 1, hook)
    assert ahead.calls == serial.calls  # nothing predicted speculatively, nothing dropped
    if fault == "rejected":
        assert s1.n_segments == 2 and s1.n_skipped == 12
    else:
        assert s1.chunk_size == 10 and s1.timings["oom_retries"] == 1
    assert_identical_stores(tmp_path / "serial.zarr", tmp_path / "ahead.zarr")


def test_worker_exception_propagates_and_the_worker_stops(tmp_path, seq):
    class Broken(RuntimeError):
        pass

    def hook(batch, call, pred):
        if call == 3:
            raise Broken("the network failed")

    with pytest.raises(Broken, match="the network failed"):
        run(seq, tmp_path / "x.zarr", CFG, 1, hook)
    st = RunStore.open(tmp_path / "x.zarr", "r")
    assert st.n_chunks == 2 and st.status == "failed"  # the windows before the failure are committed
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("da3stream-predict")]


OVERLAP_WAIT_S = 60.0
"""How long the commit of window k waits for window k+1's prediction to start (a serial run never starts it)."""


def test_the_next_window_is_predicted_while_the_previous_one_is_processed(tmp_path, seq):
    """Causal, not timed: each commit waits until the next window's forward has begun.

    With predict-ahead the worker starts window k+1 while window k is aligned and written, so
    the wait ends at once; a serial pipeline could only start k+1 after the commit returns, and
    the wait would run out. Load on the machine slows both sides but cannot change the order.
    """
    started: list[threading.Event] = [threading.Event() for _ in range(64)]
    waited: list[bool] = []

    class Marking(Recording):
        def predict(self, batch):
            started[len(self.calls)].set()
            return super().predict(batch)

    def progress(_):
        k = len(waited)
        if k + 1 < n_windows:
            waited.append(started[k + 1].wait(OVERLAP_WAIT_S))
        else:
            waited.append(True)

    probe = Recording(sim(seq))
    reconstruct(frames_of(seq), tmp_path / "probe.zarr", predictor=probe, config={**CFG, "predict_ahead": 0})
    n_windows = len(probe.calls)
    pred = Marking(sim(seq))
    reconstruct(frames_of(seq), tmp_path / "o.zarr", predictor=pred, config={**CFG, "predict_ahead": 1},
                progress=progress)
    assert n_windows >= 4 and len(pred.calls) == n_windows and len(waited) == n_windows
    assert all(waited), "a window's commit came before the next window's forward began"


def test_serialized_predictor_runs_one_call_at_a_time_and_forwards_attributes():
    state = {"active": 0, "max": 0}

    class Inner:
        device = "cpu"

        def predict(self, batch, **kw):
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
            time.sleep(0.01)
            state["active"] -= 1
            return batch, kw

    p = SerializedPredictor(Inner())
    threads = [threading.Thread(target=lambda: [p.predict(i, k=i) for i in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["max"] == 1
    assert p.device == "cpu" and p.predict(1, k=2) == (1, {"k": 2})
    with pytest.raises(AttributeError):
        p.no_such_attribute


# --------------------------------------------------------------------------- the memory planner


class PlannerStub:
    """What the planner reads from a DA3 predictor, without a network."""

    def __init__(self, preset: str, process_res: int = 504, dtype: str = "bfloat16", device: str = "cuda") -> None:
        self.preset, self.process_res, self.dtype, self.device = preset, process_res, dtype, device
        self.process_res_method = "upper_bound_resize"

    def network_hw(self, image_hw):
        from da3stream.core.preprocess import network_hw

        return network_hw(image_hw, self.process_res, self.process_res_method)


def _peak_gib(preset, views, res, image_hw=(720, 1280)):
    from da3stream.core.memory_model import estimate_peak_bytes
    from da3stream.core.preprocess import network_hw

    h, w = network_hw(image_hw, res)
    return estimate_peak_bytes(preset, views, h, w, "bfloat16", "cuda") / 2**30


@pytest.mark.parametrize("preset", ["small", "large", "giant"])
@pytest.mark.parametrize("budget_gib", [4.0, 8.0])
def test_planned_window_is_the_largest_that_fits_the_budget(preset, budget_gib):
    from da3stream.config import load_config
    from da3stream.streaming.planner import plan_window

    cfg = load_config({"gpu_mem_gb": budget_gib})
    plan = plan_window(cfg, PlannerStub(preset), (720, 1280))
    assert plan.process_res is None and cfg.min_chunk_size <= plan.chunk_size <= cfg.max_chunk_size
    assert _peak_gib(preset, plan.chunk_size, 504) <= budget_gib
    if plan.chunk_size < cfg.max_chunk_size:
        assert _peak_gib(preset, plan.chunk_size + 1, 504) > budget_gib


def test_planner_lowers_the_resolution_when_min_chunk_size_does_not_fit():
    from da3stream.config import load_config
    from da3stream.streaming.planner import plan_window

    budget = (_peak_gib("large", 16, 378) + _peak_gib("large", 16, 392)) / 2  # 16 views fit at 378 px, not at 392
    cfg = load_config({"gpu_mem_gb": budget})
    plan = plan_window(cfg, PlannerStub("large"), (720, 1280))
    assert plan.process_res == 378 and plan.chunk_size >= cfg.min_chunk_size
    assert _peak_gib("large", plan.chunk_size, 378) <= budget
    floor = plan_window(load_config({"gpu_mem_gb": budget, "min_process_res": 448}), PlannerStub("large"), (720, 1280))
    assert floor.process_res == 448 and floor.chunk_size == cfg.min_chunk_size  # never below min_process_res
    user = plan_window(load_config({"gpu_mem_gb": budget, "chunk_size": 40}), PlannerStub("large"), (720, 1280))
    assert (user.chunk_size, user.process_res) == (40, None)  # a user-set chunk_size is kept, and the resolution


def test_lowered_resolution_is_used_recorded_and_kept_on_resume(tmp_path):
    from da3stream.core.da3_predictor import random_predictor
    from da3stream.core.memory_model import CPU_PLANNING_CONSTANTS, estimate_peak_bytes
    from da3stream.core.preprocess import network_hw

    seq = make_sequence("demo", n_frames=24, width=160, height=96)
    source = list(zip(seq.images(), seq.timestamps.tolist()))

    def peak(res):  # what the planner sizes CPU windows with
        h, w = network_hw((96, 160), res)
        return estimate_peak_bytes("small", 8, h, w, "float32", "cpu", constants=CPU_PLANNING_CONSTANTS)

    budget = (peak(112) + peak(126)) / 2 / 2**30  # 8 views fit at 112 px, not at 126
    cfg = {"gpu_mem_gb": budget, "min_chunk_size": 8, "overlap": 2, "min_process_res": 84, "loop.enabled": False,
           "keyframes.enabled": False, "source.max_frames": 12}
    class StopsAfterOneWindow:
        """The DA3 predictor, interrupted (Ctrl-C) at its second window."""

        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        process_res = property(lambda self: self.inner.process_res,
                               lambda self, v: setattr(self.inner, "process_res", v))

        def predict(self, batch):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.inner.predict(batch)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    pred = random_predictor("small", process_res=140, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        reconstruct(source, tmp_path / "r.zarr", predictor=StopsAfterOneWindow(pred), config=cfg)
    st = RunStore.open(tmp_path / "r.zarr", "r")
    assert st.attrs_get("planned_process_res") == 112 and pred.process_res == 112 and st.n_chunks == 1
    assert tuple(st.depth_hw) == network_hw((96, 160), 112)
    fresh = random_predictor("small", process_res=140, device="cpu")
    s = reconstruct(source, tmp_path / "r.zarr", predictor=fresh, config=cfg, resume=True)
    assert fresh.process_res == 112 and s.status == "complete" and s.n_frames == 12 and 8 <= s.chunk_size < 12


# --------------------------------------------------------------------------- device-to-host copies


def test_batch_to_host_on_cpu_is_the_plain_copy():
    import torch

    from da3stream.core.host_copy import batch_to_host

    a = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    b = torch.arange(6, dtype=torch.bfloat16).reshape(1, 6)
    to_numpy = batch_to_host([a, None, b])
    np.testing.assert_array_equal(to_numpy(a), a[0].numpy())
    assert to_numpy(None) is None and to_numpy(b).dtype == np.float32
    other = torch.ones(2, 2)
    np.testing.assert_array_equal(to_numpy(other), np.ones(2))  # not in the batch: copied on demand


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_batch_to_host_on_cuda_uses_pinned_buffers():
    import torch

    from da3stream.core.host_copy import batch_to_host

    xs = [torch.randn(3, 64, 64, device="cuda", dtype=dt) for dt in (torch.float32, torch.bfloat16)]
    to_numpy = batch_to_host(xs)
    for x in xs:
        got = to_numpy(x)
        np.testing.assert_array_equal(got, x[0].float().cpu().numpy())
        assert torch.from_numpy(got).is_pinned()
