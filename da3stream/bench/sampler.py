"""A background sampler of resident memory, CPU time and progress, for benchmarks.

:class:`ResourceSampler` runs a daemon thread that records, every
``interval_s`` seconds, the process's resident set size (``/proc/self/statm``),
its CPU seconds (user + system, all threads), the CPU seconds of every thread
(``/proc/self/task/*/stat``, named by Python's thread name where the thread is a
Python thread, else by its OS name) and a progress counter that the caller
advances (e.g. frames committed). The samples answer "is memory flat?" and
"does the per-frame cost stay constant?" over a long run, and per-thread CPU
shows which stage uses the cores when wall time is unreliable on a loaded
machine.

Linux only (``/proc``); elsewhere :meth:`ResourceSampler.available` is False and
the sampler records wall time and progress only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Sample:
    """One observation."""

    wall_s: float
    """Seconds since the sampler started."""
    rss_bytes: int
    """Resident set size of the process (0 where /proc is absent)."""
    cpu_s: float
    """Process CPU seconds (user + system, all threads) since the sampler started."""
    progress: int
    """The caller's progress counter (e.g. frames committed)."""


@dataclass
class ResourceSampler:
    """Samples RSS, CPU and progress in a daemon thread; use as a context manager.

    Args:
        interval_s: seconds between samples.
    """

    interval_s: float = 0.25
    samples: list = field(default_factory=list)
    thread_cpu_s: dict = field(default_factory=dict)
    """Thread name -> CPU seconds used while sampled (the last value seen per thread id, summed per name)."""

    def __post_init__(self) -> None:
        self._progress = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._thread_last: dict[int, tuple[str, float]] = {}
        self._thread_base: dict[int, float] = {}

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/self/statm")

    # ------------------------------------------------------------------ control
    def start(self) -> "ResourceSampler":
        self._t0 = time.perf_counter()
        self._cpu0 = _process_cpu()
        self._thread_base = {tid: cpu for tid, (_, cpu) in _thread_cpu().items()}
        self._record()
        self._thread = threading.Thread(target=self._loop, name="da3stream-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record()

    def __enter__(self) -> "ResourceSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def advance(self, n: int) -> None:
        """Add ``n`` to the progress counter (thread-safe enough: one writer)."""
        self._progress += int(n)

    @property
    def progress(self) -> int:
        return self._progress

    # ------------------------------------------------------------------ sampling
    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> None:
        self.samples.append(Sample(time.perf_counter() - self._t0, _rss_bytes(), _process_cpu() - self._cpu0, self._progress))
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid, (os_name, cpu) in _thread_cpu().items():
            self._thread_last[tid] = (names.get(tid, os_name), cpu - self._thread_base.get(tid, 0.0))
        per_name: dict[str, float] = {}
        for name, cpu in self._thread_last.values():
            key = _group_name(name)
            per_name[key] = per_name.get(key, 0.0) + cpu
        self.thread_cpu_s = per_name

    # ------------------------------------------------------------------ analysis
    def rss_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(progress (S,), rss bytes (S,)) of every sample."""
        return (np.array([s.progress for s in self.samples], np.int64),
                np.array([s.rss_bytes for s in self.samples], np.int64))

    def rss_flatness(self, start_fraction: float = 0.1, part: float = 0.2) -> dict:
        """RSS early in the run (from ``start_fraction`` of its progress) vs late (the last ``part``).

        A run's RSS swings by the windows in flight (a prediction, the writer's
        queue) around a level that must not grow. Returns the median and the peak
        RSS over progress ``[start_fraction, start_fraction + part]`` and over
        ``[1 - part, 1]`` (MiB), ``median_growth`` (late median / early median: a
        leak shows here), ``peak_growth`` (late peak / early peak) and
        ``max_growth`` (the largest RSS after ``start_fraction`` over the early
        median). 1.0 = flat.
        """
        prog, rss = self.rss_series()
        total = int(prog.max()) if prog.size else 0
        early = (prog >= start_fraction * total) & (prog <= (start_fraction + part) * total)
        late = prog >= (1.0 - part) * total
        after = prog >= start_fraction * total
        if total == 0 or not early.any() or not late.any():
            nan = float("nan")
            return {"early_median_mib": nan, "late_median_mib": nan, "median_growth": nan, "peak_growth": nan,
                    "max_growth": nan}
        mib = rss / 2**20
        e_med, l_med = float(np.median(mib[early])), float(np.median(mib[late]))
        e_max, l_max = float(mib[early].max()), float(mib[late].max())
        return {"early_median_mib": round(e_med, 1), "late_median_mib": round(l_med, 1),
                "early_peak_mib": round(e_max, 1), "late_peak_mib": round(l_max, 1),
                "median_growth": round(l_med / e_med, 4), "peak_growth": round(l_max / e_max, 4),
                "max_growth": round(float(mib[after].max()) / e_med, 4)}

    def cost_ratio(self, warmup_fraction: float = 0.1, part: float = 0.2, clock: str = "cpu") -> dict:
        """Seconds per unit of progress in the last ``part`` of the run vs the first ``part`` after warm-up.

        ``clock``: ``"cpu"`` (process CPU seconds, robust on a shared machine) or ``"wall"``.
        """
        prog = np.array([s.progress for s in self.samples], np.float64)
        t = np.array([s.cpu_s if clock == "cpu" else s.wall_s for s in self.samples], np.float64)
        total = prog.max() if prog.size else 0.0
        if total <= 0:
            return {"first": float("nan"), "last": float("nan"), "ratio": float("nan")}

        def rate(lo: float, hi: float) -> float:
            t_lo = np.interp(lo * total, prog, t)
            t_hi = np.interp(hi * total, prog, t)
            return float((t_hi - t_lo) / ((hi - lo) * total))

        first = rate(warmup_fraction, warmup_fraction + part)
        last = rate(1.0 - part, 1.0)
        return {"first": first, "last": last, "ratio": last / first if first > 0 else float("nan")}

    def summary(self) -> dict:
        """Peak RSS, CPU seconds and per-thread CPU seconds (JSON-friendly)."""
        rss = [s.rss_bytes for s in self.samples]
        last = self.samples[-1] if self.samples else Sample(0.0, 0, 0.0, 0)
        return {
            "wall_s": round(last.wall_s, 3),
            "cpu_s": round(last.cpu_s, 3),
            "peak_rss_mib": round(max(rss, default=0) / 2**20, 1),
            "thread_cpu_s": {k: round(v, 3) for k, v in sorted(self.thread_cpu_s.items(), key=lambda kv: -kv[1])},
            "n_samples": len(self.samples),
        }


def _group_name(name: str) -> str:
    """Pool threads share one name (``asyncio_0``, ``ThreadPoolExecutor-0_3`` -> their pool)."""
    for prefix in ("asyncio_", "ThreadPoolExecutor-", "zarr"):
        if name.startswith(prefix):
            return prefix.rstrip("_-") + "*"
    return name


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """Thread id -> (OS thread name, CPU seconds) from /proc/self/task (empty where absent)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue  # the thread ended between listdir and open
        lpar, rpar = raw.find("("), raw.rfind(")")
        name = raw[lpar + 1:rpar]
        fields = raw[rpar + 2:].split()
        # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out
