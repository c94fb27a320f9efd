"""Command line for the synthetic worlds: ``python -m da3stream.synthetic COMMAND``.

Commands::

    list                         the presets
    write PRESET [--video V] [--images DIR] [--tum T] [--npz Z]
                                 render a preset to files (ground truth in TUM)
    speed [--preset P]           render speed and simulated-predictor speed
    calibrate [--preset P]       ATE of chaining windows on points vs camera poses

Every command prints one JSON object (numbers quoted in docs/SIMULATOR.md come
from ``speed`` and ``calibrate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _sequence(args):
    from da3stream.synthetic import make_sequence

    return make_sequence(args.preset, n_frames=args.frames, width=args.width, height=args.height, seed=args.seed)


def _add_seq_args(p: argparse.ArgumentParser, preset: str | None = "demo") -> None:
    if preset is None:
        p.add_argument("preset", help="preset name (see `list`)")
    else:
        p.add_argument("--preset", default=preset, help="preset name (see `list`)")
    p.add_argument("--frames", type=int, default=None, help="frame count (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="render width (default: the preset's)")
    p.add_argument("--height", type=int, default=None, help="render height (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="sensor-noise seed")


def cmd_list(args) -> dict:
    from da3stream.synthetic import PRESETS

    return {name: {"description": p.description, "n_frames": p.n_frames, "width": p.width, "height": p.height,
                   "fov_deg": p.fov_deg} for name, p in PRESETS.items()}


def cmd_write(args) -> dict:
    seq = _sequence(args)
    out = {"sequence": seq.describe()}
    t0 = time.perf_counter()
    if args.video:
        out["video_frames"] = seq.write_video(args.video, codec=args.codec)
    if args.images:
        out["images"] = len(seq.write_image_folder(args.images))
    if args.tum:
        out["tum"] = str(seq.write_tum(args.tum))
    if args.npz:
        out["npz"] = str(seq.save_npz(args.npz))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def cmd_speed(args) -> dict:
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor, da3_depth_hw

    seq = _sequence(args)
    n = len(seq)
    seq.images([0])  # build the ray-casting scene once
    fresh = _sequence(args)
    fresh.cache = False
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in fresh.frames():
        pass
    render_s, render_cpu = time.perf_counter() - t0, time.process_time() - c0
    # wall-clock rates depend on machine load; CPU seconds (all threads) do not
    out = {"preset": args.preset, "frames": n, "width": seq.image_hw[1], "height": seq.image_hw[0],
           "render_fps": round(n / render_s, 1), "render_cpu_ms_per_frame": round(1000 * render_cpu / n, 1)}
    k = min(args.window, n // 2)
    for name, hw in (("render_grid", seq.image_hw), ("da3_grid", da3_depth_hw(seq.image_hw))):
        pred = SimulatedPredictor(seq, depth_hw=hw, params=SimParams(), seed=0)
        pred.predict(seq.batch(np.arange(k)))  # warm-up
        batch = seq.batch(np.arange(k, 2 * k))  # a new window: ground truth is cast afresh where needed
        t0, c0 = time.perf_counter(), time.process_time()
        pred.predict(batch)
        out[f"predict_ms_per_frame_{name}_{hw[0]}x{hw[1]}"] = round(1000 * (time.perf_counter() - t0) / k, 1)
        out[f"predict_cpu_ms_per_frame_{name}"] = round(1000 * (time.process_time() - c0) / k, 1)
    return out


def cmd_calibrate(args) -> dict:
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.synthetic.calibration import calibrate

    seq = _sequence(args)
    gt = seq.ground_truth()
    params = SimParams(with_rays=not args.no_rays)
    rows = []
    for seed in range(args.seeds):
        pred = SimulatedPredictor(gt, depth_hw=tuple(args.depth_hw), params=params, seed=seed)
        rows.append(calibrate(gt, pred, chunk=args.chunk, overlap=args.overlap, seed=seed,
                              path_length_m=seq.path_length_m))
    keys = [k for k in rows[0] if k.startswith("ate_")]
    out = {"preset": args.preset, "frames": len(seq), "path_length_m": round(seq.path_length_m, 2),
           "windows": rows[0]["n_windows"], "rays": not args.no_rays, "seeds": args.seeds}
    for k in keys:
        out[k] = [round(r[k], 4) for r in rows]
    pts = np.array(out["ate_points_m"])
    for mode in ("poses", "poses_depth_scale"):
        out[f"ratio_{mode}_over_points"] = [round(float(x), 2) for x in np.array(out[f"ate_{mode}_m"]) / pts]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m da3stream.synthetic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets").set_defaults(fn=cmd_list)
    p = sub.add_parser("write", help="render a preset to files")
    _add_seq_args(p, preset=None)
    p.add_argument("--video", help="video path (.mp4, .mkv, .avi)")
    p.add_argument("--codec", default="libx264", help="FFmpeg encoder (libx264, mpeg4, ...)")
    p.add_argument("--images", help="image folder (frame_0.png ...)")
    p.add_argument("--tum", help="ground-truth trajectory (TUM)")
    p.add_argument("--npz", help="ground truth + frames bundle")
    p.set_defaults(fn=cmd_write)
    p = sub.add_parser("speed", help="render and simulated-predictor speed")
    _add_seq_args(p)
    p.add_argument("--window", type=int, default=24, help="frames per predicted window")
    p.set_defaults(fn=cmd_speed)
    p = sub.add_parser("calibrate", help="ATE of chaining windows on points vs camera poses")
    _add_seq_args(p)
    p.add_argument("--seeds", type=int, default=3, help="predictor seeds")
    p.add_argument("--depth-hw", type=int, nargs=2, default=(60, 80), metavar=("H", "W"), help="predicted depth grid")
    p.add_argument("--chunk", type=int, default=24, help="frames per window")
    p.add_argument("--overlap", type=int, default=8, help="frames shared by consecutive windows")
    p.add_argument("--no-rays", action="store_true", help="align on depth + predicted camera poses instead of rays")
    p.set_defaults(fn=cmd_calibrate)
    args = parser.parse_args(argv)
    from da3stream.errors import Da3StreamError

    try:
        result = args.fn(args)
    except Da3StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
