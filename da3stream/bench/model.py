"""Network benchmark: throughput and peak memory of our DA3 network, optionally beside the official one.

``python -m da3stream.bench model --size large --views 120 --res 504 --aspect 4:3
[--device auto] [--dtype auto] [--compare-official] [--repeat N]``

Both networks get RANDOM weights (``weights_random: true`` in the output) and the
same seeded input tensor (1, views, 3, h, w) at network resolution; (h, w) comes
from the official resize rule for a frame of the given aspect ratio with its
longest side scaled to ``--res``. Each side runs in its own fresh subprocess so
peak memory is not shared:

- ours: weights cast to ``--dtype`` (auto: bf16 on CUDA, fp32 on CPU), no autocast;
- official (``--compare-official``, needs the ``depth_anything_3`` package):
  fp32 weights, bf16 autocast on CUDA (as DA3-Streaming runs it), plain fp32 on CPU.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the
process's peak RSS (``VmHWM``, reset right before the first forward), reported
whole and as the increase over the RSS after building the network and the input
(``peak_forward_delta_bytes``); ``first_forward_delta_bytes`` is the same for the
cold forward alone (glibc's heap can grow over repeated forwards), which is what
``da3stream.core.memory_model`` estimates (``ours_estimate_bytes.forward_delta``).
RSS counts file-backed pages too; ``rss_file_evicted_bytes`` > 0 means the kernel
evicted library pages during the run (memory pressure) and the CPU peak reads low.
Frames/s is ``views / median forward seconds`` over ``--repeat`` timed forwards
after one untimed warm-up forward (``--repeat 0``: the single cold forward is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

WORKER_FLAG = "--da3stream-model-bench-worker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="large", help="preset: small, base, large, giant, mono-large, ...")
    parser.add_argument("--views", type=int, default=120, help="views in one forward")
    parser.add_argument("--res", type=int, default=504, help="longest side at network resolution (process_res)")
    parser.add_argument("--aspect", default="4:3", help="frame aspect W:H, e.g. 4:3 or 16:9")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="our weight dtype: auto, float32, bfloat16, float16")
    parser.add_argument("--compare-official", action="store_true", help="also run the official network")
    parser.add_argument("--repeat", type=int, default=1, help="timed forwards after one warm-up (0: time the cold run)")
    parser.add_argument("--head-chunk", type=int, default=None, help="views per head micro-batch (ours)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0, help="weights and input seed")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per side before giving up")


def network_hw_for(res: int, aspect: str) -> tuple[int, int]:
    """(h, w) at network resolution for a W:H ``aspect`` frame whose longest side becomes ``res``."""
    from da3stream.core.preprocess import network_hw
    from da3stream.errors import ConfigError

    try:
        aw, ah = (float(v) for v in str(aspect).split(":"))
    except ValueError:
        raise ConfigError(f"--aspect: expected W:H such as 4:3, got {aspect!r}") from None
    if aw <= 0 or ah <= 0:
        raise ConfigError(f"--aspect: sides must be positive, got {aspect!r}")
    scale = 4096.0 / max(aw, ah)  # a large nominal frame; only its aspect matters
    return network_hw((int(round(ah * scale)), int(round(aw * scale))), int(res), "upper_bound_resize")


# ----------------------------------------------------------------------------- worker side
def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image: ``VmHWM`` on Linux.

    ``ru_maxrss`` is not used on Linux: after fork + exec it starts from the parent's
    RSS, so a worker started by a large process (a test runner) would report the parent's size.
    """
    hwm = _status_bytes("VmHWM")
    if hwm:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _build_official(preset: str):
    import logging

    os.environ.setdefault("DA3_LOG_LEVEL", "WARN")
    logging.getLogger("depth_anything_3").setLevel(logging.ERROR)
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    from da3stream.core.network.presets import official_model_name

    return create_object(load_config(MODEL_REGISTRY[official_model_name(preset)])).eval()


def _build_side(side: str, preset: str, dev: str, dtype: str, head_chunk):
    """``(network on dev, weight dtype, autocast dtype or None)`` of one side (ours or official)."""
    import torch

    if side == "ours":
        from da3stream.core.da3_predictor import resolve_dtype
        from da3stream.core.network import build_network

        wdtype = resolve_dtype(dtype, dev)
        net = build_network(preset)
        if head_chunk:
            net.head_chunk = int(head_chunk)
        return net.to(device=dev, dtype=wdtype), wdtype, None
    if side == "official":
        cuda = dev.startswith("cuda")
        autocast = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        return _build_official(preset).to(dev), torch.float32, autocast
    raise ValueError(f"side must be 'ours' or 'official', got {side!r}")


def _timed_forwards(forward, repeat: int, cuda: bool) -> tuple[list[float], int]:
    """``(sorted timed forward seconds, peak memory after the cold forward)``: one warm-up unless ``repeat`` is 0."""
    import torch

    times = []
    for i in range(max(1, repeat) + (1 if repeat > 0 else 0)):
        t0 = time.perf_counter()
        out = forward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        del out
        if i == 0:  # the cold forward: what the memory model estimates
            first_peak = int(torch.cuda.max_memory_allocated()) if cuda else _peak_rss_bytes()
        if repeat == 0 or i > 0:
            times.append(dt)
    times.sort()
    return times, first_peak


def _cuda_memory(base_alloc: int, first_peak: int) -> dict:
    import torch

    return {"peak_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_forward_delta_bytes": int(torch.cuda.max_memory_allocated() - base_alloc),
            "first_forward_peak_bytes": first_peak, "gpu": torch.cuda.get_device_name()}


