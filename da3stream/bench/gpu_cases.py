"""The cases of ``python -m da3stream.bench gpu``: what runs, in which order, and what each is checked against.

A :class:`Case` is one measurement in its own subprocess (so its peak memory is
its own): one side of a network comparison (``ours`` or ``official``) at one
size, or the end-to-end run on a looped video. :func:`full_plan` is the GPU
suite; :func:`smoke_plan` is the same list shrunk for a CPU (DA3-Small, 4 views,
low resolution) so that CI runs every code path of the suite. The order puts
the required cases first and DA3-Giant last: it is the case dropped when the
time budget is short.

``est_s`` is the time a case is planned to take on an H100/H200-class card,
start-up of its process included (import, CUDA context, building the network
with random weights on the CPU and moving it). It decides only whether an
optional case still fits in the budget; a required case runs whenever any
budget is left, under a timeout of what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GB = 1e9
"""Targets in GB are decimal (10^9 bytes), the stricter reading of "GB"."""

TARGETS = {
    "peak_memory_ours_over_official_max": 0.5,
    "large_120_peak_gb_max": 6.0,
    "fps_ours_over_official_min": 1.3,
    "e2e_target_ratio_min": 0.85,
    "e2e_peak_gpu_gb_max": 8.0,
    "hour_wall_minutes_max": 60.0,
}
"""The issue's GPU targets (checked only on a CUDA run; a smoke run reports them as not applicable)."""

HOUR_FRAMES = 108_000
"""An hour of 30 fps video."""


@dataclass(frozen=True)
class Case:
    """One measurement of the suite, run in a fresh subprocess."""

    name: str
    """Unique key in the report, e.g. ``large-120-ours``."""
    kind: str
    """``model`` (one network's forward) or ``e2e`` (the whole engine on a looped video)."""
    group: str
    """Cases of one comparison share a group (``large-120``); the report pairs ours with official in it."""
    side: str
    """``ours`` (bf16 weights on CUDA), ``official`` (fp32 weights + bf16 autocast on CUDA) or ``engine``."""
    preset: str
    """Network preset (our key: small, large, giant)."""
    views: int
    """Views in one forward (model) or the chunk size (e2e)."""
    process_res: int
    """Longest side at network resolution."""
    aspect: str = "4:3"
    """Frame aspect W:H of a model case's input (an e2e case takes the video's own)."""
    repeat: int = 3
    """Timed forwards after one warm-up (model cases)."""
    frames: int = 0
    """Source frames of an e2e case (the video is looped back and forth to reach it)."""
    overlap: int = 8
    """Window overlap of an e2e case."""
    optional: bool = False
    """Skipped (and said so) when the budget left is below ``est_s``."""
    est_s: float = 60.0
    """Planned seconds on an H100/H200 card, start-up included (see the module docstring)."""
    skip_reason: Optional[str] = None
    """Set when the plan itself leaves the case out (e.g. Giant in a smoke run)."""
    targets: tuple = ()
    """Names in :data:`TARGETS` that this case's figures are checked against."""

    def describe(self) -> dict:
        """The fields that matter for this kind of case (for the plan and the report)."""
        keys = ["name", "side", "preset", "views", "process_res"]
        keys += ["aspect", "repeat"] if self.kind == "model" else ["frames", "overlap"]
        keys += ["optional", "est_s", "targets"] + (["skip_reason"] if self.skip_reason else [])
        out = {k: getattr(self, k) for k in keys}
        out["targets"] = list(self.targets)
        return out


def full_plan(*, giant: bool = True, frames: int = 2000, repeat: int = 3) -> list[Case]:
    """The GPU suite: Large at 120 and 60 views 504x378, the end-to-end run, then Giant at 120 views."""
    pair = ("peak_memory_ours_over_official_max", "fps_ours_over_official_min")
    cases = []
    for side in ("ours", "official"):
        cases.append(Case(f"large-120-{side}", "model", "large-120", side, "large", 120, 504, repeat=repeat,
                          est_s=35.0, targets=pair + (("large_120_peak_gb_max",) if side == "ours" else ())))
    for side in ("ours", "official"):
        cases.append(Case(f"large-60-{side}", "model", "large-60", side, "large", 60, 504, repeat=repeat, est_s=25.0,
                          targets=pair))
    cases.append(Case("e2e-large-robot", "e2e", "e2e", "engine", "large", 120, 504, frames=frames, overlap=8,
                      est_s=120.0, targets=("e2e_target_ratio_min", "e2e_peak_gpu_gb_max", "hour_wall_minutes_max")))
    for side in ("ours", "official"):
        cases.append(Case(f"giant-120-{side}", "model", "giant-120", side, "giant", 120, 504, repeat=repeat,
                          optional=True, est_s=60.0, targets=pair,
                          skip_reason=None if giant else "left out by --no-giant"))
    return cases


def smoke_plan(*, frames: int = 16) -> list[Case]:
    """The same cases on a CPU: DA3-Small, 4 (and 2) views at 112 px, a 16-frame e2e run; Giant is left out."""
    cases = []
    for group, views in (("large-120", 4), ("large-60", 2)):
        for side in ("ours", "official"):
            cases.append(Case(f"{group}-{side}", "model", group, side, "small", views, 112, repeat=1, est_s=10.0))
    cases.append(Case("e2e-large-robot", "e2e", "e2e", "engine", "small", 4, 112, frames=frames, overlap=1,
                      est_s=20.0))
    for side in ("ours", "official"):
        cases.append(Case(f"giant-120-{side}", "model", "giant-120", side, "giant", 4, 112, repeat=1, optional=True,
                          est_s=10.0, skip_reason="smoke: DA3-Giant is not run on a CPU"))
    return cases


