"""The loop closer: verification accepts true loops and rejects aliased ones, drives the pose
graph, restores from stored state, and cuts ATE on a long synthetic loop.

Most tests drive :class:`LoopCloser` with a small in-memory loop (windows, sequential
registration, a dict "store"), the same calls the streaming pipeline makes, on
ground truth from the synthetic worlds and the simulated predictor. The long
ATE test runs the real pipeline (:func:`da3stream.streaming.reconstruct`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from da3stream.alignment.points import sample_correspondences, unproject_depth
from da3stream.alignment.registration import register
from da3stream.alignment.sim3 import Sim3
from da3stream.alignment.umeyama import umeyama
from da3stream.config import load_config
from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
from da3stream.core.types import FrameBatch
from da3stream.alignment.graph_terms import component_roots as _component_roots
from da3stream.streaming.loops.closer import FrameData, LoopCloser, LoopEdge, WindowContext
from da3stream.streaming.loops.consistency import Verified as _Verified
from da3stream.streaming.loops.consistency import agreeing_group as _agreeing_group
from da3stream.synthetic.sequence import make_sequence

DEPTH_HW = (48, 64)


# ---------------------------------------------------------------------------- a minimal streaming loop
class MiniRun:
    """Windows -> simulated predictor -> sequential registration -> LoopCloser, with an in-memory store."""

    def __init__(self, seq, predictor, cfg, *, chunk=32, overlap=8, loop=True, seed=0):
        self.seq, self.pred, self.cfg = seq, predictor, cfg
        self.chunk, self.overlap = chunk, overlap
        self.image_hw = tuple(seq.ground_truth().image_hw)
        self.lc = LoopCloser(cfg.loop, cfg.align, predictor, seed=seed) if loop else None
        self.rows = {k: [] for k in ("depth", "conf", "chunk_from_cam", "intrinsics", "chunk_id", "index", "timestamp",
                                     "descriptor")}
        self.chunks = {k: [] for k in ("chunk_from_prev", "inlier_ratio", "residual", "status", "frame_stop", "n_new")}
        self.world_from_chunk: list[Sim3] = []
        self.loops: list[LoopEdge] = []
        self.edges: list[LoopEdge] = []
        self.reports: list[dict] = []
        self.prev = None
        n = seq.n_frames
        self.starts = list(range(0, max(1, n - overlap), chunk - overlap))

    def _images(self, k: int) -> np.ndarray:
        return np.zeros((k,) + DEPTH_HW + (3,), np.uint8)

    def fetch(self, rows) -> FrameData:
        rows = np.asarray(rows, np.int64)
        cat = {k: np.concatenate(v) for k, v in self.rows.items() if v}
        return FrameData(
            images=self._images(len(rows)), depth=cat["depth"][rows].astype(np.float32),
            conf=cat["conf"][rows].astype(np.float32), chunk_from_cam=cat["chunk_from_cam"][rows],
            intrinsics=cat["intrinsics"][rows], chunk_id=cat["chunk_id"][rows], indices=cat["index"][rows],
            timestamps=cat["timestamp"][rows],
        )

    def step(self, c: int, descriptor_hook=None) -> None:
        a = self.cfg.align
        s0 = self.starts[c]
        idx = np.arange(s0, min(s0 + self.chunk, self.seq.n_frames))
        ts = self.seq.timestamps[idx]
        p = self.pred.predict(FrameBatch(np.zeros((len(idx),) + self.image_hw + (3,), np.uint8), idx, ts))
        n_carry = 0 if c == 0 else self.overlap
        if c == 0:
            W = Sim3.identity()
            cfp, inl, res = np.full(8, np.nan), 1.0, 0.0
            if self.lc:
                self.lc.add_node(0, W)
        else:
            k = self.overlap
            prev = self.prev
            pa = unproject_depth(prev.depth[-k:], prev.intrinsics[-k:], prev.world_from_cam[-k:])
            pb = unproject_depth(p.depth[:k], p.intrinsics[:k], p.world_from_cam[:k])
            corr = sample_correspondences(pa, prev.conf[-k:], prev.depth[-k:], pb, p.conf[:k], max_points=a.max_points,
                                          conf_quantile=a.conf_quantile, rng=np.random.default_rng([0, c]))
            r = register(corr.dst, corr.src, corr.weight, corr.depth_dst, mode="sim3" if a.mode == "auto" else a.mode, kernel=a.kernel,
                         kernel_scale=a.kernel_scale, inlier_threshold=a.inlier_threshold, irls_iters=a.irls_iters,
                         min_points=a.min_points)
            W = self.world_from_chunk[c - 1] @ r.dst_from_src
            cfp, inl, res = r.dst_from_src.inverse().to_array(), r.inlier_ratio, r.residual_median
            if self.lc:
                self.lc.add_sequential_edge(c - 1, c, r.dst_from_src, inlier_ratio=inl, residual=res, gated=False)
        self.world_from_chunk.append(W)
        new = slice(n_carry, len(idx))
        n_rows = sum(len(v) for v in self.rows["index"])
        rows = np.arange(n_rows, n_rows + len(idx) - n_carry)
        if self.lc:
            desc = None if p.descriptors is None else p.descriptors[new]
            desc = desc if descriptor_hook is None else descriptor_hook(desc)
            ctx = WindowContext(
                chunk_id=c, rows=rows, indices=idx[new], timestamps=ts[new], descriptors=desc,
                world_from_cam=W.apply_pose(p.world_from_cam[new]), images=self._images(len(rows)),
                prediction=p.subset(new), fetch=self.fetch, world_from_chunk=list(self.world_from_chunk),
            )
            upd = self.lc.on_window(ctx)
            self.edges += upd.edges
            self.loops += [e for e in upd.edges if e.accepted]
            if upd.world_from_chunk is not None:
                assert len(upd.world_from_chunk) == c + 1
                self.world_from_chunk = list(upd.world_from_chunk)
                self.reports.append(upd.graph_report)
        # "commit": what the store keeps (depth and confidence as float16)
        for key, val in (("depth", p.depth[new].astype(np.float16)), ("conf", p.conf[new].astype(np.float16)),
                         ("chunk_from_cam", p.world_from_cam[new]), ("intrinsics", p.intrinsics[new]),
                         ("chunk_id", np.full(len(rows), c)), ("index", idx[new]), ("timestamp", ts[new]),
                         ("descriptor", None if p.descriptors is None else p.descriptors[new])):
            if val is None:
                continue
            self.rows[key].append(val)
        for key, val in (("chunk_from_prev", cfp), ("inlier_ratio", inl), ("residual", res),
                         ("status", 2 if c == 0 else 0), ("frame_stop", n_rows + len(rows)), ("n_new", len(rows))):
            self.chunks[key].append(val)
        self.prev = p

    def run(self, stop: int | None = None) -> "MiniRun":
        start = len(self.world_from_chunk)
        for c in range(start, len(self.starts) if stop is None else stop):
            self.step(c)
        return self

    # -------------------------------------------------------------- results
    def tables(self):
        chunk_rows = {k: np.asarray(v) if k != "chunk_from_prev" else np.stack(v) for k, v in self.chunks.items()}
        frame_rows = {k: np.concatenate(v) for k, v in self.rows.items() if k not in ("depth", "conf")}
        return chunk_rows, frame_rows

    def world_from_cam(self) -> tuple[np.ndarray, np.ndarray]:
        cid = np.concatenate(self.rows["chunk_id"])
        c2c = np.concatenate(self.rows["chunk_from_cam"])
        est = np.stack([self.world_from_chunk[c].apply_pose(m) for c, m in zip(cid, c2c)])
        return np.concatenate(self.rows["index"]), est

    def ate(self) -> float:
        idx, est = self.world_from_cam()
        gt = self.seq.ground_truth().world_from_cam[idx][:, :3, 3]
        T = umeyama(est[:, :3, 3], gt)
        return float(np.sqrt(np.mean(np.sum((gt - T.apply(est[:, :3, 3])) ** 2, axis=1))))


def _gt_loop_error(run: MiniRun, edge: LoopEdge) -> tuple[float, float]:
    """(distance between the two frames' true camera centres, metres; true heading difference, degrees)."""
    idx = np.concatenate(run.rows["index"])
    P = run.seq.ground_truth().world_from_cam
    Pi, Pj = P[idx[edge.frame_i]], P[idx[edge.frame_j]]
    dist = float(np.linalg.norm(Pi[:3, 3] - Pj[:3, 3]))
    ang = float(np.degrees(np.arccos(np.clip((np.trace(Pi[:3, :3].T @ Pj[:3, :3]) - 1) / 2, -1, 1))))
    return dist, ang


def _true_i_from_j(run: MiniRun, edge: LoopEdge) -> Sim3:
    """The exact chunk_i_from_chunk_j of the simulator's gauges."""
    def gauge(c):
        s0 = run.starts[c]
        idx = np.arange(s0, min(s0 + run.chunk, run.seq.n_frames))
        return run.pred.window_gauge(idx, run.image_hw)  # chunk_from_world
    return gauge(edge.chunk_i) @ gauge(edge.chunk_j).inverse()


@pytest.fixture(scope="module")
def robot_loop():
    """Two rectangular laps in a room, sped up: 480 frames, one lap every 8 s (so exclude 4 s)."""
    return make_sequence("robot_loop", n_frames=480)


ROBOT_EXCLUDE_S = 4.0


@pytest.fixture(scope="module")
def robot_pred(robot_loop):
    return SimulatedPredictor(robot_loop, depth_hw=DEPTH_HW, params=SimParams(), seed=1)


@pytest.fixture(scope="module")
def robot_run(robot_loop, robot_pred):
    """The robot loop with loop closure, run once for several tests."""
    return MiniRun(robot_loop, robot_pred, _cfg(exclude_seconds=ROBOT_EXCLUDE_S)).run()


@pytest.fixture(scope="module")
def corridor():
    """57 m of corridor made of identical 6 m segments, sped up: 360 frames over 12 s (4.75 m/s)."""
    return make_sequence("aliasing", n_frames=360)


CORRIDOR_EXCLUDE_S = 3.0  # about 14 m: candidates are look-alike segments 3 or more segments back


def _cfg(**loop):
    return load_config(None, {"loop": loop} if loop else None)


# ---------------------------------------------------------------------------- verification
def test_true_loops_are_accepted_accurate_and_reduce_drift(robot_loop, robot_pred, robot_run):
    with_loops = robot_run
    without = MiniRun(robot_loop, robot_pred, robot_run.cfg, loop=False).run()
    accepted = with_loops.loops
    assert len(accepted) >= 3
    for e in accepted:
        dist, ang = _gt_loop_error(with_loops, e)
        assert dist < 1.5 and ang < 30.0, (e, dist, ang)  # the same place
        # the measurement is right (as accurate as the sequential alignments here, a few degrees at most)
        true = _true_i_from_j(with_loops, e)
        assert abs(np.log(e.i_from_j.s / true.s)) < 0.05
        assert np.degrees(np.arccos(np.clip((np.trace(e.i_from_j.R.T @ true.R) - 1) / 2, -1, 1))) < 5.0
    assert with_loops.reports and all(r["applied"] for r in with_loops.reports)
    # the optimisation ran online, as soon as the first loop was accepted (not only at the end)
    first = min(e.chunk_j for e in accepted)
    assert first < len(with_loops.starts) - 1
    assert with_loops.ate() < 0.6 * without.ate()


def test_aliased_candidates_are_rejected_by_consistency(corridor):
    """Look-alike corridor segments: the loop window hallucinates "same place" (a confident, wrong
    transform that passes registration); the trajectory-consistency gate rejects every one."""
    params = SimParams(alias_hallucination=True)
    pred = SimulatedPredictor(corridor, depth_hw=DEPTH_HW, params=params, seed=2)
    cfg = _cfg(exclude_seconds=CORRIDOR_EXCLUDE_S, max_verifications=3)
    run = MiniRun(corridor, pred, cfg).run()
    verified = [e for e in run.edges if e.i_from_j is not None]
    assert verified, "aliasing produced no verified candidate: the test would prove nothing"
    for e in verified:
        dist, _ = _gt_loop_error(run, e)
        assert dist > 3.0  # a false candidate: different places
    assert not run.loops
    assert {e.reason for e in verified} <= {"inconsistent_translation", "inconsistent_rotation", "inconsistent_scale"}
    # The hallucinated transform is confident: both halves register well.
    assert min(e.inlier_ratio for e in verified) >= cfg.loop.min_inlier_ratio


def test_without_the_consistency_gate_the_false_loop_corrupts_the_map(corridor):
    """Control for the test above: the same candidates pass geometric checks, and accepting them hurts."""
    params = SimParams(alias_hallucination=True)
    pred = SimulatedPredictor(corridor, depth_hw=DEPTH_HW, params=params, seed=2)
    gates_off = _cfg(exclude_seconds=CORRIDOR_EXCLUDE_S, max_verifications=3, max_translation_rel=100.0,
                     max_translation_abs=1e6,
                     min_graph_weight=0.0)
    bad = MiniRun(corridor, pred, gates_off).run()
    good = MiniRun(corridor, pred, _cfg(exclude_seconds=CORRIDOR_EXCLUDE_S, max_verifications=3)).run()
    assert bad.loops
    assert bad.ate() > 3.0 * good.ate()


def test_planted_false_candidate_is_rejected(corridor):
    """A hand-planted aliased pair (same phase, two segments back), verified directly: rejected."""
    params = SimParams(alias_hallucination=True)
    pred = SimulatedPredictor(corridor, depth_hw=DEPTH_HW, params=params, seed=3)
    cfg = _cfg(exclude_seconds=2.0, top_k=1, max_verifications=1, verify_budget=10.0)  # earlier windows spend budget
    run = MiniRun(corridor, pred, cfg)
    c = len(run.starts) - 1
    run.run(stop=c)
    P = corridor.ground_truth().world_from_cam
    old_idx = np.concatenate(run.rows["index"])
    x_query = P[run.starts[c] + run.overlap, 0, 3]
    k = int((x_query - 3.0) // 6.0)  # as many 6 m segments back as the corridor allows
    assert k >= 3
    planted_row = int(np.argmin(np.abs(P[old_idx, 0, 3] - (x_query - 6.0 * k))))  # a look-alike place
    planted = np.concatenate(run.rows["descriptor"])[planted_row]

    def plant(desc):
        return np.repeat(planted[None], len(desc), axis=0)

    run.step(c, descriptor_hook=plant)
    last = [e for e in run.edges if e.chunk_j == c]
    verified = [e for e in last if e.i_from_j is not None]
    assert len(verified) == 1 and verified[0].frame_i == planted_row
    e = verified[0]
    assert _gt_loop_error(run, e)[0] > 10.0
    assert e.inlier_ratio >= cfg.loop.min_inlier_ratio  # confident...
    assert not e.accepted and e.reason == "inconsistent_translation", e  # ...but rejected
    assert not any(x.accepted for x in last)


# ---------------------------------------------------------------------------- pipeline contract
def test_without_descriptors_the_trajectory_proposes_true_loops(robot_loop):
    """Only the four required fields: candidates come from the estimated trajectory, are verified, and close loops."""
    pred = SimulatedPredictor(robot_loop, depth_hw=DEPTH_HW, params=SimParams(with_descriptors=False), seed=1)
    run = MiniRun(robot_loop, pred, _cfg(exclude_seconds=ROBOT_EXCLUDE_S)).run()
    without = MiniRun(robot_loop, pred, _cfg(exclude_seconds=ROBOT_EXCLUDE_S), loop=False).run()
    assert len(run.loops) >= 2 and all(np.isnan(e.similarity) for e in run.edges)
    for e in run.loops:
        dist, ang = _gt_loop_error(run, e)
        assert dist < 1.5 and ang < 30.0, (e, dist, ang)
    assert run.ate() < without.ate()


def test_no_descriptors_disables_with_one_log_line(robot_loop, caplog):
    pred = SimulatedPredictor(robot_loop, depth_hw=DEPTH_HW, params=SimParams(with_descriptors=False), seed=0)
    with caplog.at_level(logging.INFO, logger="da3stream.streaming.loops.closer"):
        run = MiniRun(robot_loop, pred, _cfg(exclude_seconds=ROBOT_EXCLUDE_S,
                                             candidates_from_trajectory=False)).run(stop=12)
    assert run.edges == [] and run.reports == []
    lines = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(lines) == 1


def test_restore_continues_identically(robot_loop, robot_pred, robot_run):
    """Kill after some loops were closed, rebuild from the stored tables, continue: same result."""
    pred, cfg, full = robot_pred, robot_run.cfg, robot_run
    k = max(e.chunk_j for e in full.loops[:2]) + 1  # loops were closed before the "kill"
    assert k < len(full.starts) - 2
    part = MiniRun(robot_loop, pred, cfg).run(stop=k)
    chunk_rows, frame_rows = part.tables()
    # round trip what the store keeps: Sim3 rows and float16 depth (already), loops as stored
    stored_world = [Sim3.from_array(W.to_array()) for W in part.world_from_chunk]
    resumed = MiniRun(robot_loop, pred, cfg)
    resumed.rows = part.rows
    resumed.chunks = part.chunks
    resumed.world_from_chunk = stored_world
    resumed.prev = part.prev
    from da3stream.streaming.loops.closer import NO_LOOP_WINDOW

    resumed.lc.restore(chunk_rows=chunk_rows, frame_rows=frame_rows, loops=list(part.loops),
                       world_from_chunk=stored_world,
                       n_verified=sum(e.reason not in NO_LOOP_WINDOW for e in part.edges))  # as the store counts
    resumed.run()
    tail_full = [e for e in full.edges if e.chunk_j >= k]
    tail_resumed = resumed.edges
    assert [(e.chunk_i, e.chunk_j, e.frame_i, e.frame_j, e.accepted, e.reason) for e in tail_full] == \
           [(e.chunk_i, e.chunk_j, e.frame_i, e.frame_j, e.accepted, e.reason) for e in tail_resumed]
    for a, b in zip(full.world_from_chunk, resumed.world_from_chunk):
        np.testing.assert_allclose(a.matrix(), b.matrix(), rtol=0, atol=1e-9 * max(1.0, np.abs(a.t).max()))


def test_restore_accepts_store_style_loop_records(robot_pred, robot_run):
    """Loops come back from the store as objects with the same attributes (i_from_j as a Sim3)."""
    from da3stream.io.store import LoopEdge as StoredLoop

    pred, cfg, run = robot_pred, robot_run.cfg, robot_run
    chunk_rows, frame_rows = run.tables()
    stored = [StoredLoop(chunk_i=e.chunk_i, chunk_j=e.chunk_j, frame_i=e.frame_i, frame_j=e.frame_j,
                         i_from_j=e.i_from_j, similarity=e.similarity, inlier_ratio=e.inlier_ratio,
                         residual=e.residual, accepted=True, reason="") for e in run.loops]
    lc = LoopCloser(cfg.loop, cfg.align, pred)
    lc.restore(chunk_rows=chunk_rows, frame_rows=frame_rows, loops=stored, world_from_chunk=run.world_from_chunk)
    assert len(lc._loops) == len(run.loops)
    assert len(lc._index) == sum(len(v) for v in run.rows["index"])


def test_component_roots_fix_one_node_per_segment():
    # segments {0,1,2} and {3,4}; then a loop joins them
    assert _component_roots(5, [(0, 1), (1, 2), (3, 4)]) == (0, 3)
    assert _component_roots(5, [(0, 1), (1, 2), (3, 4), (1, 4)]) == (0,)
    assert _component_roots(3, []) == (0, 1, 2)


def _v(pos, t, trans_err, travel, bound_abs=0.1):
    return _Verified(pos=pos, edge=None, world_from_j_loop=Sim3(1.0, np.eye(3), np.array(t, float)),
                     trans_err=trans_err, rot_err_deg=1.0, scale_ratio=1.0, bound_abs=bound_abs, travel=travel)


def test_consensus_needs_agreement_and_the_relaxed_bound():
    cfg = load_config().loop
    # 30% drift over 100 m: fails the 15% gate, within the 50% consensus bound, two candidates agree
    agree = [_v(0, [10.0, 0, 0], 30.0, 100.0), _v(1, [10.05, 0, 0], 30.2, 100.0)]
    assert len(_agreeing_group(agree, cfg)) == 2
    # they disagree with each other -> no group of 2
    apart = [_v(0, [10.0, 0, 0], 30.0, 100.0), _v(1, [14.0, 0, 0], 31.0, 100.0)]
    assert len(_agreeing_group(apart, cfg)) == 1
    # aliasing: disagreement equals the travelled distance -> beyond the relaxed bound, even if consistent
    alias = [_v(0, [10.0, 0, 0], 24.0, 24.0), _v(1, [10.0, 0, 0], 24.0, 24.5)]
    assert _agreeing_group(alias, cfg) == []


def test_edge_records_are_complete(robot_run):
    run = robot_run
    assert run.edges
    for e in run.edges:
        assert e.chunk_i < e.chunk_j and e.frame_i < e.frame_j
        assert (e.reason == "") == e.accepted
        if e.accepted:
            assert isinstance(e.i_from_j, Sim3) and np.isfinite(e.inlier_ratio) and np.isfinite(e.residual)
            assert e.scale == pytest.approx(e.i_from_j.s)
    assert dataclasses.is_dataclass(run.edges[0])


# ---------------------------------------------------------------------------- long sequence, real pipeline
def _ate(est_xyz: np.ndarray, gt_xyz: np.ndarray) -> float:
    T = umeyama(est_xyz, gt_xyz)
    return float(np.sqrt(np.mean(np.sum((gt_xyz - T.apply(est_xyz)) ** 2, axis=1))))


def test_long_loop_sequence_ate_drops_to_a_third(tmp_path):
    """>= 2,000 frames around a city block (two laps + 20 m), depth 48x64, seeded simulator noise.

    One pipeline run with loop closure. The trajectory without loop closure is what the pipeline
    produces with ``loop.enabled: false``: every window chained through its stored sequential
    alignment (``chunks/chunk_from_prev``, which loop closure never rewrites). Both trajectories are
    composed the same way from the stored per-frame ``chunk_from_cam``, so they differ only in
    ``world_from_chunk``.
    """
    from da3stream.io.store import RunStore
    from da3stream.streaming import pipeline

    seq = make_sequence("loop", n_frames=2400)
    assert seq.n_frames >= 2000
    pred = SimulatedPredictor(seq, depth_hw=DEPTH_HW, params=SimParams(), seed=0)
    h, w = seq.ground_truth().image_hw
    frames = ((np.zeros((h, w, 3), np.uint8), float(t)) for t in seq.timestamps)  # the simulator ignores pixels
    out = tmp_path / "run.zarr"
    summary = pipeline.reconstruct(frames, out, predictor=pred, config={
        "chunk_size": 40, "overlap": 8, "keyframes.enabled": False, "fusion.pixel_stride": 16})
    assert summary.n_loops >= 10
    store = RunStore.open(out)
    fr, ch = store.frames_table(), store.chunks_table()
    assert np.all(np.isfinite(ch["chunk_from_prev"][1:])) and np.all(ch["segment"] == 0)
    odometry = [Sim3.identity()]
    for row in ch["chunk_from_prev"][1:]:
        odometry.append(odometry[-1] @ Sim3.from_array(row).inverse())
    closed = store.world_from_chunk()
    gt = seq.ground_truth().world_from_cam[fr["index"]][:, :3, 3]
    cam = fr["chunk_from_cam"][:, :3, 3]
    cid = fr["chunk_id"]
    ate_off = _ate(np.stack([odometry[c].apply(p) for c, p in zip(cid, cam)]), gt)
    ate_on = _ate(np.stack([closed[c].apply(p) for c, p in zip(cid, cam)]), gt)
    assert ate_on <= ate_off / 3.0, (ate_on, ate_off)
    # the stored (cross-faded) frame poses tell the same story
    assert _ate(fr["world_from_cam"][:, :3, 3], gt) <= ate_off / 3.0


# ---------------------------------------------------------------------------- the synthetic suite
def _is_false(run: MiniRun, e: LoopEdge) -> bool:
    """A loop is false when its measurement is wrong: rotation off by > 10 degrees, or the implied
    position of the query camera off by more than a third of the distance it stands from the other."""
    true = _true_i_from_j(run, e)
    rot = np.degrees(np.arccos(np.clip((np.trace(e.i_from_j.R.T @ true.R) - 1) / 2, -1, 1)))
    cid = np.concatenate(run.rows["chunk_from_cam"])
    c_j = cid[e.frame_j][:3, 3]
    c_i = cid[e.frame_i][:3, 3]
    off = np.linalg.norm(e.i_from_j.apply(c_j) - true.apply(c_j))
    scale = max(np.linalg.norm(true.apply(c_j) - c_i), 1e-6)
    depth = np.median(np.concatenate(run.rows["depth"])[e.frame_i].astype(np.float32))
    return bool(rot > 10.0 or off > max(scale / 3.0, 0.3 * depth))


@pytest.mark.slow
@pytest.mark.parametrize("preset, n_frames, exclude_s, min_loops", [
    ("loop", 1200, 10.0, 20), ("figure8", 400, 5.0, 1), ("drone", 600, 5.0, 1), ("street", 600, 5.0, 1),
    ("demo", 300, 3.0, 1), ("scene_cut", 300, 3.0, 0), ("aliasing", 600, 5.0, 0), ("robot_loop", 1200, 10.0, 20),
])
def test_no_false_loops_across_the_synthetic_suite(preset, n_frames, exclude_s, min_loops):
    seq = make_sequence(preset, n_frames=n_frames)
    pred = SimulatedPredictor(seq, depth_hw=DEPTH_HW, params=SimParams(alias_hallucination=True), seed=7)
    run = MiniRun(seq, pred, _cfg(exclude_seconds=exclude_s, max_verifications=3)).run()
    false = [e for e in run.loops if _is_false(run, e)]
    assert not false, false
    assert len(run.loops) >= min_loops  # the revisiting paths do close loops
    for e in run.loops:
        assert _gt_loop_error(run, e)[0] < 3.0  # and only where the camera really came back


def test_graph_outlier_loop_is_dropped_and_the_rest_applied():
    """Two new loops in one window, one grossly wrong: the pose graph rejects it, keeps the other."""
    from scipy.spatial.transform import Rotation

    cfg = _cfg(min_graph_weight=0.5)
    lc = LoopCloser(cfg.loop, cfg.align, predictor=None)
    n = 12
    rng = np.random.default_rng(0)
    world_from_node = [Sim3(1.0, Rotation.from_rotvec([0, 0, 2 * np.pi * k / n]).as_matrix(),
                            [10 * np.cos(2 * np.pi * k / n), 10 * np.sin(2 * np.pi * k / n), 0]) for k in range(n)]
    lc.add_node(0, world_from_node[0])
    for j in range(1, n):
        meas = world_from_node[j - 1].inverse() @ world_from_node[j]
        noisy = Sim3(meas.s, Rotation.from_rotvec(rng.normal(0, 0.003, 3)).as_matrix() @ meas.R,
                     meas.t + rng.normal(0, 0.02, 3))
        lc.add_sequential_edge(j - 1, j, noisy, inlier_ratio=0.9, residual=0.02, gated=False)
        lc._unit[j] = 5.0
    lc._unit[0] = 5.0

    def loop(i, j, T):
        return LoopEdge(chunk_i=i, chunk_j=j, frame_i=i, frame_j=j, i_from_j=T, inlier_ratio=0.9, residual=0.02,
                        scale=T.s, accepted=True, reason="")

    good = loop(0, n - 1, world_from_node[0].inverse() @ world_from_node[n - 1])
    wrong = Sim3(1.0, np.eye(3), [30.0, 0.0, 0.0]) @ (world_from_node[2].inverse() @ world_from_node[n - 1])
    bad = loop(2, n - 1, wrong)
    ctx = WindowContext(chunk_id=n - 1, rows=np.zeros(0, np.int64), indices=np.zeros(0, np.int64),
                        timestamps=np.zeros(0), descriptors=None, world_from_cam=np.zeros((0, 4, 4)),
                        images=np.zeros((0,) + DEPTH_HW + (3,), np.uint8), prediction=None, fetch=None,
                        world_from_chunk=world_from_node)
    new_world, report, outliers = lc._optimise(ctx, [good, bad])
    assert outliers == {1}
    assert report["applied"] and report["removed_outliers"] == [(2, n - 1, 2, n - 1)]
    assert lc._loops == [good]
    err = max(np.linalg.norm(a.t - b.t) for a, b in zip(new_world, world_from_node))
    assert err < 0.5


@pytest.mark.parametrize("over, match", [
    ({"loop.graph_kernel": "tukey"}, "loop.graph_kernel"),
    ({"loop.index_backend": "faiss"}, "loop.index_backend"),
    ({"loop.window_half": 0}, "window_half"),
])
def test_bad_loop_config_raises_one_line_errors(over, match):
    from da3stream.errors import ConfigError

    # The loop config validates itself (LoopConfig.__post_init__): the error comes from loading it.
    with pytest.raises(ConfigError, match=match):
        cfg = load_config(None, over)
        LoopCloser(cfg.loop, cfg.align, predictor=None)
