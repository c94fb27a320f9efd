"""``python -m da3stream.bench gpu``: every GPU figure of the project in one command, under a time cap.

``python -m da3stream.bench gpu [--out DIR] [--budget-s 420] [--smoke] [--dry-run]``
(``scripts/gpu_check.sh`` wraps it for a lent GPU machine; docs/GPU.md says how).

The cases (:mod:`da3stream.bench.gpu_cases`) run one after another, each in a
fresh subprocess so that its peak memory is its own:

1. ours (bf16 weights, no autocast) vs the official network (fp32 weights +
   bf16 autocast, as DA3-Streaming runs it), random weights, one input of
   120 (then 60) views at 504x378 for DA3-Large, then DA3-Giant at 120 views
   (optional: skipped when the budget left is short): peak allocated and reserved
   CUDA memory, frames/s (views / median forward seconds after one warm-up);
2. the whole engine on the robot video looped back and forth to 2,000 frames,
   DA3-Large with random weights, chunk 120: end-to-end frames/s against the
   network alone over the same windows times the new-frame fraction, peak GPU
   memory, the share of wall time the engine's CPU stages take;
3. the hour (108,000 frames) predicted from the second half of that run's rate.

It writes ``gpu_report.json`` and ``gpu_report.md`` into ``--out`` (default
``$OUT``, else ``runs/gpu``), rewritten after every case so a run cut short
still leaves what it finished (``partial: true``). The budget (``--budget-s``)
caps the whole suite: a case starts only while budget is left and is killed
when it runs out; an out-of-memory error in a case is recorded in it
(``status: oom``) and the suite goes on.

``--smoke`` runs the same code on the CPU with DA3-Small, 4 views at 112 px and
a 16-frame end-to-end run (targets then do not apply); ``--dry-run`` prints the
plan (cases, sizes, our memory model's estimates, the budget) without running it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from da3stream.bench.gpu_cases import GB, TARGETS, Case, full_plan, smoke_plan

WORKER_FLAG = "--da3stream-gpu-bench-worker"
REPORT_RESERVE_S = 5.0
"""Seconds of the budget kept for writing the report after the last case."""
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_video() -> Path:
    """The robot video in the ``shared/`` folder beside the repository (``DA3STREAM_SHARED`` overrides it)."""
    shared = Path(os.environ.get("DA3STREAM_SHARED", REPO_ROOT.parent / "shared"))
    return shared / "data" / "robot_unitree.mp4"


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="folder of gpu_report.json/.md (default: $OUT, else runs/gpu)")
    p.add_argument("--budget-s", type=float, default=420.0, help="time cap of the whole suite, seconds")
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU: DA3-Small, 4 views, 112 px")
    p.add_argument("--dry-run", action="store_true", help="print the plan of cases; run nothing")
    p.add_argument("--device", default="auto", help="auto (CUDA; --smoke: cpu), cuda, cuda:N or cpu")
    p.add_argument("--video", default=None, help="video of the end-to-end case (default: shared/data/robot_unitree.mp4)")
    p.add_argument("--frames", type=int, default=None, help="frames of the end-to-end case (default 2000; smoke 16)")
    p.add_argument("--repeat", type=int, default=3, help="timed forwards per model case after one warm-up")
    p.add_argument("--no-giant", action="store_true", help="leave DA3-Giant out")
    p.add_argument("--only", nargs="+", default=None, metavar="CASE", help="run only these cases (names as planned)")
    p.add_argument("--seed", type=int, default=0, help="weights and input seed")


# ----------------------------------------------------------------------------- the plan
def plan_for(args) -> list[Case]:
    """The cases this invocation runs, in order (``--only`` marks the others as skipped)."""
    if args.smoke:
        cases = smoke_plan(frames=args.frames or 16)
    else:
        cases = full_plan(giant=not args.no_giant, frames=args.frames or 2000, repeat=args.repeat)
    if args.only:
        known = {c.name for c in cases}
        unknown = sorted(set(args.only) - known)
        if unknown:
            from da3stream.errors import ConfigError

            raise ConfigError(f"--only: unknown case(s) {', '.join(unknown)}; planned: {', '.join(sorted(known))}")
        cases = [c if c.name in args.only or c.skip_reason else replace(c, skip_reason="not in --only")
                 for c in cases]
    return cases


def _resolve_device(args) -> str:
    from da3stream.core.da3_predictor import resolve_device
    from da3stream.errors import Da3StreamError

    if args.smoke:
        return "cpu" if args.device == "auto" else resolve_device(args.device)
    dev = resolve_device(args.device)
    if not dev.startswith("cuda") and not args.dry_run:
        raise Da3StreamError("bench gpu: no CUDA device; use --smoke (the same code on the CPU) or --dry-run (the plan)")
    return dev


def _check_video(path: Path, needed: bool) -> None:
    from da3stream.errors import SourceError

    if needed and not path.is_file():
        raise SourceError(f"{path}: video of the end-to-end case not found (pass --video PATH)")


def dry_run(args, cases: list[Case], device: str, video: Path) -> dict:
    """The plan: each case with its input size, our memory estimate, and whether the budget reaches it."""
    from da3stream.bench.model import network_hw_for
    from da3stream.core.memory_model import estimate_peak_bytes

    rows, planned_s = [], 0.0
    for c in cases:
        row = c.describe()
        if c.kind == "model":
            h, w = network_hw_for(c.process_res, c.aspect)
            row["network_hw"] = [h, w]
            if c.side == "ours":  # the full plan is for CUDA (bf16), also when shown on a CPU
                dtype, kind = ("float32", "cpu") if args.smoke else ("bfloat16", "cuda")
                row["ours_estimate_gb"] = round(estimate_peak_bytes(c.preset, c.views, h, w, dtype, kind) / GB, 2)
        if c.skip_reason:
            row["would_run"] = False
        else:
            fits = planned_s + (c.est_s if c.optional else 0.0) <= args.budget_s - REPORT_RESERVE_S
            row["would_run"] = bool(fits)
            planned_s += c.est_s if fits else 0.0
        rows.append(row)
    return {"dry_run": True, "mode": "smoke" if args.smoke else "full", "device": device,
            "budget_s": args.budget_s, "planned_seconds": round(planned_s, 1), "video": str(video),
            "video_found": video.is_file(), "out": str(_out_dir(args)), "targets": TARGETS, "cases": rows,
            "weights_random": True}


# ----------------------------------------------------------------------------- running
def _out_dir(args) -> Path:
    return Path(args.out or os.environ.get("OUT") or (Path("runs") / "gpu"))


def _run_case(case: Case, device: str, video: Path, timeout: float, seed: int) -> dict:
    """Run ``case`` in a fresh interpreter; its result with ``status`` ok | oom | failed | timeout."""
    with tempfile.TemporaryDirectory(prefix="da3stream-gpu-") as tmp:
        spec = {"case": asdict(case), "device": device, "video": str(video), "store": str(Path(tmp) / "run.zarr"),
                "seed": seed}
        cmd = [sys.executable, "-m", "da3stream.bench.gpu", WORKER_FLAG, json.dumps(spec)]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "error": f"no result within the {timeout:.0f} s of budget left",
                    "seconds": round(time.perf_counter() - t0, 1)}
    seconds = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": f"exit code {done.returncode}: {tail}", "seconds": seconds}
    return {**json.loads(lines[-1]), "seconds": seconds}


def environment(device: str) -> dict:
    """GPU name, driver, torch and CUDA versions, host (nothing here initialises CUDA in this process)."""
    import torch

    env = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu_count": os.cpu_count(), "machine": platform.machine(), "gpu": None, "driver": None}
    smi = shutil.which("nvidia-smi")
    if smi and device.startswith("cuda"):
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            name, driver, mem = (v.strip() for v in out[0].split(","))
            env.update(gpu=name, driver=driver, gpu_memory_total=mem)
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def run(args) -> dict:
    from da3stream.bench.gpu_report import summarise, write_report

    cases = plan_for(args)
    device = _resolve_device(args)
    video = Path(args.video) if args.video else default_video()
    if args.dry_run:
        return dry_run(args, cases, device, video)
    _check_video(video, any(c.kind == "e2e" and not c.skip_reason for c in cases))
    out_dir = _out_dir(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"mode": "smoke" if args.smoke else "full", "weights_random": True, "budget_s": args.budget_s,
              "environment": environment(device), "partial": True, "cases": {}}
    t_start = time.perf_counter()
    for case in cases:
        left = args.budget_s - (time.perf_counter() - t_start) - REPORT_RESERVE_S
        entry = {"plan": case.describe()}
        if case.skip_reason:
            entry.update(status="skipped", reason=case.skip_reason)
        elif left <= 1.0 or (case.optional and left < case.est_s):
            entry.update(status="skipped", reason=f"budget: {max(0.0, left):.0f} s left, the case needs ~{case.est_s:.0f} s")
        else:
            entry.update(_run_case(case, device, video, left, args.seed))
        report["cases"][case.name] = entry
        report.update(summarise(report["cases"], device))
        write_report(report, out_dir)
    report["partial"] = False
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    report.update(summarise(report["cases"], device))
    report["files"] = [str(p) for p in write_report(report, out_dir)]
    return report


# ----------------------------------------------------------------------------- worker side
def _worker_main(argv: list[str]) -> int:
    from da3stream.bench.gpu_cases import is_oom, run_e2e_case, run_model_case

    spec = json.loads(argv[0])
    case = Case(**spec["case"])
    try:
        if case.kind == "model":
            result = run_model_case(case, spec["device"], spec["seed"])
        else:
            result = run_e2e_case(case, spec["device"], spec["video"], spec["store"], spec["seed"])
        result = {"status": "ok", **result}
    except Exception as exc:  # one case's failure is recorded in the report; the suite goes on
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        result = {"status": "oom" if is_oom(exc) else "failed", "error": f"{type(exc).__name__}: {first}"}
    sys.stdout.write(json.dumps(result, default=float) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == WORKER_FLAG:
        sys.exit(_worker_main(sys.argv[2:]))
    sys.stderr.write("use: python -m da3stream.bench gpu --help\n")
    sys.exit(2)
