"""CPU memory-model check: the calibrated estimate against measured peak RSS, with the machine it ran on.

``python -m da3stream.bench memory [--cases 2x280x504 8x140x196 ...] [--repeat 3] [--malloc pinned default]``

Peak RSS depends on the machine: the CPU's instruction set decides which
oneDNN/BLAS kernels run and how much scratch they take, and the allocator
decides how much freed memory stays resident. The constants in
``da3stream.core.memory_model`` were fitted on one machine, so the comparison
is a benchmark figure, not a test: this command reports, per case and malloc
mode, the estimate, every measured peak-RSS increase (each in a fresh
process, see ``da3stream.bench.model.measure``), the smallest one (work
beside the run can only raise a peak) and the relative error, together with
what the figure depends on (``machine``): CPU model and flags, BLAS kernels,
allocator, threads and the variables that steer them.

The memory planner does not rely on these fitted constants; it plans CPU runs
with :data:`da3stream.core.memory_model.CPU_PLANNING_CONSTANTS`, which carry
a cross-machine margin (see there), and retries smaller windows on
``MemoryError``.
"""

from __future__ import annotations

import argparse
import os
import platform

MIB = 2**20
DEFAULT_CASES = ("2x280x504", "8x140x196", "6x182x252", "4x280x504", "12x140x196")
"""views x height x width at network resolution (multiples of 14)."""
MALLOC_MODES = ("pinned", "default")
STEERING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                      "MKL_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD")
CPU_FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
                         "asimd", "sve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="network preset (the constants were fitted on small)")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="VIEWSxHxW cases at network size")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process measurements per case (smallest wins)")
    parser.add_argument("--malloc", nargs="+", default=list(MALLOC_MODES), choices=MALLOC_MODES,
                        help="glibc malloc modes: pinned mmap threshold, and/or the default heap")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in each measurement")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")


def parse_case(text: str) -> tuple[int, int, int]:
    """``"8x140x196"`` -> (8, 140, 196); a ConfigError names the bad case."""
    from da3stream.errors import ConfigError

    try:
        views, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--cases: expected VIEWSxHxW such as 8x140x196, got {text!r}") from None
    return views, h, w


def _cpu_info() -> dict:
    """CPU model and the instruction-set flags that pick oneDNN/BLAS kernels (Linux ``/proc/cpuinfo``)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or None
    return {"model": model, "logical_cpus": os.cpu_count(),
            "flags": sorted(f for f in CPU_FLAGS_OF_INTEREST if f in flags)}


def _blas_info() -> dict:
    """What linear algebra runs: torch's build flags and CPU capability, numpy's BLAS (threadpoolctl if present)."""
    import torch

    info = {"torch": torch.__version__, "torch_cpu_capability": None, "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(), "threadpools": None}
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture",
                                                      "num_threads", "prefix")} for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def _allocator_info() -> dict:
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        libc = None
    return {"libc": libc or platform.libc_ver()[0] or None, "ld_preload": os.environ.get("LD_PRELOAD")}


def machine_info() -> dict:
    """Everything a peak-RSS figure depends on besides the case itself."""
    return {"cpu": _cpu_info(), "blas": _blas_info(), "allocator": _allocator_info(),
            "environment": {k: os.environ.get(k) for k in STEERING_VARIABLES}, "platform": platform.platform()}


def measure_case(preset: str, views: int, h: int, w: int, malloc: str, repeat: int, threads: int,
                 timeout: float) -> dict:
    """Estimate and ``repeat`` fresh-process peak-RSS increases of one forward, in MiB."""
    from da3stream.bench.model import measure_in_subprocess
    from da3stream.core.memory_model import (CPU_CONSTANTS, CPU_PINNED_CONSTANTS, CPU_PINNED_MALLOC_ENV,
                                             MemoryConstants, estimate_breakdown)

    pinned = malloc == "pinned"
    b = estimate_breakdown(preset, views, h, w, "float32", "cpu",
                           constants=CPU_PINNED_CONSTANTS if pinned else CPU_CONSTANTS)
    analytic = estimate_breakdown(preset, views, h, w, "float32", "cpu", constants=MemoryConstants(1.0, 0))
    measured, evicted = [], []
    for _ in range(max(1, repeat)):
        res = measure_in_subprocess("ours", preset, views, h, w, device="cpu", dtype="float32", repeat=0,
                                    threads=threads, timeout=timeout, env=CPU_PINNED_MALLOC_ENV if pinned else None)
        measured.append(res["peak_forward_delta_bytes"] / MIB)
        evicted.append(res.get("rss_file_evicted_bytes", 0) / MIB)
    estimate = (b["activations"] + b["overhead"]) / MIB
    best = min(measured)
    return {"case": f"{views}x{h}x{w}", "malloc": malloc, "estimate_mib": estimate,
            "analytic_live_mib": analytic["activations"] / MIB, "measured_mib": measured,
            "measured_min_mib": best, "rel_error": (estimate - best) / best if best else None,
            "rss_file_evicted_mib": evicted}


def run(args: argparse.Namespace) -> dict:
    cases = [parse_case(c) for c in args.cases]
    rows = [measure_case(args.preset, v, h, w, m, args.repeat, args.threads, args.timeout)
            for m in args.malloc for v, h, w in cases]
    summary = {}
    for m in args.malloc:
        errs = [abs(r["rel_error"]) for r in rows if r["malloc"] == m and r["rel_error"] is not None]
        summary[m] = {"max_abs_rel_error": max(errs) if errs else None,
                      "mean_abs_rel_error": sum(errs) / len(errs) if errs else None}
    return {"preset": args.preset, "threads": args.threads, "weights_random": True, "machine": machine_info(),
            "cases": rows, "summary": summary}
