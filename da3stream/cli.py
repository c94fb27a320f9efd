"""Command line: ``run_stream.py`` / ``da3stream``.

```
run_stream.py SOURCE --out RUN.zarr [--config X.yaml] [--model ID|DIR] [--resume]
run_stream.py --demo [--out RUN.zarr] [--demo-sequence demo|loop]
run_stream.py export RUN.zarr --tum T.txt --kitti K.txt --ply map.ply
run_stream.py eval RUN.zarr --gt gt.tum
run_stream.py report RUN.zarr [--gt gt.tum] [--out report.html]
run_stream.py view RUN.zarr          (or: run_stream.py SOURCE --out RUN.zarr --view)
run_stream.py SOURCE --out RUN.zarr --workers K [--ray ADDRESS]   (one source split across K Ray workers)
run_stream.py batch SRC... --out-dir DIR [--ray ADDRESS]          (many sources, one store each)
```

Library errors (:class:`~da3stream.errors.Da3StreamError`) become one line on
stderr and the error's exit code; progress bars live here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from da3stream.errors import ConfigError, Da3StreamError, ExportError

log = logging.getLogger("da3stream.cli")

SUBCOMMANDS = ("export", "eval", "view", "report", "batch")
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70
DEFAULT_REPORT = "report.html"


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_stream.py",
        description="Streaming reconstruction of a video, an image folder or a robot log (ROS 1 bag, ROS 2 bag, "
        "MCAP) with Depth Anything 3. Subcommands: export, eval, report, view (e.g. 'run_stream.py export -h').",
    )
    p.add_argument("source", nargs="?",
                   help="video file (anything PyAV/FFmpeg decodes), image folder (or one image), ROS 1 .bag file, "
                   "ROS 2 bag folder (sqlite3 or mcap storage, with metadata.yaml), .mcap or .db3 file")
    p.add_argument("--out", help="output Zarr store (directory)")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--model", help="DA3 checkpoint directory or hub id (e.g. depth-anything/DA3-LARGE), or "
                   "random-<preset> (random-small, random-base, random-large, random-giant, ...): the network with "
                   "RANDOM weights, to try the tool without a download (results are meaningless)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last committed window")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--demo", action="store_true", help="render a synthetic world and reconstruct it with the simulated predictor")
    p.add_argument("--demo-sequence", default="demo", help="synthetic sequence for --demo (demo, loop)")
    p.add_argument("--demo-frames", type=int, default=None, help="frames of the --demo sequence")
    p.add_argument("--chunk-size", type=int, help="frames per window (default: from --gpu-mem-gb)")
    p.add_argument("--overlap", type=int, help="frames shared by consecutive windows")
    p.add_argument("--gpu-mem-gb", type=float, help="GPU memory budget in GiB (default 12)")
    p.add_argument("--fps", type=float, help="subsample the source to this frame rate")
    p.add_argument("--stride", type=int, help="keep every N-th frame")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--topic", help="ROS bag / MCAP sources: the sensor_msgs Image or CompressedImage topic to read "
                   "(default: the only image topic; with several, the error lists them); an error for other sources")
    p.add_argument("--intrinsics", help="known camera: fx,fy,cx,cy[,k1,k2,p1,p2] or a calibration YAML (frames are undistorted)")
    p.add_argument("--poses", help="TUM file of known poses for pose-conditioned DA3 inference")
    p.add_argument("--no-loop", action="store_true", help="disable loop closure")
    p.add_argument("--no-keyframes", action="store_true", help="keep every frame (no near-duplicate filter)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override, e.g. --set align.kernel=cauchy")
    p.add_argument("--tum", help="also write the trajectory as TUM when done")
    p.add_argument("--kitti", help="also write the trajectory as KITTI when done")
    p.add_argument("--ply", help="also write the fused map as PLY when done")
    p.add_argument("--gt", help="ground-truth TUM trajectory: print ATE/RPE when done")
    p.add_argument("--view", action="store_true", help="serve the live viewer while the run writes --out")
    _scaleout_args(p)
    _viewer_args(p)
    _common(p)
    return p


def _scaleout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="Ray workers: split one source into K segments (run) / run K sources "
                   "at once (batch)")
    p.add_argument("--ray", help="Ray cluster address (auto: the one 'ray start --head' runs); default: a local instance")


def _batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_stream.py batch", description="Reconstruct many sources on Ray workers, one "
                                "store each (complete stores are skipped, incomplete ones resumed).")
    p.add_argument("sources", nargs="+", help="videos, image folders or bags")
    p.add_argument("--out-dir", required=True, help="folder of the stores and of summary.json")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--model", help="DA3 checkpoint directory or hub id, or random-<preset>")
    p.add_argument("--gt-dir", help="folder of ground-truth TUM files named <source name>.tum (adds the ATE column)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    _scaleout_args(p)
    _common(p)
    return p


def _viewer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="viewer address (default: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="viewer port (0: any free port)")
    p.add_argument("--max-points", type=int, default=2_000_000, help="map points the viewer shows at most")


def _viewer_options(args: argparse.Namespace):
    from da3stream.viewer import FollowOptions, ViewerOptions

    return ViewerOptions(host=args.host, port=args.port, follow=FollowOptions(max_points=args.max_points))


def _view_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_stream.py view", description="Serve a live web viewer of a finished or running store.")
    p.add_argument("store", help="run store (RUN.zarr)")
    _viewer_args(p)
    _common(p)
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_stream.py report", description="Write a self-contained HTML report of a run.")
    p.add_argument("store", help="run store (RUN.zarr)")
    p.add_argument("--gt", help="ground-truth TUM trajectory (adds ATE over time)")
    p.add_argument("--out", help="HTML file to write (replaced if it exists; default: ./report.html, which is "
                   "never replaced unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ./report.html when --out is not given")
    p.add_argument("--png-dir", help="also write the plots as PNG files here")
    p.add_argument("--max-diff", type=float, default=0.01, help="timestamp association tolerance in seconds")
    p.add_argument("--previews", type=int, default=6, help="frames with depth/confidence previews")
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_stream.py export", description="Export a run store to standard formats.")
    p.add_argument("store", help="run store (RUN.zarr)")
    p.add_argument("--tum", help="trajectory in TUM format (timestamp tx ty tz qx qy qz qw)")
    p.add_argument("--kitti", help="trajectory in KITTI format (3x4 row-major per line)")
    p.add_argument("--ply", help="fused point map as binary PLY (world frame)")
    p.add_argument("--voxel", type=float, default=None, help="voxel size for the PLY (world units)")
    p.add_argument("--min-conf", type=float, default=None, metavar="C",
                   help="PLY: drop map points whose fused confidence is below C (the predictor's confidence, higher = better)")
    p.add_argument("--colmap", metavar="DIR", help="COLMAP sparse model (cameras, images, points3D) into DIR")
    p.add_argument("--colmap-format", choices=("text", "bin"), default="bin", help="COLMAP model files: text or bin (default bin)")
    p.add_argument("--colmap-images", metavar="DIR",
                   help="COLMAP: also write the frames into DIR at their original resolution, re-read from the run's source")
    p.add_argument("--single-camera", action="store_true",
                   help="COLMAP: one shared camera for every image (automatic when all stored intrinsics are equal)")
    p.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="COLMAP points3D and the nerfstudio points3D.ply: at most N map points (an even stride over the map)")
    p.add_argument("--nerfstudio", metavar="DIR",
                   help="nerfstudio transforms.json + images + depth + points3D.ply (ply_file_path) into DIR")
    p.add_argument("--nerfstudio-original", action="store_true",
                   help="nerfstudio: images at the original resolution, re-read from the run's source (default: the depth grid)")
    p.add_argument("--source", metavar="PATH", help="where the run's source is now, for --colmap-images / --nerfstudio-original "
                   "(default: the path the store records)")
    p.add_argument("--depth", metavar="DIR", help="per-frame depth and confidence into DIR (world units, see depth_scale.json)")
    p.add_argument("--depth-format", choices=("png16", "npz"), default="png16", help="png16: uint16 = depth x 1000 (mm for metric runs); npz: float32")
    p.add_argument("--every", type=int, default=1, metavar="N", help="export every N-th pose / stored frame")
    p.add_argument("--keyframes-only", action="store_true",
                   help="TUM/KITTI: only stored keyframes (default: also interpolated poses of frames the keyframe filter dropped)")
    _common(p)
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_stream.py eval", description="ATE (Sim(3)-aligned) and RPE against ground truth.")
    p.add_argument("store", help="run store (RUN.zarr) or a TUM trajectory file")
    p.add_argument("--gt", required=True, help="ground-truth TUM trajectory")
    p.add_argument("--max-diff", type=float, default=0.01, help="timestamp association tolerance in seconds")
    _common(p)
    return p


CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "chunk_size": ("chunk_size", "value"),
    "overlap": ("overlap", "value"),
    "gpu_mem_gb": ("gpu_mem_gb", "value"),
    "fps": ("source.fps", "value"),
    "stride": ("source.stride", "value"),
    "max_frames": ("source.max_frames", "value"),
    "topic": ("source.topic", "text"),
    "intrinsics": ("source.intrinsics", "text"),
    "poses": ("source.poses", "text"),
    "no_loop": ("loop.enabled", "off"),
    "no_keyframes": ("keyframes.enabled", "off"),
    "model": ("model.id", "text"),
    "workers": ("scaleout.workers", "value"),
    "ray": ("scaleout.ray_address", "text"),
    "set": ("", "set"),
}
"""argparse dest -> (dotted config key, kind): "value" (set when given), "text" (set when non-empty),
"off" (a switch that sets the key to false), "set" (``KEY=VALUE`` items, applied last)."""


def config_overrides(args: argparse.Namespace, flags: Sequence[str] = tuple(CONFIG_FLAGS)) -> dict:
    """Dotted config overrides from the command-line ``flags`` (argparse dests of :data:`CONFIG_FLAGS`) in ``args``.

    The one builder of the run CLI and the benchmarks (``da3stream.bench``), which
    pass the subset of flags they define.
    """
    over: dict = {}
    for dest in flags:
        key, kind = CONFIG_FLAGS[dest]
        value = getattr(args, dest)
        if kind == "value" and value is not None:
            over[key] = value
        elif kind == "text" and value:
            over[key] = value
        elif kind == "off" and value:
            over[key] = False
        elif kind == "set":
            for item in value:
                if "=" not in item:
                    raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
                k, v = item.split("=", 1)
                over[k.strip()] = _parse_value(v)
    return over


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if (args.quiet or args.json) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class _Progress:
    """tqdm bar (CLI only): source frames read out of the source's total, keyframes kept, windows, loops, ETA."""

    def __init__(self, enabled: bool, total: Optional[int]) -> None:
        self.bar = None
        self.enabled, self.total = enabled, total  # the bar appears with the first window: an early error stays one line
        self.windows = 0
        self.gated = 0

    def __call__(self, info: dict) -> None:
        self.windows += 1
        self.gated += int(info.get("status") == 1)
        if self.enabled and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="frame", dynamic_ncols=True, desc="source frames read",
                            file=sys.stderr)
        if self.bar is not None:
            read = info.get("read")
            self.bar.update(int(info.get("frames", 0)) if read is None else max(0, int(read) - self.bar.n))
            self.bar.set_postfix(keyframes=info.get("keyframes", "?"), windows=self.windows, gated=self.gated,
                                 loops=info.get("loops", 0), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _source_total(source: str, cfg) -> Optional[int]:
    """Frames the run will read from ``source`` (the container's or folder's count after stride, fps and
    max_frames), or None when unknown. Opening the source here also fails a bad one before a model loads."""
    import math

    from da3stream.io.sources import declared_frame_count, open_source, source_options

    with open_source(source, **source_options(cfg.source)) as src:
        desc = src.describe()
    n, rate = declared_frame_count(desc), desc.get("fps")
    if not n:
        return cfg.source.max_frames
    n_source = int(n)
    n = math.ceil(n_source / int(cfg.source.stride or 1))
    if cfg.source.fps and rate:
        n = min(n, math.ceil(n_source * float(cfg.source.fps) / float(rate)))
    return n if cfg.source.max_frames is None else min(n, int(cfg.source.max_frames))


def _random_model(cfg):
    """The predictor of ``--model random-<preset>`` (a DA3 network with RANDOM weights, logged as such), else None."""
    model_id = cfg.model.id
    if not (isinstance(model_id, str) and model_id.startswith("random-")):
        return None
    from da3stream.core import random_predictor

    m = cfg.model
    return random_predictor(model_id[len("random-"):], seed=cfg.seed, device=m.device, dtype=m.dtype,
                            process_res=m.process_res, process_res_method=m.process_res_method)


def _cmd_run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    _setup_logging(args)
    if args.demo:
        from da3stream.demo import run_demo

        result = run_demo(
            out=args.out, sequence=args.demo_sequence, n_frames=args.demo_frames, config=args.config,
            overrides=config_overrides(args), progress_enabled=not (args.quiet or args.json), overwrite=args.overwrite,
        )
        _emit(result, args)
        return 0
    if not args.source:
        raise ConfigError("SOURCE is required (or use --demo); see run_stream.py -h")
    if not args.out:
        raise ConfigError("--out RUN.zarr is required")
    from da3stream.config import load_config
    from da3stream.io.store.paths import check_out_path
    from da3stream.streaming.pipeline import reconstruct

    cfg = load_config(args.config, config_overrides(args))
    check_out_path(args.out, resume=args.resume, overwrite=args.overwrite)  # before the source and any model
    total = _source_total(args.source, cfg)
    predictor = _random_model(cfg)
    viewer = None
    if args.view:
        from da3stream.viewer import LiveViewer

        viewer = LiveViewer(args.out, _viewer_options(args)).start(follow=True, wait_for_store=True)
        print(f"viewer: {viewer.url}", file=sys.stderr)
    bar = _Progress(not (args.quiet or args.json), total)
    try:
        summary = reconstruct(args.source, args.out, predictor=predictor, config=cfg, resume=args.resume, progress=bar,
                              overwrite=args.overwrite)
    except BaseException:
        if viewer is not None:
            viewer.stop()
        raise
    finally:
        bar.close()
    result = {"summary": summary.__dict__ | {"new_frame_fraction": summary.new_frame_fraction}}
    result.update(_exports(args.out, args.tum, args.kitti, args.ply, None))
    if args.gt:
        from da3stream.io.evaluation.metrics import evaluate

        result["eval"] = evaluate(args.out, args.gt)
    _emit(result, args)
    if viewer is not None:
        viewer.poll_once()
        print(f"viewer: still serving {viewer.url} (Ctrl-C to stop)", file=sys.stderr)
        try:
            viewer.wait()
        except KeyboardInterrupt:
            pass
        finally:
            viewer.stop()
    return 0


def _exports(store: str, tum, kitti, ply, voxel, opts: Optional[argparse.Namespace] = None) -> dict:
    from da3stream.io.export import run_exports as export

    written = {}
    every, keyframes_only = getattr(opts, "every", 1), getattr(opts, "keyframes_only", False)
    if tum:
        written["tum_poses"] = export.export_tum(store, tum, keyframes_only=keyframes_only, every=every)
        written["tum"] = tum
    if kitti:
        written["kitti_poses"] = export.export_kitti(store, kitti, keyframes_only=keyframes_only, every=every)
        written["kitti"] = kitti
    if getattr(opts, "colmap", None):
        from da3stream.io.export.colmap import export_colmap

        info = export_colmap(store, opts.colmap, fmt=opts.colmap_format, every=every, images=opts.colmap_images,
                             source=opts.source, single_camera=True if opts.single_camera else None,
                             max_points=opts.max_points)
        written["colmap"] = opts.colmap
        written["colmap_model"] = {k: info[k] for k in ("cameras", "images", "points", "observations")}
    if getattr(opts, "nerfstudio", None):
        from da3stream.io.export.nerfstudio import export_nerfstudio

        written["nerfstudio"] = opts.nerfstudio
        written["nerfstudio_frames"] = export_nerfstudio(store, opts.nerfstudio, every=every, original_images=opts.nerfstudio_original,
                                                         source=opts.source, max_points=opts.max_points)["frames"]
    if getattr(opts, "depth", None):
        from da3stream.io.export.depth import export_depth

        written["depth"] = opts.depth
        written["depth_frames"] = export_depth(store, opts.depth, fmt=opts.depth_format, every=every)["frames"]
    if ply:
        n = export.export_ply(store, ply, voxel=voxel, min_conf=getattr(opts, "min_conf", None))
        written["ply"] = ply
        written["ply_points"] = int(n) if n is not None else None
    return {"exported": written} if written else {}


def _cmd_export(argv: Sequence[str]) -> int:
    args = _export_parser().parse_args(argv)
    _setup_logging(args)
    if not (args.tum or args.kitti or args.ply or args.colmap or args.nerfstudio or args.depth):
        raise ConfigError("export: name at least one of --tum, --kitti, --ply, --colmap, --nerfstudio, --depth")
    _emit(_exports(args.store, args.tum, args.kitti, args.ply, args.voxel, args), args)
    return 0


def _cmd_eval(argv: Sequence[str]) -> int:
    args = _eval_parser().parse_args(argv)
    _setup_logging(args)
    from da3stream.io.evaluation.metrics import evaluate

    _emit({"eval": evaluate(args.store, args.gt, max_diff=args.max_diff)}, args)
    return 0


def _cmd_view(argv: Sequence[str]) -> int:
    args = _view_parser().parse_args(argv)
    _setup_logging(args)
    from da3stream.viewer import serve

    try:
        serve(args.store, _viewer_options(args))
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_report(argv: Sequence[str]) -> int:
    args = _report_parser().parse_args(argv)
    _setup_logging(args)
    from da3stream.io.evaluation.report import write_report

    out = args.out
    if out is None:
        out = DEFAULT_REPORT
        if Path(out).exists() and not args.overwrite:
            raise ExportError(f"{out}: exists; pass --overwrite to replace it or --out FILE to write elsewhere")
    res = write_report(args.store, out, gt_tum=args.gt, png_dir=args.png_dir, max_diff=args.max_diff,
                       n_previews=args.previews)
    _emit({"report": {"html": res["html"], "sections": ", ".join(res["sections"]), "png": res["png"] or None}}, args)
    return 0


def _cmd_batch(argv: Sequence[str]) -> int:
    args = _batch_parser().parse_args(argv)
    _setup_logging(args)
    from da3stream.config import load_config
    from da3stream.scaleout.batch import SUMMARY_NAME, ground_truth_in, reconstruct_many, summary_table

    cfg = load_config(args.config, config_overrides(args, ("model", "set", "workers", "ray")))
    gt = ground_truth_in(args.gt_dir, args.sources) if args.gt_dir else None
    bar = None
    if not (args.quiet or args.json):
        from tqdm import tqdm

        bar = tqdm(total=len(args.sources), unit="source", desc="sources done", dynamic_ncols=True, file=sys.stderr)
    try:
        rows = reconstruct_many(args.sources, args.out_dir, predictor=_random_model(cfg), config=cfg,
                                ground_truth=gt, progress=(lambda info: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({"sources": rows}, indent=2, default=_json_default))
    else:
        print(summary_table(rows))
        print(f"summary: {Path(args.out_dir) / SUMMARY_NAME}", file=sys.stderr)
    return 0 if all(r["error"] is None for r in rows) else 1


def _emit(result: dict, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                if isinstance(v, dict):
                    v = ", ".join(f"{a}={_fmt(b)}" for a, b in v.items())
                print(f"  {k}: {_fmt(v)}")
        else:
            print(f"{key}: {_fmt(value)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] == "export":
            return _cmd_export(argv[1:])
        if argv and argv[0] == "eval":
            return _cmd_eval(argv[1:])
        if argv and argv[0] == "view":
            return _cmd_view(argv[1:])
        if argv and argv[0] == "report":
            return _cmd_report(argv[1:])
        if argv and argv[0] == "batch":
            return _cmd_batch(argv[1:])
        return _cmd_run(argv)
    except Da3StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: the store holds every window committed so far; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
