"""Ray workers: one actor per worker, holding its predictor for every run it is given.

Ray Core actors rather than Ray Data: a work item is long (a whole source or a
segment, minutes to hours) and stateful (a model built once per worker, a store
that a restarted worker must resume), which is an actor's job; Ray Data's
``map_batches`` suits many short, stateless items, and measured on this
project's 2-CPU machines it showed no overlap at all where four actors ran in
parallel (docs/SCALEOUT.md). Ray schedules the actors (``num_gpus`` /
``num_cpus`` per worker from ``scaleout``), restarts one whose process dies
(``max_restarts``) and retries its interrupted call there (``max_task_retries``);
the retried call resumes the store the dead process left.

The predictor reaches a worker pickled, or as a zero-argument factory (any
callable without ``predict``) that the worker calls once, for models that
should be built where the GPU is; with neither, the worker loads ``model.id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from da3stream.config import Config
from da3stream.errors import ConfigError, Da3StreamError

log = logging.getLogger(__name__)

__all__ = ["MAX_RESTARTS", "Worker", "make_workers", "predictor_spec", "ray_connection", "remote_error", "stop_workers", "wait_all"]

MAX_RESTARTS = 4
"""Restarts Ray grants a worker whose process died (and retries of the call it was running)."""


@contextlib.contextmanager
def ray_connection(address: Optional[str], num_cpus: Optional[int] = None) -> Iterator[Any]:
    """A connected Ray: the running one, the cluster at ``address``, or a local instance (stopped on exit)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("scale-out needs Ray: pip install 'ray==2.60.0'") from None
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token-auth warning for a local instance
        kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot start or join Ray at {address or 'a local instance'}: {exc}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def predictor_spec(predictor: Any) -> Any:
    """What is sent to the workers: ``predictor`` itself after checking that it pickles (or a factory)."""
    if predictor is None or not callable(getattr(predictor, "predict", None)):
        if predictor is not None and not callable(predictor):
            raise ConfigError(f"predictor {type(predictor).__name__} has no predict(batch) method and is not a factory")
    from ray import cloudpickle

    try:
        cloudpickle.dumps(predictor)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the same user error
        raise ConfigError(f"predictor {type(predictor).__name__} cannot be sent to the Ray workers ({exc}); "
                          "pass a zero-argument factory that builds it instead") from None
    return predictor


class Worker:
    """One Ray worker (used as an actor class; see the module docstring)."""

    def __init__(self, spec_ref: list, config: dict) -> None:
        self._spec_ref, self._config = spec_ref, config  # [ObjectRef of the spec]: fetched when first needed
        self._predictor = None
        logging.basicConfig(level=logging.WARNING)

    def predictor(self) -> Any:
        if self._predictor is None:
            import ray

            spec = ray.get(self._spec_ref[0])
            if spec is None:
                from da3stream.config import load_config
                from da3stream.core import load_predictor

                m = load_config(self._config).model
                if m.id is None:
                    raise ConfigError("no model: pass a predictor or set model.id (--model)")
                spec = load_predictor(m.id, device=m.device, dtype=m.dtype, process_res=m.process_res,
                                      process_res_method=m.process_res_method)
            elif not callable(getattr(spec, "predict", None)):
                spec = spec()
            self._predictor = spec
        return self._predictor

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> int:
        """Build the predictor and load the engine (so timed work starts warm); the process id."""
        import da3stream.streaming.pipeline  # noqa: F401

        self.predictor()
        return os.getpid()

    def chunk_size(self, source: str) -> int:
        """The window length the memory planner picks for ``source``'s frames (config ``chunk_size`` None)."""
        from da3stream.config import load_config
        from da3stream.io.sources import open_source, source_options
        from da3stream.streaming.planner import plan_window

        cfg = load_config(self._config)
        with open_source(source, **source_options(cfg.source)) as src:
            frame = next(iter(src))
        return int(plan_window(cfg, self.predictor(), frame.image.shape[:2]).chunk_size)

    def run_segment(self, source: Any, out: str, segment: Any, overrides: dict) -> dict:
        from da3stream.scaleout.segment import run_segment

        return run_segment(source, Path(out), segment, self.predictor(), self._config | overrides)

    def run_source(self, source: Any, out: str, gt: Optional[str]) -> dict:
        """One source of a batch into its store; a failure becomes its one-line error."""
        from da3stream.scaleout.batch import run_one

        return run_one(source, Path(out), self.predictor, self._config, gt)

    def merge_step(self, step: str, parts: list, out: str, overrides: dict, arg: Any = None) -> Any:
        """One step of the merge (:mod:`da3stream.scaleout.merge`): prepare, loops (for windows ``arg``), finish."""
        from da3stream.scaleout import merge

        cfg = self._config | overrides
        if step == "prepare":
            return merge.prepare_merge(parts, Path(out), cfg)
        if step == "loops":
            return merge.search_loops(parts, Path(out), cfg, self.predictor(), windows=arg)
        return merge.finish_merge(parts, Path(out), cfg, arg)


def make_workers(ray: Any, n: int, spec: Any, cfg: Config, config: dict) -> list:
    """``n`` worker actors with the scale-out config's resources, each checked alive."""
    so = cfg.scaleout
    gpus = so.gpus_per_worker
    have = float(ray.cluster_resources().get("GPU", 0))
    if gpus is None:
        gpus = 1.0 if have >= 1 else 0.0
    if gpus > 0 and n * gpus > have:
        msg = (f"{n} workers x {gpus:g} GPUs need {n * gpus:g} GPUs; the Ray cluster has {have:g} "
               "(set scaleout.gpus_per_worker, e.g. 0.5 for two workers per GPU, or fewer workers)")
        if so.ray_address is None:  # a local instance never grows: the workers would wait forever
            raise ConfigError(msg)
        log.warning("%s; the workers wait until the cluster has them", msg)
    actor = ray.remote(num_cpus=so.cpus_per_worker, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                       max_task_retries=MAX_RESTARTS)(Worker)
    # The predictor goes into the object store once; each actor gets its reference inside a list (Ray does not
    # resolve nested references), so a restarted actor fetches it again while the caller holds the reference.
    spec_ref = [ray.put(spec)]
    workers = _Workers(actor.remote(spec_ref, config) for _ in range(n))
    workers.spec_ref = spec_ref  # held as long as the workers are
    wait_all(ray, [w.ready.remote() for w in workers])
    return workers


class _Workers(list):
    """The worker actors, holding the predictor's object-store reference while they are in use."""

    spec_ref: list = []


def stop_workers(ray: Any, workers: list) -> None:
    """Kill the workers and wait until they are gone (a rerun may then take their stores' writer locks)."""
    for w in workers:
        ray.kill(w, no_restart=True)
    for w in workers:
        try:
            ray.get(w.pid.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - the dead actor's error is what we wait for
            pass


def remote_error(exc: BaseException) -> BaseException:
    """The error a worker raised (Ray wraps it), so the caller sees its one-line message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Da3StreamError):
        return cause
    if isinstance(cause, BaseException):
        return Da3StreamError(f"{type(cause).__name__}: {cause}")
    return exc


def wait_all(ray: Any, refs: list, on_done=None) -> list:
    """Results of ``refs`` in submission order, calling ``on_done(position, result)`` as each finishes."""
    pending = {r: k for k, r in enumerate(refs)}
    results: list = [None] * len(refs)
    t0 = time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(done[0])
        try:
            results[k] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - re-raised as the worker's own error
            raise remote_error(exc) from None
        if on_done is not None:
            on_done(k, results[k], time.perf_counter() - t0)
    return results
