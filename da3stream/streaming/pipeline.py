"""The streaming reconstruction loop: source -> keyframes -> windows -> predictor
-> alignment -> loops -> map -> store.

One pass, front to back. :meth:`StreamingReconstructor.run` reads source
frames, keeps keyframes, cuts overlapping windows and moves each window, a
:class:`~da3stream.streaming.window.Window` value, through the stages in
:mod:`da3stream.streaming.stages`. Every window is committed to the store
before the next one is aligned against it, so a run killed at any moment
resumes from its last committed window and produces the same trajectory as an
uninterrupted run: everything the next window depends on is rebuilt from the
store (:mod:`da3stream.streaming.resume`), and every random choice is seeded
from (config seed, window id).

The config is resolved once, here; each stage gets the sub-config it needs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from da3stream.config import Config, load_config, to_dict
from da3stream.core.types import Prediction, Predictor
from da3stream.errors import ConfigError, Da3StreamError, PredictionError, RejectedWindow, SourceError, StoreError
from da3stream.io.sources import Frame, open_source, source_options
from da3stream.io.store.records import ChunkStatus
from da3stream.streaming.collector import frozen_startup_objects
from da3stream.streaming.keyframes import KeyframeStage
from da3stream.streaming.planner import is_out_of_memory, plan_window, set_process_res
from da3stream.streaming.resume import ResumePoint, creation_incomplete, discard_incomplete_store, open_store, restore
from da3stream.streaming.stages.align import AlignStage
from da3stream.streaming.stages.cameras import ImageGrid
from da3stream.streaming.stages.commit import StoreStage
from da3stream.streaming.stages.fuse import FuseStage, with_colours
from da3stream.streaming.stages.loops import LoopStage
from da3stream.streaming.stages.predict import KnownCameras, PredictStage, accepts_kwarg, free_accelerator_memory
from da3stream.streaming.state import RunState, SourceLog
from da3stream.streaming.summary import RunSummary, Timer, model_info
from da3stream.streaming.window import Window
from da3stream.streaming.windows import WindowScheduler
from da3stream.streaming.writer import AsyncWriter

log = logging.getLogger(__name__)

__all__ = ["RunSummary", "StreamingReconstructor", "reconstruct"]


def _resolve_predictor(predictor: Optional[Predictor], cfg: Config) -> Predictor:
    if predictor is not None:
        if not callable(getattr(predictor, "predict", None)):
            raise ConfigError(f"predictor {type(predictor).__name__} has no predict(batch) method")
        return predictor
    if cfg.model.id is None:
        raise ConfigError("no model: download one (huggingface-cli download depth-anything/DA3-LARGE --local-dir "
                          "checkpoints/DA3-LARGE) and pass --model checkpoints/DA3-LARGE, or try --model random-small "
                          "(random weights) or --demo")
    from da3stream.core import load_predictor

    m = cfg.model
    return load_predictor(m.id, device=m.device, dtype=m.dtype, process_res=m.process_res,
                          process_res_method=m.process_res_method)


class StreamingReconstructor:
    """One run of the engine over one source into one store. Use :func:`reconstruct`."""

    def __init__(self, source: Any, out: str | Path, *, predictor: Optional[Predictor], config: Any, resume: bool,
                 progress: Optional[Callable[[dict], None]] = None, overwrite: bool = False,
                 source_extra: Optional[dict] = None) -> None:
        self.cfg: Config = load_config(config)
        cfg = self.cfg
        self.source_arg = source
        self.out = Path(out)
        if isinstance(source, (str, Path)):
            self._open_source().close()  # a bad source path fails in one line before any model is loaded
        self.predictor = _resolve_predictor(predictor, cfg)
        self.resume = resume
        self.progress = progress
        self.overwrite = overwrite
        self.source_extra = source_extra or {}
        self.timer = Timer()
        self.summary = RunSummary(store=str(self.out), overlap=cfg.overlap, model=model_info(self.predictor))
        self.pose_prior = None  # known cameras (source.poses) for conditioned inference
        if cfg.source.poses:
            from da3stream.io.sources.priors import PosePrior

            self.pose_prior = PosePrior.load(cfg.source.poses)
            if not accepts_kwarg(self.predictor.predict, "world_from_cam"):
                raise ConfigError(f"{cfg.source.poses}: the predictor {type(self.predictor).__name__} "
                                  "cannot be conditioned on poses")
        if cfg.predict_ahead:
            from da3stream.streaming.overlap import SerializedPredictor

            self.predictor = SerializedPredictor(self.predictor)  # one forward at a time across threads
        from da3stream.alignment.registration import resolve_align_device

        # validates align.device; the registration itself runs in numpy on the host (alignment.registration)
        resolve_align_device(cfg.align.device, getattr(self.predictor, "device", "cpu"))
        # the stages, each with the sub-config it needs
        self.keyframes = KeyframeStage(cfg.keyframes)
        self.scheduler = WindowScheduler(chunk_size=0, overlap=cfg.overlap)
        self.predict_stage = PredictStage(self.predictor, pose_source=cfg.align.pose_source, timer_add=self.timer.add)
        self.align_stage = AlignStage(cfg.align, seed=cfg.seed,
                                      poses_from_rays=lambda: self.predict_stage.poses_from_rays)
        self.loop_stage = LoopStage(cfg.loop, cfg.align, self.predictor, seed=cfg.seed)
        self.fuse_stage = FuseStage(cfg.fusion)
        self.store_stage: Optional[StoreStage] = None  # made by run(), with the writer
        # run state (rebuilt from the store on resume)
        self.state = RunState()
        self.source_log = SourceLog()
        self.writer: Optional[AsyncWriter] = None
        self.ahead = None  # streaming/overlap.py PredictAhead while run() runs with predict_ahead
        self.planned_process_res: Optional[int] = None  # set when the memory planner lowers model.process_res
        self.source_desc: dict = {}
        self.source_truncated: Optional[dict] = None

    # ------------------------------------------------------------------ the run
    def run(self) -> RunSummary:
        with frozen_startup_objects():  # streaming/collector.py: full GC passes skip the start-up objects
            return self._run()

    def _run(self) -> RunSummary:
        t_start = time.perf_counter()
        point, store = self._resume_point()  # store -> run state, on resume
        self.writer = AsyncWriter(max_pending=2)
        self.store_stage = StoreStage(self.out, self.cfg.store, self.writer, store=store, grid=point.grid)
        if self.cfg.predict_ahead:
            from da3stream.streaming.overlap import PredictAhead

            self.ahead = PredictAhead(self._predict, self._run_window, self.scheduler, self.source_log,
                                      self.timer.add)
        status, interrupted = "failed", False
        try:
            with self._open_source(point.start_index) as src:
                self._source_opened(src)
                self._stream(src, point)  # source -> keyframes -> windows -> ... -> store
            self._finish()
            status = "complete"
        except KeyboardInterrupt:
            interrupted, status = True, "interrupted"
            log.info("interrupted: stopping after the last committed window")  # the CLI says so in one line
        finally:
            self._close(status, t_start)
        self.summary.status = status
        self.summary.n_segments = self.state.segment + 1
        self.summary.n_skipped = self.source_log.n_skipped
        self.summary.timings = self._timings(t_start)
        if interrupted:
            raise KeyboardInterrupt
        return self.summary

    def _stream(self, src, point: ResumePoint) -> None:
        """source -> keyframes -> windows: every source frame once, a window whenever the buffer holds one."""
        buffer: list[Frame] = []
        n_carry = 0
        for frame in self._read(src):  # source
            if frame.index <= point.last_read:  # read before a resume: only its carry frames come back
                carry = self._reread(frame, point)
                if carry is not None:
                    buffer, n_carry = list(carry), len(carry)
                continue
            self.source_log.record_skipped(src, frame.index)
            self._plan(frame)
            self.summary.n_read += 1
            keep, cut = self.keyframes.offer(frame.image, self.summary.n_keyframes > 0)  # keyframes
            if cut:  # a scene cut: finish the scene's windows; the next one starts a new segment
                self._flush(buffer, n_carry)
                buffer, n_carry = [], 0
                self.state.start_segment("scene_cut")
            self.source_log.read(frame.index, frame.timestamp, keep)
            if keep:
                self.summary.n_keyframes += 1
                buffer.append(frame)
            while self.scheduler.full(buffer, n_carry):  # windows (repeats only after an OOM retry)
                buffer, n_carry = self._run_window(buffer, n_carry)
        self.source_log.record_skipped(src, None)
        self.source_truncated = getattr(src, "truncated", None)  # a video that decoded fewer frames than declared
        self._flush(buffer, n_carry)

    def _process_window(self, frames: list[Frame], n_carry: int,
                        prediction: Optional[Callable[[], Prediction]] = None) -> None:
        """predictor -> alignment -> loops -> map -> store for one window (``prediction()``: made ahead)."""
        state = self.state
        window = Window(state.next_chunk_id, frames, n_carry)
        window = window.replace(prediction=self._predict(frames) if prediction is None else prediction())
        if self.store_stage.store is None:
            self._create_store(window)
        window = with_colours(window, self.store_stage.grid)
        with self.timer.timed("align"):
            window = self.align_stage(window, state)
        with self.timer.timed("loop"):
            window = self.loop_stage(window, state.world_from_chunk + [window.world_from_chunk],
                                     prev_chunk_id=state.carry.chunk_id if state.carry is not None else -1,
                                     rows=state.new_rows(window.n_new), fetch=self.store_stage.fetch_frames)
        with self.timer.timed("fuse"):
            window = self.fuse_stage(window)
        self._commit(window)

    def _commit(self, window: Window) -> None:
        """store: the window's record, the run state after it, and a pose rewrite after a loop closure."""
        state = self.state
        carry = state.next_carry(window, self.cfg.overlap)
        source_rows = self.source_log.take_through(window.frames[-1].index)
        self.store_stage.commit(window, state, carry, source_rows, self.scheduler.chunk_size)
        state.commit(window, carry)
        if window.loop_world_from_chunk is not None:
            self.store_stage.rewrite_poses(state)
        s = self.summary
        s.n_gated += int(window.status == ChunkStatus.GATED)
        s.n_loops += sum(1 for e in window.loop_edges if e.accepted)
        s.n_loop_candidates += len(window.loop_edges)
        s.n_points, s.n_chunks, s.n_frames = state.n_points, window.chunk_id + 1, state.n_frames
        if self.progress is not None:
            self.progress({"frames": window.n_new, "chunk": window.chunk_id, "status": int(window.status),
                           "loops": s.n_loops, "read": s.n_read, "keyframes": s.n_keyframes})

    def _predict(self, frames: list[Frame]) -> Prediction:
        """The predictor stage (a method, so a subclass can watch the windows predicted)."""
        return self.predict_stage(frames)

    # ------------------------------------------------------------------ windows
    def _run_window(self, buffer: list[Frame], n_carry: int,
                    first_prediction: Optional[Callable[[], Prediction]] = None) -> tuple[list[Frame], int]:
        """Process the next window of ``buffer`` (retrying smaller on out-of-memory); return the next buffer and
        its carry count.

        With ``predict_ahead`` the window is handed to streaming/overlap.py, which calls back here with
        ``first_prediction``: the window's prediction made ahead, used by the first attempt only.
        """
        if self.ahead is not None and first_prediction is None:
            return self.ahead.run_window(buffer, n_carry)
        while True:
            window = self.scheduler.cut(buffer, n_carry)
            prediction, first_prediction = first_prediction, None
            try:
                self._process_window(window, n_carry, prediction)
                break
            except RejectedWindow as exc:
                self._reject_window(window, n_carry, str(exc))
                return buffer[len(window):], 0  # no carry: the next window starts a new segment
            except Da3StreamError:
                raise
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_out_of_memory(exc):
                    raise
                self.summary.chunk_size = self.scheduler.shrink_after_oom(len(window))
                self.timer.add("oom_retries", 1)
            free_accelerator_memory()  # outside the except block: the traceback no longer pins tensors
        return self.scheduler.after(window, buffer)

    def _flush(self, buffer: list[Frame], n_carry: int) -> tuple[list[Frame], int]:
        """Process every frame of ``buffer`` beyond the carry, and the window still in flight (predict-ahead)."""
        while len(buffer) > n_carry or (self.ahead is not None and self.ahead.pending is not None):
            if len(buffer) > n_carry:
                buffer, n_carry = self._run_window(buffer, n_carry)
            else:
                buffer, n_carry = self.ahead.finish(buffer, n_carry)
        return buffer, n_carry

    def _reject_window(self, window: list[Frame], n_carry: int, reason: str) -> None:
        """Drop a window whose prediction is unusable: log its new frames as skipped; the next window starts a new segment."""
        new = {f.index for f in window[n_carry:]}
        self.source_log.reject(new)
        log.warning("%s; the window's %d new frames are skipped and the next window starts a new segment", reason,
                    len(new))
        self.summary.n_keyframes -= len(new)
        self.state.n_rejected_windows += 1
        self.timer.add("rejected_windows", 1)
        self.state.start_segment("previous_window_rejected")

    def _plan(self, frame: Frame) -> None:
        """Chunk size (and network resolution) from the memory budget, at the first frame of a new run."""
        if self.scheduler.chunk_size:
            return
        plan = plan_window(self.cfg, self.predictor, frame.image.shape[:2])
        self.scheduler.chunk_size = self.summary.chunk_size = plan.chunk_size
        if plan.process_res is not None:  # the budget cannot hold min_chunk_size views at full resolution
            set_process_res(self.predictor, plan.process_res)
            self.planned_process_res = plan.process_res
        if self.cfg.overlap >= plan.chunk_size and plan.chunk_size > 1:
            raise ConfigError(f"overlap ({self.cfg.overlap}) must be smaller than chunk_size ({plan.chunk_size})")

    # ------------------------------------------------------------------ source
    def _open_source(self, start_index: int = 0):
        return open_source(self.source_arg, start_index=start_index, **source_options(self.cfg.source))

    def _read(self, src) -> Iterator[Frame]:
        """The source's frames, the wait for each timed as ``read``."""
        it = iter(src)
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                return
            self.timer.add("read", time.perf_counter() - t0)
            yield frame

    def _source_opened(self, src) -> None:
        self.source_desc = self._source_description(src)
        known_K = getattr(src, "intrinsics", None)  # a calibration (source.intrinsics) beats the network's guess
        self.predict_stage.known_intrinsics = self.store_stage.known_intrinsics = known_K
        if self.store_stage.store is not None:
            self.store_stage.store.set_status("running")

    def _source_description(self, src) -> dict:
        """The store's source record; also sets the known cameras the predictor is conditioned on."""
        desc = dict(src.describe())
        desc.update(self.source_extra)
        if self.pose_prior is not None:
            offset = self.pose_prior.time_offset_for(getattr(src, "time_origin", 0.0))
            max_diff = self.cfg.source.pose_max_diff
            desc["pose_prior"] = {**self.pose_prior.describe(), "time_offset": offset, "max_diff": max_diff}
            self.predict_stage.known = KnownCameras(self.pose_prior, getattr(src, "intrinsics", None), max_diff, offset)
        return desc

    def _source_name(self) -> str:
        return str(self.source_arg) if isinstance(self.source_arg, (str, Path)) else "frame iterator"

    # ------------------------------------------------------------------ store
    def _resume_point(self) -> tuple[ResumePoint, Any]:
        """Where the run starts, and the store when it continues one (see streaming/resume.py)."""
        if self.resume and creation_incomplete(self.out):
            # killed before the store existed (or while creating it): nothing was committed, start afresh
            log.warning("%s: nothing committed to resume from; starting a new run", self.out)
            discard_incomplete_store(self.out)
            self.resume = False
        if not self.resume:
            if self.out.exists() and any(self.out.iterdir()) and not self.overwrite:
                raise StoreError(f"{self.out}: store already exists; pass --resume to continue it or choose another --out")
            return ResumePoint(), None
        store = open_store(self.out, to_dict(self.cfg), self.cfg.chunk_size, self._describe_source)
        try:
            point = restore(store, loops=self.loop_stage)
        except BaseException:
            store.close()
            raise
        self.state, self.source_log = point.state, SourceLog(point.last_read)
        self.scheduler.chunk_size = point.chunk_size
        self.planned_process_res = point.planned_process_res
        if point.planned_process_res is not None:  # the memory planner lowered the resolution: keep it
            set_process_res(self.predictor, int(point.planned_process_res))
        s = self.summary
        s.chunk_size, s.n_read, s.n_keyframes, s.n_loops = point.chunk_size, point.n_read, point.n_keyframes, point.n_loops
        s.n_chunks, s.n_frames = len(point.state.world_from_chunk), point.state.n_frames
        s.n_segments, s.resumed = point.state.segment + 1, True
        return point, store

    def _describe_source(self) -> dict:
        with self._open_source() as src:
            return self._source_description(src)

    def _reread(self, frame: Frame, point: ResumePoint) -> Optional[list[Frame]]:
        """A frame logged before the resume: prime the keyframe filter with carry frames; the carry once complete."""
        if not point.is_carry(frame.index):
            return None
        self.keyframes.prime(frame.image)  # the last carry frame is the last kept frame
        carry = point.take_carry_frame(frame)
        if carry is not None:
            self.state.carry.frames = carry
        return carry

    def _create_store(self, window: Window) -> None:
        """The store, the depth grid and the loop closer, from the run's first prediction."""
        pred = window.prediction
        grid = ImageGrid.from_prediction(pred, window.frames[0].image.shape[:2], self.predictor)
        cfg_dict = to_dict(self.cfg)
        cfg_dict["chunk_size"] = self.scheduler.chunk_size  # the resolved value, so resume reproduces it
        self.store_stage.create(config=cfg_dict, model=self.summary.model, source=self.source_desc, pred=pred,
                                grid=grid, overwrite=self.overwrite, planned_process_res=self.planned_process_res)
        self.loop_stage.start(pred)

    def _finish(self) -> None:
        """End of the source: log what no window committed, write the final poses."""
        if self.store_stage.store is None:
            if self.state.n_rejected_windows:
                raise PredictionError(f"{self._source_name()}: every window's prediction was rejected (non-finite output)")
            raise SourceError(f"{self._source_name()}: no frames could be read")
        if self.source_log.pending:
            self.store_stage.append_source_rows(self.source_log.swap([]))
        if self.state.world_from_chunk:
            self.store_stage.rewrite_poses(self.state)

    def _close(self, status: str, t_start: float) -> None:
        """Stop the worker and the writer, record the run status and close the store."""
        try:
            if self.ahead is not None:
                self.ahead.close()  # drops a window still in flight (not committed)
                self.ahead = None
            if self.writer is not None:
                self.writer.close()
        except BaseException:
            status = "failed"  # a queued write failed: the store stays at its last commit
            raise
        finally:
            store = self.store_stage.store if self.store_stage is not None else None
            if store is not None:
                try:
                    extra = {"source_truncated": self.source_truncated} if self.source_truncated else {}
                    store.set_status(status, timings=self._timings(t_start), **extra)
                except StoreError as exc:
                    if status == "complete":
                        raise
                    log.info("%s: could not record the run status %r (%s)", self.out, status, exc)  # the first error is raised
                finally:
                    store.close()

    def _timings(self, t_start: float) -> dict:
        out = {k: round(v, 4) for k, v in self.timer.seconds.items()}
        out["total"] = round(time.perf_counter() - t_start, 4)
        if self.writer is not None:
            out["write_busy"] = round(self.writer.busy_seconds, 4)
            out["write_wait"] = round(self.writer.wait_seconds, 4)
        return out