# ----------------------------------------------------------------------------- inside a case's subprocess
def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of torch (CUDA or CPU allocator)."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()


def cuda_peaks() -> dict:
    """This process's peak allocated and reserved CUDA bytes (empty off CUDA)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()), "gpu": torch.cuda.get_device_name()}


def run_model_case(case: Case, device: str, seed: int = 0) -> dict:
    """One side's forward timing and peak memory (:func:`da3stream.bench.model.measure`), plus reserved memory."""
    from da3stream.bench.model import measure, network_hw_for

    h, w = network_hw_for(case.process_res, case.aspect)
    dtype = "auto" if case.side == "ours" else "float32"
    res = measure(case.side, case.preset, case.views, h, w, device=device, dtype=dtype, repeat=case.repeat, seed=seed)
    res.update(cuda_peaks())
    res.setdefault("peak_allocated_bytes", res["peak_bytes"])  # CPU: peak RSS stands in for both
    res.setdefault("peak_reserved_bytes", res["peak_bytes"])
    return res


def ping_pong(n_video: int, n_frames: int) -> list[int]:
    """Video frame of each of ``n_frames`` stream frames, played forward then backward so motion never jumps."""
    if n_video < 2:
        return [0] * n_frames
    period = 2 * (n_video - 1)
    return [k if k < n_video else period - k for k in (i % period for i in range(n_frames))]


def looped_video(path: str, n_frames: int) -> tuple[list, float, int]:
    """``(frames, fps, decoded)``: the video decoded once and looped back and forth to ``n_frames`` frames."""
    from da3stream.errors import SourceError
    from da3stream.io.sources import open_source

    with open_source(str(path)) as src:
        got = [(f.timestamp, f.image) for f in src]
    if not got:
        raise SourceError(f"{path}: no decodable frames")
    span = got[-1][0] - got[0][0]
    fps = (len(got) - 1) / span if len(got) > 1 and span > 0 else 30.0
    return [got[k][1] for k in ping_pong(len(got), n_frames)], fps, len(got)


def run_e2e_case(case: Case, device: str, video: str, store, seed: int = 0) -> dict:
    """The engine on the looped video with a random-weight network, then the network alone on the same windows."""
    from da3stream.bench.pipeline import _model_only, _run_engine, _warm_up
    from da3stream.core.da3_predictor import random_predictor
    from da3stream.io.sources import Frame

    frames, fps, decoded = looped_video(video, case.frames)

    def frame_source():
        for i, image in enumerate(frames):
            yield i, i / fps, image

    predictor = random_predictor(case.preset, seed=seed, device=device, dtype="auto", process_res=case.process_res)
    _warm_up(predictor, frame_source)
    # keyframes off: every frame goes through the network (the worst case for the hour)
    cfg = {"chunk_size": case.views, "overlap": case.overlap, "seed": seed, "predict_ahead": 1,
           "keyframes.enabled": False}
    source = (Frame(index=i, timestamp=t, image=im) for i, t, im in frame_source())
    res = _run_engine(source, store, predictor, cfg, None)
    windows, marks = res.pop("_windows"), res.pop("_marks")
    res.update(cuda_peaks())  # the engine run's peaks (its reset came after the warm-up)
    res["model_only"] = _model_only(windows, frame_source, predictor)
    res.update({"video": str(video), "video_frames_decoded": decoded, "video_fps": round(fps, 3),
                "model": predictor.describe(), "network_hw": list(predictor.network_hw(frames[0].shape[:2]))})
    res.update(e2e_figures(res, marks))
    return res


def e2e_figures(res: dict, marks: list) -> dict:
    """The e2e case's derived figures: target ratio, CPU stages' share, steady rate and the hour extrapolation."""
    wall = max(res["wall_seconds"], 1e-9)
    t = res["stage_seconds"]
    mo_fps = res["model_only"]["fps"]
    out = {"target_ratio": (round(res["end_to_end_fps"] / (mo_fps * res["new_frame_fraction"]), 4)
                            if mo_fps and res["new_frame_fraction"] else None)}
    cpu_stages = {k: float(t.get(k, 0.0)) for k in ("read", "align", "loop", "fuse")}
    out["cpu_stages"] = {"main_thread_seconds": round(sum(cpu_stages.values()), 3),
                         "main_thread_share": round(sum(cpu_stages.values()) / wall, 4),
                         "writer_busy_share": round(float(t.get("write_busy", 0.0)) / wall, 4),
                         "predict_wait_share": round(float(t.get("predict_wait", 0.0)) / wall, 4),
                         "by_stage_seconds": cpu_stages}
    # steady rate: source frames read per second over the second half of the run (warm-up and start-up excluded)
    half = [m for m in marks if m[0] >= marks[-1][0] / 2] if marks else []
    steady = ((half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
              if len(half) >= 2 and half[-1][0] > half[0][0] else None)
    rate = steady or res["source_fps"]
    out["rate"] = {"source_fps_whole_run": res["source_fps"],
                   "source_fps_second_half": round(steady, 3) if steady else None,
                   "marks_seconds_read_committed": [list(m) for m in marks]}
    out["hour"] = {"frames": HOUR_FRAMES, "source_fps_used": round(rate, 3),
                   "predicted_wall_minutes": round(HOUR_FRAMES / rate / 60.0, 2) if rate else None}
    return out
