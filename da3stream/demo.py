"""The embedded demo: render a synthetic world, reconstruct it, score it against ground truth.

``run_stream.py --demo`` renders a built-in synthetic sequence to an actual
video file, runs the whole pipeline on that video with the SIMULATED predictor
(a model of DA3's error modes driven by ground truth, not a network; see
docs/SIMULATOR.md), writes the store, a TUM trajectory and a PLY map, and prints
ATE against ground truth next to a DA3-Streaming-style chain of the same
windows' predictions (``io/evaluation/baselines.py``) and the naive-chaining
baseline (windows composed through the camera-head overlap poses alone). With ``--demo-sequence loop``
it also shows what loop closure buys by running once with it and once without.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from da3stream.config import load_config

log = logging.getLogger(__name__)

DEMO_DEFAULTS = {
    "demo": {"chunk_size": 40, "overlap": 8},
    "loop": {"chunk_size": 40, "overlap": 8},
}
"""Window settings of the demo sequences (the memory planner is moot for a simulator)."""


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", desc=desc, dynamic_ncols=True)

    def update(info: dict) -> None:
        bar.update(int(info.get("frames", 0)))
        bar.set_postfix(window=info.get("chunk", 0), loops=info.get("loops", 0), refresh=False)

    return bar, update


def run_demo(
    out: Optional[str] = None,
    *,
    sequence: str = "demo",
    n_frames: Optional[int] = None,
    config: Any = None,
    overrides: Optional[dict] = None,
    progress_enabled: bool = True,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Run the demo; return a JSON-safe result with the output paths and the accuracy figures."""
    from da3stream.io.export.run_exports import export_ply, export_tum
    from da3stream.synthetic import SimParams, SimulatedPredictor

    out_path = _fresh_store_path(out, sequence, overwrite)
    work = out_path.parent
    stem = out_path.name[: -len(".zarr")] if out_path.name.endswith(".zarr") else out_path.name
    t0 = time.perf_counter()
    seq, video, gt = _render(sequence, n_frames, seed, work, stem)
    t_render = time.perf_counter() - t0

    base = dict(DEMO_DEFAULTS.get(sequence, DEMO_DEFAULTS["demo"]))
    base.update(overrides or {})
    cfg = load_config(config, base)
    predictor = SimulatedPredictor(seq, depth_hw=seq.image_hw, params=SimParams(), seed=seed)
    run = _Runner(video, gt, predictor, cfg, len(seq), progress_enabled)

    t0 = time.perf_counter()
    summary, ours = run(out_path, {}, "da3stream")
    t_run = time.perf_counter() - t0
    tum = work / f"{stem}.tum"
    ply = work / f"{stem}.ply"
    export_tum(out_path, tum)
    n_points = export_ply(out_path, ply)
    baselines = _baselines(run, ours, cfg.loop.enabled and sequence != "demo", work, stem, seq.world_from_cam)

    return {
        "demo": {
            "sequence": sequence,
            "frames": len(seq),
            "predictor": "SIMULATED (DA3 error model driven by ground truth; not a network)",
            "video": str(video),
            "ground_truth": str(gt),
            "store": str(out_path),
            "tum": str(tum),
            "ply": str(ply),
            "ply_points": n_points,
            "render_seconds": round(t_render, 2),
            "run_seconds": round(t_run, 2),
        },
        "summary": {k: v for k, v in summary.__dict__.items() if k not in ("timings", "model")},
        "accuracy": {
            "ate_rmse": ours["ate_rmse"],
            "path_length": ours["path_length"],
            "ate_percent_of_path": ours["ate_percent_of_path"],
            "rpe_trans_rmse": ours.get("rpe_trans_rmse"),
            **baselines,
        },
    }


def _fresh_store_path(out: Optional[str], sequence: str, overwrite: bool) -> Path:
    """The store path (default ``runs/<sequence>.zarr``), its folder created and any old store removed."""
    out_path = Path(out) if out else Path("runs") / f"{sequence}.zarr"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.exists():
        if not (overwrite or out is None):
            from da3stream.errors import StoreError

            raise StoreError(f"{out_path}: store already exists; pass --overwrite or choose another --out")
        shutil.rmtree(out_path)
    return out_path


