"""Many sources, one store each, across Ray workers: :func:`reconstruct_many` (``run_stream.py batch``).

Each source goes to the next free worker (Ray's :class:`ray.util.ActorPool`
hands them out); complete stores are skipped, incomplete ones resumed, and a
source that fails becomes one line in the summary while the others go on.
The summary (source, store, status, frames, ATE when ground truth is given,
seconds, error) is returned and written to ``OUT_DIR/summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from da3stream.config import load_config, to_dict
from da3stream.errors import ConfigError, Da3StreamError
from da3stream.scaleout.segment import store_action
from da3stream.scaleout.workers import make_workers, predictor_spec, ray_connection

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_NAME", "ground_truth_in", "reconstruct_many", "run_one", "store_names", "summary_table"]

SUMMARY_NAME = "summary.json"


def store_names(sources: Sequence[Any]) -> list[str]:
    """One store name per source (its file or folder name without suffix; repeated names get ``-2``, ``-3`` ...)."""
    names, seen = [], {}
    for s in sources:
        base = Path(str(s).rstrip("/")).stem or "source"
        seen[base] = seen.get(base, 0) + 1
        names.append(f"{base}.zarr" if seen[base] == 1 else f"{base}-{seen[base]}.zarr")
    return names


def run_one(source: Any, out: Path, predictor: Callable[[], Any], config: Any, gt: Optional[str]) -> dict:
    """One source into ``out``: skipped when complete, resumed when incomplete; errors become the row's ``error``."""
    t0 = time.perf_counter()
    row = {"source": str(source), "store": str(out), "status": "failed", "frames": None, "ate_rmse": None,
           "seconds": None, "error": None}
    try:
        action = store_action(out)
        if action == "skip":
            row["status"] = "skipped"
        else:
            from da3stream.streaming.pipeline import reconstruct

            summary = reconstruct(source, out, predictor=predictor(), config=config, resume=out.exists())
            row["status"] = summary.status
        from da3stream.io.store import RunStore

        row["frames"] = RunStore.open(out, "r").n_frames
        if gt:
            from da3stream.io.evaluation.metrics import evaluate

            row["ate_rmse"] = float(evaluate(out, gt)["ate_rmse"])
    except Da3StreamError as exc:
        row["error"] = str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - one source's failure must not stop the batch
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def reconstruct_many(sources: Sequence[Any], out_dir: str | Path, *, predictor: Any = None, config: Any = None,
                     ray_address: Optional[str] = None, ground_truth: Optional[dict] = None,
                     progress: Optional[Callable[[dict], None]] = None, workers: Optional[int] = None) -> list[dict]:
    """Reconstruct every source into ``out_dir/<name>.zarr`` on Ray workers; the summary rows, in source order.

    Args:
        sources: video paths, image folders or bags.
        out_dir: the folder of the stores and of ``summary.json``.
        predictor: a picklable predictor or a zero-argument factory (None: each worker loads ``model.id``).
        config: YAML path, dict of overrides or config (``scaleout.*`` sets the workers' resources).
        ray_address: the Ray cluster (None: ``scaleout.ray_address``, else a local instance).
        ground_truth: source -> TUM ground truth file, for the ATE column.
        progress: called after each source with ``done``, ``total``, ``elapsed_s`` (since the workers were up),
            ``eta_s`` and the source's row.
        workers: worker actors (None: ``scaleout.workers``, at most one per source).
    """
    if not sources:
        raise ConfigError("batch: no sources given")
    cfg = load_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = predictor_spec(predictor)
    gts = {str(k): str(v) for k, v in (ground_truth or {}).items()}
    outs = [out_dir / n for n in store_names(sources)]
    n_workers = max(1, min(int(workers or cfg.scaleout.workers), len(sources)))
    rows: list = [None] * len(sources)
    with ray_connection(ray_address or cfg.scaleout.ray_address) as ray:
        from ray.util import ActorPool

        workers = make_workers(ray, n_workers, spec, cfg, to_dict(cfg))
        pool = ActorPool(list(workers))
        t0 = time.perf_counter()
        jobs = list(enumerate(sources))
        results = pool.map_unordered(lambda a, job: a.run_source.remote(str(job[1]), str(outs[job[0]]),
                                                                         gts.get(str(job[1]))), jobs)
        position = {str(o): k for k, o in enumerate(outs)}  # store paths are unique, sources may repeat
        for done, row in enumerate(results, start=1):
            rows[position[row["store"]]] = row
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress({"done": done, "total": len(sources), "elapsed_s": elapsed,
                          "eta_s": elapsed / done * (len(sources) - done), "row": row})
    (out_dir / SUMMARY_NAME).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows


def ground_truth_in(folder: str | Path, sources: Sequence[Any]) -> dict:
    """source -> ``folder/<source name>.tum`` for the sources that have one."""
    out = {}
    for s in sources:
        p = Path(folder) / (Path(str(s).rstrip("/")).stem + ".tum")
        if p.is_file():
            out[str(s)] = str(p)
    return out


def summary_table(rows: list[dict]) -> str:
    """The summary as a text table: source, status, frames, ATE, seconds, error."""
    lines = [f"{'source':40s} {'status':9s} {'frames':>7s} {'ATE':>9s} {'seconds':>8s}  error"]
    for r in rows:
        ate = "" if r["ate_rmse"] is None else f"{r['ate_rmse']:.4f}"
        lines.append(f"{r['source'][-40:]:40s} {r['status']:9s} {r['frames'] or '':>7} {ate:>9s} "
                     f"{r['seconds'] or 0:8.1f}  {r['error'] or ''}")
    return "\n".join(lines)