def reconstruct(
    source: Any,
    out: str | Path,
    *,
    predictor: Optional[Predictor] = None,
    config: Any = None,
    resume: bool = False,
    progress: Optional[Callable[[dict], None]] = None,
    overwrite: bool = False,
) -> RunSummary:
    """Reconstruct ``source`` into the Zarr store ``out``.

    Args:
        source: a video path, an image folder, or an iterable of frames.
        out: the store directory (created; must not exist unless ``resume``).
        predictor: any object with ``predict(FrameBatch) -> Prediction``; None loads ``config.model.id``.
        config: a YAML path, a nested dict of overrides, or a :class:`~da3stream.config.Config`.
        resume: continue the run in ``out`` from its last committed window.
        progress: called after every window with a small dict (frames, chunk, status, loops, read: source frames
            read so far, keyframes: kept so far).
        overwrite: replace an existing store at ``out``.

    With ``scaleout.workers`` K > 1 the source is split across K Ray workers and merged into ``out``
    (:func:`da3stream.scaleout.driver.reconstruct_split`; the predictor must pickle, or be a zero-argument factory).
    """
    cfg = load_config(config)
    if cfg.scaleout.workers > 1:
        # The one call up to the scale-out room, which builds on this one: resolved by name at run time,
        # so that imports between the rooms stay one-way (docs/ARCHITECTURE.md).
        import importlib

        split = importlib.import_module("da3stream.scaleout.driver").reconstruct_split
        return split(source, out, predictor=predictor, config=cfg, resume=resume, progress=progress,
                     overwrite=overwrite)
    runner = StreamingReconstructor(source, out, predictor=predictor, config=cfg, resume=resume,
                                    progress=progress, overwrite=overwrite)
    return runner.run()
