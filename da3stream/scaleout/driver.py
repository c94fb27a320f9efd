"""One source split across K Ray workers: plan, reconstruct the segments in parallel, merge.

:func:`reconstruct_split` is what ``reconstruct(..., config={"scaleout": {"workers": K}})``
and ``run_stream.py SOURCE --out RUN.zarr --workers K`` run. The part stores and
the merge plan live in ``RUN.zarr.parts/`` beside the output, on storage every
worker reaches; a rerun with ``resume=True`` (``--resume``) skips complete
parts, resumes incomplete ones and reruns an interrupted merge. The folder is
removed once the merged store is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from da3stream.config import load_config, to_dict
from da3stream.errors import ConfigError, StoreError
from da3stream.io.sources import declared_frame_count, open_source, source_options
from da3stream.streaming.summary import RunSummary
from da3stream.scaleout.segment import store_action
from da3stream.scaleout.split import Segment, plan_segments
from da3stream.scaleout.workers import make_workers, predictor_spec, ray_connection, stop_workers, wait_all

log = logging.getLogger(__name__)

__all__ = ["parts_dir", "reconstruct_split"]

SPLIT_NAME = "split.json"
"""The segment plan's file in the parts folder (read back on resume, so segments never move)."""


def parts_dir(out: Path) -> Path:
    """Where the part stores of the split run into ``out`` live."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def source_frame_count(source: Any, cfg) -> int:
    """Source frames (indices ``0..N-1``) of a path source; ConfigError when it cannot be split."""
    if not isinstance(source, (str, Path)):
        raise ConfigError("scaleout.workers > 1 needs a source path (video, image folder or bag) that every worker "
                          "can open; a frame iterator cannot be split")
    with open_source(source, **source_options(cfg.source)) as src:
        desc = src.describe()
    n = declared_frame_count(desc)
    if not n:
        raise ConfigError(f"{source}: frame count unknown, so it cannot be split across workers")
    if cfg.source.max_frames is not None:
        n = min(int(n), int(cfg.source.max_frames) * int(cfg.source.stride))
    return int(n)


def reconstruct_split(source: Any, out: str | Path, *, predictor: Any = None, config: Any = None,
                      resume: bool = False, progress: Optional[Callable[[dict], None]] = None,
                      overwrite: bool = False) -> RunSummary:
    """Reconstruct ``source`` into ``out`` with ``scaleout.workers`` Ray workers (see the module docstring)."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    out, folder = Path(out), parts_dir(Path(out))
    n_frames = source_frame_count(source, cfg)  # a bad source fails here, before Ray starts
    done = _existing(out, folder, resume, overwrite)
    if done is not None:
        return done
    spec = predictor_spec(predictor)
    config_dict = to_dict(cfg)
    with ray_connection(cfg.scaleout.ray_address) as ray:
        folder.mkdir(parents=True, exist_ok=True)
        plan_path = folder / SPLIT_NAME
        workers = make_workers(ray, cfg.scaleout.workers, spec, cfg, config_dict)
        if plan_path.exists():  # a resumed run keeps its segments
            doc = json.loads(plan_path.read_text(encoding="utf-8"))
            segments, chunk_size = [Segment(**s) for s in doc["segments"]], int(doc["chunk_size"])
        else:
            chunk_size = cfg.chunk_size or ray.get(workers[0].chunk_size.remote(str(source)))
            segments = plan_segments(n_frames, cfg.scaleout.workers, chunk_size, cfg.overlap, cfg.source.stride)
            plan_path.write_text(json.dumps({"segments": [asdict(s) for s in segments], "chunk_size": chunk_size}),
                                 encoding="utf-8")
        overrides = {"chunk_size": int(chunk_size)}
        parts = [str(folder / f"part-{s.k:03d}.zarr") for s in segments]

        owned = [(s.own_stop if s.own_stop is not None else n_frames) - s.own_start for s in segments]
        read = [0]

        def segment_done(k: int, result: dict, elapsed: float) -> None:
            log.info("segment %d/%d done (%s) after %.1f s", k + 1, len(segments), result.get("status"), elapsed)
            read[0] += owned[k]
            if progress is not None:  # "read": source frames of the segments done (each counted once)
                progress({"frames": owned[k], "read": read[0], "chunk": -1, "status": 0, "loops": 0,
                          "segments_done": k + 1, "segments": len(segments)})

        t_seg = time.perf_counter()
        try:
            seg_results = wait_all(ray, [workers[s.k % len(workers)].run_segment.remote(str(source), p, s, overrides)
                                         for p, s in zip(parts, segments)], segment_done)
            t_merge = time.perf_counter()
            report = _merge(ray, workers, parts, out, overrides)
        except BaseException:
            stop_workers(ray, workers)  # the other segments stop too; --resume continues them
            raise
    shutil.rmtree(folder, ignore_errors=True)
    summary = _summary(out)
    summary.timings = {"segments": round(t_merge - t_seg, 4), "merge": round(time.perf_counter() - t_merge, 4),
                       "total": round(time.perf_counter() - t0, 4), "segments_run": len(segments),
                       "merge_steps": report["seconds"], "parts": seg_results}
    return summary