def _render(sequence: str, n_frames: Optional[int], seed: int, work: Path, stem: str):
    """``(sequence, video path, ground-truth TUM path)``: the synthetic sequence written as a video and a TUM file."""
    from da3stream.synthetic import make_sequence

    t0 = time.perf_counter()
    seq = make_sequence(sequence, n_frames=n_frames, seed=seed)
    video = work / f"{stem}.mp4"
    gt = work / f"{stem}_gt.tum"
    seq.write_video(video)
    seq.write_tum(gt)
    log.info("rendered %d frames (%dx%d) of %r to %s in %.1fs", len(seq), seq.image_hw[1], seq.image_hw[0], sequence,
             video, time.perf_counter() - t0)
    return seq, video, gt


class _Runner:
    """One reconstruction of the demo video with config changes, scored against the ground truth."""

    def __init__(self, video: Path, gt: Path, predictor, cfg, n_frames: int, progress_enabled: bool) -> None:
        self.video, self.gt, self.predictor, self.cfg = video, gt, predictor, cfg
        self.n_frames, self.progress_enabled = n_frames, progress_enabled

    def __call__(self, path: Path, cfg_over: dict, desc: str):
        """``(summary, evaluation)`` of a run into ``path`` with ``cfg_over`` applied on top of the demo config."""
        from da3stream.io.evaluation.metrics import evaluate
        from da3stream.streaming.pipeline import reconstruct

        c = load_config(self.cfg, cfg_over) if cfg_over else self.cfg
        bar, update = _bar(self.progress_enabled, self.n_frames, desc)
        try:
            summary = reconstruct(self.video, path, predictor=self.predictor, config=c, overwrite=True, progress=update)
        finally:
            if bar is not None:
                bar.close()
        return summary, evaluate(path, self.gt)


class _Recorder:
    """The demo's predictor, keeping a copy of every window it predicts (the DA3-Streaming-style baseline's input)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.windows: list = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, batch, **priors):
        import copy

        import numpy as np

        from da3stream.io.evaluation.baselines import WindowRecord

        pred = self.inner.predict(batch, **priors)
        self.windows.append(WindowRecord(np.asarray(batch.indices, np.int64), copy.deepcopy(pred)))
        return pred


def _da3_streaming_style(windows: list, gt_world_from_cam) -> float:
    """ATE RMSE of the better DA3-Streaming-style chain (camera-head or ray points) on the windows the engine got."""
    from da3stream.io.evaluation.baselines import da3_streaming_trajectory
    from da3stream.io.evaluation.metrics import trajectory_errors

    ates = []
    for use_rays in (False, True):
        idx, est = da3_streaming_trajectory(windows, use_rays=use_rays)
        ates.append(trajectory_errors(gt_world_from_cam[idx], est)["ate_rmse"])
    return float(min(ates))


def _baselines(run: _Runner, ours: dict, with_no_loop: bool, work: Path, stem: str, gt_world_from_cam) -> dict:
    """ATE of the DA3-Streaming-style chain and of naive chaining, both on the windows the engine predicted
    (and, with ``with_no_loop``, of the run without loop closure), beside ours."""
    baselines: dict = {}
    naive_path = work / f"{stem}_naive.zarr"
    recorder = _Recorder(run.predictor)
    run.predictor = recorder
    try:
        _, naive = run(naive_path, {"align.mode": "poses", "align.pose_source": "head", "loop.enabled": False},
                       "naive chaining")
    finally:
        run.predictor = recorder.inner
    shutil.rmtree(naive_path, ignore_errors=True)
    d3s = _da3_streaming_style(recorder.windows, gt_world_from_cam)
    baselines["da3_streaming_style_ate_rmse"] = d3s
    baselines["ate_ratio_ours_over_da3_streaming_style"] = ours["ate_rmse"] / max(d3s, 1e-12)
    baselines["naive_chaining_ate_rmse"] = naive["ate_rmse"]
    baselines["ate_ratio_ours_over_naive"] = ours["ate_rmse"] / max(naive["ate_rmse"], 1e-12)
    if with_no_loop:
        noloop_path = work / f"{stem}_noloop.zarr"
        _, noloop = run(noloop_path, {"loop.enabled": False}, "without loop closure")
        shutil.rmtree(noloop_path, ignore_errors=True)
        baselines["no_loop_closure_ate_rmse"] = noloop["ate_rmse"]
        baselines["ate_ratio_loops_over_no_loops"] = ours["ate_rmse"] / max(noloop["ate_rmse"], 1e-12)
    return baselines