def _cpu_memory(rss0: int, rss_file0: int, first_peak: int, hwm_reset: bool) -> dict:
    peak = _peak_rss_bytes()
    return {"peak_bytes": peak, "peak_forward_delta_bytes": max(0, peak - rss0),
            "first_forward_delta_bytes": max(0, first_peak - rss0), "rss_before_forward_bytes": rss0,
            # file-backed pages (libraries) evicted under memory pressure lower the RSS peak: report it
            "rss_file_evicted_bytes": max(0, rss_file0 - _status_bytes("RssFile")),
            "peak_rss_reset_before_forward": hwm_reset}


def measure(side: str, preset: str, views: int, height: int, width: int, *, device: str = "cpu",
            dtype: str = "float32", repeat: int = 1, head_chunk=None, threads: int = 0, seed: int = 0) -> dict:
    """One side's forward timing and peak memory, in THIS process (call it in a fresh one)."""
    import gc

    import torch

    from da3stream.core.da3_predictor import resolve_device

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    cuda = dev.startswith("cuda")
    torch.manual_seed(seed)
    net, wdtype, autocast = _build_side(side, preset, dev, dtype, head_chunk)
    n_params = sum(p.numel() for p in net.parameters())
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, views, 3, height, width, generator=gen).to(device=dev, dtype=wdtype)
    gc.collect()

    def forward():
        with torch.inference_mode():
            if autocast is not None:
                with torch.autocast(device_type="cuda", dtype=autocast):
                    return net(x)
            return net(x)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    rss0 = _rss_bytes()
    rss_file0 = _status_bytes("RssFile")
    hwm_reset = False if cuda else _reset_peak_rss()
    times, first_peak = _timed_forwards(forward, repeat, cuda)
    result = {
        "side": side, "preset": preset, "views": views, "input_shape": [1, views, 3, height, width],
        "device": dev, "dtype": str(wdtype).replace("torch.", ""),
        "autocast": None if autocast is None else str(autocast).replace("torch.", ""),
        "params": n_params, "forward_s": times, "median_forward_s": times[len(times) // 2],
        "frames_per_s": views / times[len(times) // 2],
        "threads": torch.get_num_threads(),
    }
    result.update(_cuda_memory(base_alloc, first_peak) if cuda else _cpu_memory(rss0, rss_file0, first_peak, hwm_reset))
    return result


def measure_in_subprocess(side: str, preset: str, views: int, height: int, width: int, *, timeout: float = 3600.0,
                          env: dict | None = None, **kwargs) -> dict:
    """:func:`measure` in a fresh Python process (so peak RSS / CUDA peaks are its own)."""
    from da3stream.errors import Da3StreamError

    spec = dict(side=side, preset=preset, views=views, height=height, width=width, **kwargs)
    cmd = [sys.executable, "-m", "da3stream.bench.model", WORKER_FLAG, json.dumps(spec)]
    proc_env = dict(os.environ)
    proc_env.update(env or {})
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=proc_env)
    except subprocess.TimeoutExpired:
        raise Da3StreamError(f"model benchmark ({side}): no result within {timeout:.0f} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Da3StreamError(f"model benchmark ({side}) failed with exit code {done.returncode}: {tail}")
    return json.loads(lines[-1])


def run(args: argparse.Namespace) -> dict:
    from da3stream.core.da3_predictor import resolve_device, resolve_dtype
    from da3stream.core.memory_model import estimate_breakdown

    h, w = network_hw_for(args.res, args.aspect)
    dev = resolve_device(args.device)
    wdtype = str(resolve_dtype(args.dtype, dev)).replace("torch.", "")
    common = dict(device=dev, repeat=args.repeat, threads=args.threads, seed=args.seed, timeout=args.timeout)
    ours = measure_in_subprocess("ours", args.size, args.views, h, w, dtype=wdtype, head_chunk=args.head_chunk,
                                 **common)
    result = {
        "preset": args.size, "views": args.views, "network_hw": [h, w], "input_shape": ours["input_shape"],
        "device": dev, "dtype": wdtype, "weights_random": True,
        "memory_kind": "cuda_max_memory_allocated" if dev.startswith("cuda") else "peak_rss",
        "ours": ours,
    }
    est = estimate_breakdown(args.size, args.views, h, w, wdtype, dev, head_chunk=args.head_chunk)
    # CUDA: compare "total" with peak_bytes; CPU: compare "forward_delta" with peak_forward_delta_bytes
    est["forward_delta"] = est["activations"] + est["overhead"]
    result["ours_estimate_bytes"] = est
    if args.compare_official:
        off = measure_in_subprocess("official", args.size, args.views, h, w, dtype="float32", **common)
        result["official"] = off
        result["ratios"] = {
            "peak_memory_ours_over_official": ours["peak_bytes"] / off["peak_bytes"],
            "forward_delta_memory_ours_over_official": (ours["peak_forward_delta_bytes"]
                                                        / max(1, off["peak_forward_delta_bytes"])),
            "throughput_ours_over_official": ours["frames_per_s"] / off["frames_per_s"],
        }
    return result


def _worker_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = measure(spec.pop("side"), spec.pop("preset"), spec.pop("views"), spec.pop("height"),
                     spec.pop("width"), **spec)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == WORKER_FLAG:
        sys.exit(_worker_main(sys.argv[2:]))
    sys.stderr.write("use: python -m da3stream.bench model --help\n")
    sys.exit(2)
