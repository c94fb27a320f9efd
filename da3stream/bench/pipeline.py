"""``python -m da3stream.bench pipeline``: end-to-end throughput vs the network alone on the same windows.

One engine run over a video, an image folder or a synthetic sequence, then the
predictor alone over exactly the windows that run predicted (same frames, same
order, no engine, no I/O). Prints JSON with:

- ``end_to_end_fps``: committed (new) frames per wall second, and
  ``source_fps`` (frames read per wall second);
- ``model_only``: the predictor's frames/s over the same windows, and
  ``target_ratio = end_to_end_fps / (model_only_fps * new_frame_fraction)``
  (the engine keeps up with the network when this is near 1; target >= 0.85);
- ``new_frame_fraction``: new frames / predicted frames (overlap re-predictions
  and keyframe skips cost nothing else);
- ``stage_seconds`` (the pipeline's per-stage wall timings: ``predict`` is the
  worker's busy time, ``predict_wait`` the time the main thread waited for it,
  ``write_busy`` the writer thread's) and ``overlap``: the sum of the busy
  stages over the wall time (above 1 means stages ran concurrently);
  ``predictor_busy_fraction``: predict seconds over wall seconds (the GPU is
  idle for the rest);
- ``cpu``: process and per-thread CPU seconds (robust on a loaded machine);
- ``peak_gpu_mem_gib`` (``torch.cuda.max_memory_allocated``), ``peak_rss_mib``,
  ``store_bytes_per_frame``;
- with a synthetic source, the ATE against ground truth.

``--overlap 2 4 8 16`` runs once per overlap and adds ``overlap_table``: ATE and
new-frame fraction per overlap (the accuracy cost of fewer re-predicted frames).

Models: ``simulated`` (the simulated predictor; synthetic sources only),
``random-<preset>`` (a DA3 network with random weights, e.g. ``random-small``,
``random-large``), or a checkpoint directory / hub id / official name
(``da3-large``) for real weights.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--source", default="synthetic", help="video path, image folder, or synthetic[:PRESET]")
    p.add_argument("--model", default="simulated", help="simulated | random-<preset> | checkpoint dir / hub id / name")
    p.add_argument("--frames", type=int, default=240, help="frames of a synthetic sequence")
    p.add_argument("--width", type=int, default=320, help="synthetic frame width")
    p.add_argument("--height", type=int, default=240, help="synthetic frame height")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many source frames")
    p.add_argument("--process-res", type=int, default=504, help="network resolution (longest side) of DA3 models")
    p.add_argument("--device", default="auto", help="torch device of DA3 models")
    p.add_argument("--dtype", default="auto", help="weights dtype of DA3 models")
    p.add_argument("--chunk-size", type=int, default=None, help="window length (default: the memory planner's)")
    p.add_argument("--overlap", type=int, nargs="+", default=[8], help="overlap(s); several print a table")
    p.add_argument("--gpu-mem-gb", type=float, default=None, help="memory budget of the planner")
    p.add_argument("--predict-ahead", type=int, default=1, choices=(0, 1))
    p.add_argument("--no-loop", action="store_true", help="disable loop closure")
    p.add_argument("--no-keyframes", action="store_true", help="keep every frame")
    p.add_argument("--no-model-only", action="store_true", help="skip the predictor-alone replay")
    p.add_argument("--config", default=None, help="YAML config the run starts from")
    p.add_argument("--out-dir", default=None, help="keep the stores here (default: a temporary folder, removed)")
    p.add_argument("--seed", type=int, default=0)


# ----------------------------------------------------------------------------- setup


def _synthetic(source: str, args):
    from da3stream.synthetic import make_sequence

    preset = source.split(":", 1)[1] if ":" in source else "demo"
    return make_sequence(preset, n_frames=args.frames, width=args.width, height=args.height, seed=args.seed)


def _predictor(args, seq):
    model = args.model
    if model == "simulated":
        if seq is None:
            raise SystemExit("--model simulated needs --source synthetic[:PRESET] (it reads the ground truth)")
        from da3stream.synthetic.predictor import SimParams, SimulatedPredictor

        h, w = seq.image_hw
        return SimulatedPredictor(seq, depth_hw=(h // 2, w // 2), params=SimParams(), seed=args.seed)
    from da3stream.core.da3_predictor import load_predictor, random_predictor

    if model.startswith("random-"):
        return random_predictor(model[len("random-"):], seed=args.seed, device=args.device, dtype=args.dtype,
                                process_res=args.process_res)
    return load_predictor(model, device=args.device, dtype=args.dtype, process_res=args.process_res)


def _config(args, overlap: int) -> dict:
    from da3stream.cli import config_overrides

    cfg: dict = {"overlap": overlap, "seed": args.seed, "predict_ahead": args.predict_ahead}
    cfg.update(config_overrides(args, ("chunk_size", "gpu_mem_gb", "max_frames", "no_loop", "no_keyframes")))
    return cfg


def _cuda(predictor) -> bool:
    return str(getattr(predictor, "device", "cpu")).startswith("cuda")


def _sync(predictor) -> None:
    if _cuda(predictor):
        import torch

        torch.cuda.synchronize()


def _dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# ----------------------------------------------------------------------------- one run


def _run_engine(source: Any, store: Path, predictor, cfg: dict, base_config: Optional[str]) -> dict:
    from da3stream.bench.sampler import ResourceSampler
    from da3stream.config import load_config
    from da3stream.streaming.pipeline import StreamingReconstructor

    windows: list[np.ndarray] = []

    class Recorder(StreamingReconstructor):
        def _predict(self, frames):
            windows.append(np.array([f.index for f in frames], np.int64))
            return super()._predict(frames)

    config = load_config(base_config, cfg)
    cuda = _cuda(predictor)
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    sampler = ResourceSampler(0.25)
    marks: list[tuple[float, int, int]] = []  # (perf_counter, source frames read, frames committed) per window

    def progress(d: dict) -> None:
        sampler.advance(d["frames"])
        marks.append((time.perf_counter(), int(d.get("read", 0)), sampler.progress))

    runner = Recorder(source, store, predictor=predictor, config=config, resume=False, overwrite=True,
                      progress=progress)
    with sampler:
        t0 = time.perf_counter()
        summary = runner.run()
        _sync(predictor)
        wall = time.perf_counter() - t0
    t = summary.timings
    busy = {k: t.get(k, 0.0) for k in ("read", "predict", "align", "fuse", "loop", "write_busy")}
    out = {
        "frames_read": summary.n_read,
        "keyframes": summary.n_keyframes,
        "frames_committed": summary.n_frames,
        "predicted_frames": int(t.get("predicted_frames", 0)),
        "new_frame_fraction": round(summary.new_frame_fraction, 4),
        "chunk_size": summary.chunk_size,
        "overlap": summary.overlap,
        "n_chunks": summary.n_chunks,
        "n_gated": summary.n_gated,
        "n_segments": summary.n_segments,
        "n_loops": summary.n_loops,
        "wall_seconds": round(wall, 3),
        "end_to_end_fps": round(summary.n_frames / wall, 3),
        "source_fps": round(summary.n_read / wall, 3),
        "stage_seconds": t,
        "overlap_of_stages": {"sum_busy_seconds": round(sum(busy.values()), 3), "wall_seconds": round(wall, 3),
                              "ratio": round(sum(busy.values()) / wall, 3)},
        "predictor_busy_fraction": round(t.get("predict", 0.0) / wall, 4),
        "cpu": sampler.summary(),
        "peak_rss_mib": sampler.summary()["peak_rss_mib"],
        "store_bytes_per_frame": round(_dir_bytes(store) / max(1, summary.n_frames), 1),
    }
    if cuda:
        import torch

        out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    out["_windows"] = windows
    out["_marks"] = [(round(t - t0, 4), n_read, n_done) for t, n_read, n_done in marks]
    return out


def _model_only(windows: list[np.ndarray], frame_source, predictor) -> dict:
    """The predictor alone over ``windows`` (frames fetched ahead, outside the timing)."""
    from da3stream.core.types import FrameBatch

    needed = {int(i) for w in windows for i in w}
    frames: dict[int, tuple] = {}
    for idx, ts, img in frame_source():
        if idx in needed:
            frames[idx] = (ts, img)
        if len(frames) == len(needed):
            break
    seconds = 0.0
    n = 0
    for w in windows:
        if not all(int(i) in frames for i in w):
            continue
        batch = FrameBatch(images=np.stack([frames[int(i)][1] for i in w]), indices=w.copy(),
                           timestamps=np.array([frames[int(i)][0] for i in w], np.float64))
        _sync(predictor)
        t0 = time.perf_counter()
        predictor.predict(batch)
        _sync(predictor)
        seconds += time.perf_counter() - t0
        n += len(w)
    return {"seconds": round(seconds, 3), "predicted_frames": n, "fps": round(n / seconds, 3) if seconds > 0 else None}


def run(args) -> dict:
    source_arg = str(args.source)
    seq = _synthetic(source_arg, args) if source_arg.startswith("synthetic") else None
    predictor = _predictor(args, seq)
    keep = args.out_dir is not None
    workdir = Path(args.out_dir) if keep else Path(tempfile.mkdtemp(prefix="da3stream-bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if seq is not None:
            source, frame_source, gt, description = _synthetic_sources(seq, args, workdir)
        else:
            source, frame_source, gt, description = _file_sources(source_arg, args)
        _warm_up(predictor, frame_source)
        runs = []
        for overlap in args.overlap:
            store = workdir / f"run_overlap{overlap}.zarr"
            runs.append(_one_run(args, overlap, store, source, frame_source, predictor, gt))
            if not keep:
                shutil.rmtree(store, ignore_errors=True)
        return _result(args, predictor, description, runs)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _synthetic_sources(seq, args, workdir: Path):
    """``(source(), frame_source(), ground-truth TUM path, description)`` of a rendered synthetic sequence."""
    seq.render_all()
    images = seq.images()
    limit = len(seq) if args.max_frames is None else min(len(seq), args.max_frames)

    def source():
        return [(images[i], float(seq.timestamps[i])) for i in range(limit)]

    def frame_source():
        for i in range(limit):
            yield i, float(seq.timestamps[i]), images[i]

    gt = seq.write_tum(workdir / "gt.tum")
    description = {"kind": "synthetic", **seq.describe()} if hasattr(seq, "describe") else {"kind": "synthetic"}
    return source, frame_source, gt, description


def _file_sources(source_arg: str, args):
    """``(source(), frame_source(), None, description)`` of a video or image folder."""
    from da3stream.config import load_config
    from da3stream.io.sources import open_source, source_options

    path = Path(source_arg)
    if not path.exists():
        raise SystemExit(f"{path}: source not found")
    src_cfg = load_config(args.config, _config(args, args.overlap[0])).source

    def source():
        return str(path)

    def frame_source():
        with open_source(str(path), **source_options(src_cfg)) as src:
            for f in src:
                yield f.index, f.timestamp, f.image

    return source, frame_source, None, {"kind": "file", "path": str(path)}


def _one_run(args, overlap: int, store: Path, source, frame_source, predictor, gt) -> dict:
    """One engine run at ``overlap``, the predictor alone over its windows, and the ATE when ``gt`` is known."""
    res = _run_engine(source(), store, predictor, _config(args, overlap), args.config)
    windows = res.pop("_windows")
    res.pop("_marks")
    if not args.no_model_only:
        mo = _model_only(windows, frame_source, predictor)
        res["model_only"] = mo
        if mo["fps"]:
            res["target_ratio"] = round(res["end_to_end_fps"] / (mo["fps"] * res["new_frame_fraction"]), 4)
    if gt is not None:
        from da3stream.io.evaluation.metrics import evaluate

        ev = evaluate(store, gt)
        res["ate_rmse"] = round(float(ev["ate_rmse"]), 6)
        res["ate_percent_of_path"] = round(float(ev["ate_percent_of_path"]), 4)
    return res


def _result(args, predictor, description: dict, runs: list) -> dict:
    out = {
        "source": description,
        "model": {"id": str(getattr(predictor, "model_id", args.model)), "device": str(getattr(predictor, "device", "cpu")),
                  "process_res": getattr(predictor, "process_res", None)},
        "runs": runs,
        "targets": {"target_ratio_min": 0.85, "peak_gpu_mem_gib_max": {"large": 8, "giant": 10}},
    }
    if len(runs) > 1:
        out["overlap_table"] = [
            {k: r.get(k) for k in ("overlap", "chunk_size", "new_frame_fraction", "ate_rmse", "ate_percent_of_path",
                                   "n_gated", "end_to_end_fps")}
            for r in runs
        ]
    return out


def _warm_up(predictor, frame_source, n: int = 2) -> None:
    """One small forward before timing (CUDA context, cuDNN autotuning, lazy imports)."""
    from da3stream.core.types import FrameBatch

    got = []
    for idx, ts, img in frame_source():
        got.append((idx, ts, img))
        if len(got) == n:
            break
    if not got:
        return
    predictor.predict(FrameBatch(images=np.stack([g[2] for g in got]), indices=np.array([g[0] for g in got], np.int64),
                                 timestamps=np.array([g[1] for g in got], np.float64)))
    _sync(predictor)


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args(sys.argv[1:])), indent=2, default=float))