def _merge(ray: Any, workers: list, parts: list, out: Path, overrides: dict) -> dict:
    """The merge on the workers: prepare on one, the loop search spread over all, the graph on one."""
    t0 = time.perf_counter()
    wait_all(ray, [workers[0].merge_step.remote("prepare", parts, str(out), overrides)])
    t1 = time.perf_counter()
    n = len(workers)
    found = wait_all(ray, [w.merge_step.remote("loops", parts, str(out), overrides, _share(out, k, n))
                           for k, w in enumerate(workers)])
    t2 = time.perf_counter()
    report = wait_all(ray, [workers[0].merge_step.remote("finish", parts, str(out), overrides, found)])[0]
    report["seconds"] = {"prepare": round(t1 - t0, 4), "loops": round(t2 - t1, 4),
                         "graph": round(time.perf_counter() - t2, 4)}
    return report


def _share(out: Path, k: int, n: int) -> set:
    """Query windows of worker ``k`` of ``n`` in the loop search: every n-th window (revisits spread evenly)."""
    from da3stream.io.store import RunStore

    return set(range(k, RunStore.open(out, "r").n_chunks, n))


def _existing(out: Path, folder: Path, resume: bool, overwrite: bool) -> Optional[RunSummary]:
    """The summary of a complete ``out`` to return as is, or None to run (after the checks a run makes)."""
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        return None
    if not resume:
        if folder.exists():
            raise StoreError(f"{folder}: parts of an unfinished split run; pass --resume to continue it")
        if out.exists() and any(out.iterdir()):
            raise StoreError(f"{out}: store already exists; pass --resume to continue it or choose another --out")
        return None
    action = store_action(out)
    if action == "skip":  # complete: only the parts folder may be left (a kill while removing it)
        log.info("%s: complete; nothing to resume", out)
        shutil.rmtree(folder, ignore_errors=True)
        return _summary(out)
    if action == "resume" and not folder.exists():
        raise StoreError(f"{out}: not the store of an unfinished split run (no {folder.name}); "
                         "resume it without --workers")
    return None


def _summary(out: Path) -> RunSummary:
    """A :class:`RunSummary` of the merged store."""
    from da3stream.io.store import RunStore

    st = RunStore.open(out, "r")
    c, chunks = st.committed, st.chunks_table()
    return RunSummary(store=str(out), status=st.status, n_read=int(c["n_read"]), n_frames=int(c["n_frames"]),
                      n_keyframes=int(c["n_frames"]), n_chunks=int(c["n_chunks"]), n_loops=int(c["n_loops"]),
                      n_loop_candidates=int(c["n_candidates"]), n_points=int(c["n_points"]),
                      n_gated=int((chunks["status"] == 1).sum()),
                      n_segments=int(chunks["segment"].max()) + 1 if chunks["segment"].size else 0,
                      chunk_size=int(st.config.get("chunk_size") or 0), overlap=int(st.config.get("overlap", 0)),
                      model=st.model)
