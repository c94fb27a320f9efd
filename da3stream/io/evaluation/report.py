"""A self-contained HTML report of a run store: summary, trajectory, alignment quality, loops, accuracy,
depth previews and timings.

One file, no external resources (rendered by :mod:`da3stream.io.evaluation.report_html`): plots are PNG images (matplotlib, Agg)
embedded as base64 ``data:`` URIs and the style sheet is inline, so the report
can be mailed or archived as is. With ``png_dir`` the same plots are also
written as PNG files (for a README).

Sections (their HTML ids): ``summary``, ``trajectory`` (top view, the point
map from above (:mod:`da3stream.io.evaluation.report_map`) and height over
time, in the first camera's axes), ``alignment`` (per window: inlier
ratio, residual, scale, pose disagreement, status flags), ``loops`` (accepted
edges and rejected candidates on the top view), ``accuracy`` (ATE over time
against a ground-truth TUM file, :func:`da3stream.io.evaluation.metrics.ate_over_time`),
``previews`` (colourised depth and confidence of sampled frames) and
``timings`` (per-stage seconds from the root attribute ``run.timings``).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from da3stream.errors import ExportError
from da3stream.io.evaluation.report_html import Report, Section, html_note, html_table, render_html
from da3stream.io.evaluation.report_map import draw_map_top_view, map_top_view
from da3stream.io.store import RunStore

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["Report", "Section", "build_report", "render_html", "write_report"]

SECTION_IDS = ("summary", "trajectory", "alignment", "loops", "accuracy", "previews", "timings")
COUNT_KEYS = frozenset({"predicted_frames", "conditioned_windows", "oom_retries"})
"""Keys of ``run.timings`` that count things; every other key is seconds."""
STATUS_NAMES = {0: "ok", 1: "gated", 2: "first", 3: "new segment"}
STATUS_COLORS = {0: "#3a6ea5", 1: "#e08a14", 2: "#222222", 3: "#9a3cc8"}
SEGMENT_COLORS = ("#1e64dc", "#dc501e", "#28a046", "#aa32aa", "#c8aa14", "#14a0aa")
ACCEPTED_COLOR = "#1eb43c"
REJECTED_COLOR = "#dc3232"
MAX_TABLE_ROWS = 200
"""Rows of the loop-candidate and flagged-window tables (the rest is counted, not listed)."""

# ----------------------------------------------------------------------------- plotting helpers


SIDE_BY_SIDE = {"left": 0.07, "right": 0.985, "bottom": 0.12, "top": 0.92, "wspace": 0.28}
"""Margins of the two-panel figures (fixed: matplotlib's constrained layout tripled the report's run time)."""


def _figure(width_in: float, height_in: float, **margins: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state), with fixed ``margins``
    (``subplots_adjust`` keywords, fractions of the figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**(margins or SIDE_BY_SIDE))
    return fig


def _fit_left_margin(fig, axs, pad_in: float = 0.12) -> None:
    """Widen the figure's left margin until every axis' tick and (multi-line) y labels fit.

    One measuring draw (matplotlib's constrained layout, which would do the same, tripled the report's
    run time): the widest left overhang of the axes' tight boxes beyond their plot area becomes the margin.
    """
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_figwidth() * fig.dpi
    overhang = max(ax.get_window_extent(renderer).x0 - ax.get_tightbbox(renderer).x0 for ax in axs)
    left = min(0.4, (overhang + pad_in * fig.dpi) / width_px)
    fig.subplots_adjust(left=max(left, fig.subplotpars.left))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _first_camera_axes(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), axes (3, 3) rows right / forward / up) of the first camera (OpenCV: +y is down)."""
    R0 = world_from_cam[0, :3, :3]
    return world_from_cam[0, :3, 3], np.stack([R0[:, 0], R0[:, 2], -R0[:, 1]])


def _plane(xyz: np.ndarray, origin: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """(N, 3) right / forward / up coordinates of points ``xyz`` relative to the first camera."""
    return (np.asarray(xyz, np.float64) - origin) @ axes.T


def _draw_top_view(ax, uvh: np.ndarray, segments: np.ndarray, loops: Optional[np.ndarray] = None,
                   rejected: Optional[np.ndarray] = None, grey: bool = False) -> None:
    """Trajectory (coloured by segment) in the horizontal plane, with loop edges as lines between cameras."""
    for s in np.unique(segments):
        sel = segments == s
        color = "#9aa3b2" if grey else SEGMENT_COLORS[int(s) % len(SEGMENT_COLORS)]
        ax.plot(uvh[sel, 0], uvh[sel, 1], "-", lw=1.4, color=color, label=None if grey else f"segment {int(s)}")
    if rejected is not None and len(rejected):
        for n, (i, j) in enumerate(rejected):
            ax.plot(uvh[[i, j], 0], uvh[[i, j], 1], "--", lw=0.8, color=REJECTED_COLOR, alpha=0.8,
                    label="rejected candidate" if n == 0 else None)
    if loops is not None and len(loops):
        for n, (i, j) in enumerate(loops):
            ax.plot(uvh[[i, j], 0], uvh[[i, j], 1], "-", lw=1.6, color=ACCEPTED_COLOR,
                    label="accepted loop" if n == 0 else None)
    ax.plot(uvh[0, 0], uvh[0, 1], "o", color="#222222", ms=6, label="start")
    ax.plot(uvh[-1, 0], uvh[-1, 1], "s", color="#222222", ms=6, label="end")
    ax.set_xlabel("right of the first camera")
    ax.set_ylabel("forward of the first camera")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.4, alpha=0.5)


def _valid_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return pairs[(pairs >= 0).all(axis=1) & (pairs < n).all(axis=1)]


# ----------------------------------------------------------------------------- sections


def _summary(store: RunStore, frames: dict, chunks: dict, commit: dict, accuracy: Optional[dict]) -> tuple[Section, dict]:
    model = store.model
    run = store.attrs_get("run", {}) or {}
    cfg = store.config
    src = store.source
    status = chunks["status"]
    facts = {
        "status": store.status,
        "frames": int(frames["index"].shape[0]),
        "source_frames_read": int(commit.get("n_read", 0)),
        "windows": int(chunks["frame_start"].shape[0]),
        "gated_windows": int(np.sum(status == 1)),
        "new_segment_windows": int(np.sum(status == 3)),
        "segments": int(chunks["segment"].max()) + 1 if chunks["segment"].size else 0,
        "loops": int(commit.get("n_loops", 0)),
        "loop_candidates": int(commit.get("n_candidates", 0)),
        "map_points": int(commit.get("n_points", 0)),
        "pose_rewrites": int(commit.get("pose_epoch", 0)),
        "model_id": model.get("id"),
        "weights_random": bool(model.get("weights_random", False)),
        "simulated": bool(model.get("simulated", False)),
    }
    rows = [
        ("store", str(store.path)),
        ("status", facts["status"]),
        ("created / last status", f"{store.attrs_get('created', '?')} / {store.attrs_get('status_time', '?')}"),
        ("frames (keyframes processed)", facts["frames"]),
        ("source frames read", facts["source_frames_read"]),
        ("windows", facts["windows"]),
        ("gated windows", facts["gated_windows"]),
        ("trajectory segments", facts["segments"]),
        ("loop edges accepted / candidates", f"{facts['loops']:,} / {facts['loop_candidates']:,}"),
        ("fused map points", facts["map_points"]),
        ("pose rewrites", facts["pose_rewrites"]),
        ("model", facts["model_id"]),
        ("weights", "SIMULATED predictor (no network)" if facts["simulated"] else
         ("RANDOM (untrained) weights" if facts["weights_random"] else "trained weights")),
        ("weights sha256", (model.get("weights_sha256") or "–")[:16]),
        ("chunk size / overlap", f"{cfg.get('chunk_size', '?')} / {cfg.get('overlap', '?')}"),
        ("image / depth grid (h x w)", f"{'x'.join(map(str, store.image_hw))} / {'x'.join(map(str, store.depth_hw))}"),
        ("source", src.get("path") or src.get("kind") or src.get("type") or "–"),
    ]
    if "total" in (run.get("timings") or {}):
        rows.append(("run time (s)", float(run["timings"]["total"])))
    if accuracy is not None:
        rows.append(("ATE RMSE (Sim(3)-aligned)", accuracy["ate_rmse"]))
        facts["ate_rmse"] = float(accuracy["ate_rmse"])
    sec = Section("summary", "Summary", [html_table(rows, ("", "value"))])
    if facts["simulated"] or facts["weights_random"]:
        sec.blocks.append("<p class=\"flag\">These results come from " + (
            "the simulated predictor" if facts["simulated"] else "a network with random weights") +
            ", not a trained Depth Anything 3 model.</p>")
    return sec, facts


def _trajectory(frames: dict, chunks: dict, loops: np.ndarray, rejected: np.ndarray, figures: dict,
                store: Optional[RunStore] = None) -> Section:
    """Top view of the path, the point map from above (with ``store``) and the height over time."""
    sec = Section("trajectory", "Trajectory")
    wcam = frames["world_from_cam"]
    if wcam.shape[0] < 2:
        sec.blocks.append(html_note("Fewer than two committed frames: nothing to plot."))
        return sec
    origin, axes = _first_camera_axes(wcam)
    uvh = _plane(wcam[:, :3, 3], origin, axes)
    seg = chunks["segment"][frames["chunk_id"]]
    fig = _figure(16, 4.6, **{**SIDE_BY_SIDE, "left": 0.05, "wspace": 0.22})
    ax_top, ax_map, ax_h = fig.subplots(1, 3, width_ratios=(1.1, 1.1, 1.0))
    ruh, rgb = map_top_view(store, origin, axes) if store is not None else (np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    draw_map_top_view(ax_map, ruh, rgb, uvh)
    _draw_top_view(ax_top, uvh, seg, _valid_pairs(loops, len(uvh)), _valid_pairs(rejected, len(uvh)))
    gated_rows = [int(chunks["frame_stop"][k] - chunks["n_new"][k]) for k in np.flatnonzero(chunks["status"] == 1)
                  if chunks["n_new"][k] > 0]
    if gated_rows:
        ax_top.plot(uvh[gated_rows, 0], uvh[gated_rows, 1], "x", color=STATUS_COLORS[1], ms=7, mew=2,
                    label="gated window starts")
    ax_top.set_title("top view (first camera's axes)")
    ax_top.legend(fontsize=8, loc="best")
    t = frames["timestamp"]
    ax_h.plot(t, uvh[:, 2], "-", lw=1.2, color=SEGMENT_COLORS[0])
    ax_h.set_xlabel("time (s)")
    ax_h.set_ylabel("height above the first camera (world units)")
    ax_h.set_title("height over time")
    ax_h.grid(True, lw=0.4, alpha=0.5)
    figures["trajectory"] = _png(fig)
    path_len = float(np.linalg.norm(np.diff(wcam[:, :3, 3], axis=0), axis=1).sum())
    sec.blocks.append(html_note(f"{wcam.shape[0]:,} camera positions (live poses, after loop closure), "
                            f"path length {path_len:.4g} world units; height is along the first camera's up (-y). "
                            f"The point map is drawn from above in the same axes ({ruh.shape[0]:,} points)."))
    sec.blocks.append(("figure", "trajectory"))
    return sec


def _alignment(chunks: dict, figures: dict) -> Section:
    sec = Section("alignment", "Per-window alignment quality")
    n = chunks["frame_start"].shape[0]
    if n == 0:
        sec.blocks.append(html_note("No committed windows."))
        return sec
    k = np.arange(n)
    status = chunks["status"].astype(int)
    fig = _figure(11, 7.5, left=0.08, right=0.985, bottom=0.07, top=0.975, hspace=0.12)
    axs = fig.subplots(4, 1, sharex=True)
    series = (("inlier_ratio", "inlier ratio", False), ("residual", "residual\n(median, rel.)", False),
              ("scale", "scale\n(prev -> this)", True), ("pose_disagreement", "pose\ndisagreement", False))
    for ax, (key, label, logy) in zip(axs, series):
        y = np.asarray(chunks[key], np.float64)
        ax.plot(k, y, "-", lw=0.8, color="#9aa3b2")
        for code, name in STATUS_NAMES.items():
            sel = (status == code) & np.isfinite(y)
            if logy:
                sel &= y > 0
            if sel.any():
                ax.plot(k[sel], y[sel], "o", ms=4, color=STATUS_COLORS[code], label=name)
        for code in (1, 3):
            for j in np.flatnonzero(status == code):
                ax.axvspan(j - 0.5, j + 0.5, color=STATUS_COLORS[code], alpha=0.15, lw=0)
        if logy and np.any(np.isfinite(y) & (y > 0)):
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, lw=0.4, alpha=0.5)
    axs[0].legend(fontsize=8, ncol=4, loc="lower left")
    axs[-1].set_xlabel("window")
    _fit_left_margin(fig, axs)
    fig.align_ylabels(axs)
    figures["alignment"] = _png(fig)
    counts = {name: int(np.sum(status == code)) for code, name in STATUS_NAMES.items()}
    sec.blocks.append(html_note("Windows by status: " + ", ".join(f"{v} {k_}" for k_, v in counts.items()) +
                            ". Gated windows used a fallback estimate; a new segment could not be aligned."))
    sec.blocks.append(("figure", "alignment"))
    flagged = np.flatnonzero((status == 1) | (status == 3))
    if flagged.size:
        rows = [(int(j), STATUS_NAMES.get(int(status[j]), str(status[j])), str(chunks["flag_reason"][j]),
                 float(chunks["inlier_ratio"][j]), float(chunks["residual"][j]), float(chunks["scale"][j]),
                 int(chunks["segment"][j])) for j in flagged[:MAX_TABLE_ROWS]]
        sec.blocks.append(html_table(rows, ("window", "status", "reason", "inlier ratio", "residual", "scale", "segment")))
        if flagged.size > MAX_TABLE_ROWS:
            sec.blocks.append(html_note(f"... and {flagged.size - MAX_TABLE_ROWS} more flagged windows."))
    return sec


def _loops(frames: dict, cands: dict, loops_tab: dict, figures: dict) -> Section:
    sec = Section("loops", "Loop closure")
    n_c = cands["chunk_i"].shape[0]
    n_l = loops_tab["chunk_i"].shape[0]
    if n_c == 0 and n_l == 0:
        sec.blocks.append(html_note("No loop candidates were considered (loop closure off, no revisits, or no descriptors)."))
        return sec
    wcam = frames["world_from_cam"]
    accepted = np.asarray(cands["accepted"], bool)
    pairs_acc = np.stack([loops_tab["frame_i"], loops_tab["frame_j"]], axis=1)
    pairs_rej = np.stack([cands["frame_i"][~accepted], cands["frame_j"][~accepted]], axis=1)
    sec.blocks.append(html_note(f"{n_l} verified loop edges (pose-graph constraints), {n_c} candidates "
                            f"({int(accepted.sum())} accepted, {int((~accepted).sum())} rejected)."))
    if wcam.shape[0] >= 2:
        origin, axes = _first_camera_axes(wcam)
        uvh = _plane(wcam[:, :3, 3], origin, axes)
        fig = _figure(11, 4.6)
        ax_top, ax_sc = fig.subplots(1, 2, width_ratios=(1.1, 1.0))
        seg = np.zeros(len(uvh), np.int64)
        _draw_top_view(ax_top, uvh, seg, _valid_pairs(pairs_acc, len(uvh)), _valid_pairs(pairs_rej, len(uvh)), grey=True)
        ax_top.set_title("loop edges on the top view")
        ax_top.legend(fontsize=8, loc="best")
        sim = np.asarray(cands["similarity"], np.float64)
        inl = np.nan_to_num(np.asarray(cands["inlier_ratio"], np.float64), nan=0.0)
        ax_sc.scatter(sim[accepted], inl[accepted], s=18, color=ACCEPTED_COLOR, label="accepted")
        ax_sc.scatter(sim[~accepted], inl[~accepted], s=18, color=REJECTED_COLOR, marker="x", label="rejected")
        ax_sc.set_xlabel("descriptor similarity")
        ax_sc.set_ylabel("inlier ratio (0: not verified)")
        ax_sc.set_title("candidates")
        ax_sc.grid(True, lw=0.4, alpha=0.5)
        ax_sc.legend(fontsize=8)
        figures["loops"] = _png(fig)
        sec.blocks.append(("figure", "loops"))
    rows = [(int(cands["chunk_i"][m]), int(cands["chunk_j"][m]), int(cands["frame_i"][m]), int(cands["frame_j"][m]),
             float(cands["similarity"][m]), float(cands["inlier_ratio"][m]), float(cands["residual"][m]),
             bool(accepted[m]), str(cands["reason"][m])) for m in range(min(n_c, MAX_TABLE_ROWS))]
    sec.blocks.append(html_table(rows, ("chunk i", "chunk j", "frame i", "frame j", "similarity", "inlier ratio",
                                    "residual", "accepted", "reason")))
    if n_c > MAX_TABLE_ROWS:
        sec.blocks.append(html_note(f"... and {n_c - MAX_TABLE_ROWS} more candidates."))
    return sec


def _accuracy(store: RunStore, gt_tum: Optional[PathLike], max_diff: float, figures: dict) -> tuple[Section, Optional[dict]]:
    sec = Section("accuracy", "Accuracy against ground truth")
    if gt_tum is None:
        sec.blocks.append(html_note("No ground truth given (pass --gt gt.tum for ATE over time)."))
        return sec, None
    from da3stream.io.evaluation.metrics import ate_over_time, evaluate

    metrics = evaluate(store, gt_tum, max_diff=max_diff)
    per = ate_over_time(store, gt_tum, max_diff=max_diff)
    fig = _figure(11, 4.4)
    ax_t, ax_top = fig.subplots(1, 2, width_ratios=(1.2, 1.0))
    ax_t.plot(per["timestamp"], per["error"], "-", lw=1.2, color="#c0392b")
    ax_t.axhline(metrics["ate_rmse"], color="#333333", lw=0.8, ls="--", label=f"RMSE {metrics['ate_rmse']:.4g}")
    ax_t.set_xlabel("time (s)")
    ax_t.set_ylabel("ATE (ground-truth units)")
    ax_t.set_title("ATE over time (Sim(3)-aligned)")
    ax_t.grid(True, lw=0.4, alpha=0.5)
    ax_t.legend(fontsize=8)
    gt, est = per["gt_xyz"], per["est_xyz"]
    centred = gt - gt.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # the plane of largest spread of the ground truth
    p_gt, p_est = centred @ vt[:2].T, (est - gt.mean(axis=0)) @ vt[:2].T
    ax_top.plot(p_gt[:, 0], p_gt[:, 1], "-", color="#222222", lw=1.2, label="ground truth")
    ax_top.plot(p_est[:, 0], p_est[:, 1], "-", color="#c0392b", lw=1.0, label="estimate (aligned)")
    ax_top.set_aspect("equal", adjustable="datalim")
    ax_top.set_title("trajectories in the ground truth's main plane")
    ax_top.grid(True, lw=0.4, alpha=0.5)
    ax_top.legend(fontsize=8)
    figures["accuracy"] = _png(fig)
    sec.blocks.append(html_note(f"Ground truth: {Path(gt_tum).name}; {metrics['n_matched']} of {metrics['n_est']} poses "
                            f"matched within {max_diff} s; alignment scale {metrics['align_scale']:.4g}."))
    sec.blocks.append(("figure", "accuracy"))
    keys = ("ate_rmse", "ate_mean", "ate_median", "ate_max", "rpe_trans_rmse", "rpe_rot_rmse_deg", "path_length",
            "ate_percent_of_path")
    sec.blocks.append(html_table([(k, float(metrics[k])) for k in keys], ("metric", "value")))
    return sec, metrics


def _previews(store: RunStore, frames: dict, n_previews: int, figures: dict) -> Section:
    from da3stream.io.export.colormap import colorize_conf, colorize_depth

    sec = Section("previews", "Depth and confidence previews")
    F = frames["index"].shape[0]
    if F == 0 or n_previews <= 0:
        sec.blocks.append(html_note("No committed frames."))
        return sec
    rows = np.unique(np.linspace(0, F - 1, min(n_previews, F)).round().astype(np.int64))
    depth = np.asarray(store.depth(rows), np.float32)
    conf = np.asarray(store.conf(rows), np.float32) if store.has_conf else None
    rgb = store.rgb(rows) if store.has_rgb else None
    kinds = (["colour"] if rgb is not None else []) + ["depth"] + (["confidence"] if conf is not None else [])
    h, w = depth.shape[1:]
    height = 2.2 * len(kinds) * h / w + 0.5
    fig = _figure(2.2 * len(rows), height, left=0.035, right=0.995, bottom=0.01, top=1.0 - 0.45 / height,
                  wspace=0.05, hspace=0.08)
    axs = np.asarray(fig.subplots(len(kinds), len(rows), squeeze=False))
    for j, r in enumerate(rows):
        for i, kind in enumerate(kinds):
            img = rgb[j] if kind == "colour" else (colorize_depth(depth[j]) if kind == "depth" else colorize_conf(conf[j]))
            ax = axs[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"row {int(r)} · #{int(frames['index'][r])}\nt={frames['timestamp'][r]:.2f}s", fontsize=8)
            if j == 0:
                ax.set_ylabel(kind, fontsize=9)
    figures["previews"] = _png(fig)
    sec.blocks.append(html_note(f"{len(rows)} frames sampled evenly; depth coloured by inverse depth (near = red), each "
                            "frame scaled to its own 2-98 percentile range; confidence bright = reliable."))
    sec.blocks.append(("figure", "previews"))
    return sec


def _timings(store: RunStore, frames: dict, figures: dict) -> Section:
    sec = Section("timings", "Per-stage timings")
    run = store.attrs_get("run", {}) or {}
    t = dict(run.get("timings") or {})
    if not t:
        sec.blocks.append(html_note(f"No timings recorded (they are written when a run ends; status: {store.status})."))
        return sec
    total = float(t.get("total", np.nan))
    secs = {k: float(v) for k, v in t.items() if k not in COUNT_KEYS and k != "total" and isinstance(v, (int, float))}
    counts = {k: v for k, v in t.items() if k in COUNT_KEYS}
    n_frames = max(1, int(frames["index"].shape[0]))
    if secs:
        names = sorted(secs, key=lambda k: secs[k])
        height = 0.45 * len(names) + 1.2
        fig = _figure(8, height, left=0.2, right=0.97, bottom=0.75 / height, top=1.0 - 0.2 / height)
        ax = fig.subplots()
        ax.barh(names, [secs[k] for k in names], color="#3a6ea5")
        if np.isfinite(total):
            ax.axvline(total, color="#c0392b", ls="--", lw=1, label=f"total {total:.3g} s")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("seconds (stages overlap: the writer runs beside the next window)")
        ax.grid(True, axis="x", lw=0.4, alpha=0.5)
        figures["timings"] = _png(fig)
        sec.blocks.append(("figure", "timings"))
    rows = [(k, secs[k], 100.0 * secs[k] / total if np.isfinite(total) and total > 0 else float("nan"),
             1000.0 * secs[k] / n_frames) for k in sorted(secs, key=lambda k: -secs[k])]
    if np.isfinite(total):
        rows.append(("total", total, 100.0, 1000.0 * total / n_frames))
    sec.blocks.append(html_table(rows, ("stage", "seconds", "% of total", "ms per frame")))
    if counts:
        sec.blocks.append(html_table([(k, v) for k, v in counts.items()], ("counter", "value")))
    return sec


# ----------------------------------------------------------------------------- public API


def build_report(store_or_path: Union[RunStore, PathLike], *, gt_tum: Optional[PathLike] = None, max_diff: float = 0.01,
                 n_previews: int = 6, title: Optional[str] = None) -> Report:
    """Read a store (one pinned commit) and build every section and figure.

    Args:
        store_or_path: a :class:`RunStore` or its path (a running store is fine: one snapshot is reported).
        gt_tum: ground-truth TUM trajectory for the accuracy section.
        max_diff: timestamp association tolerance (s) against the ground truth.
        n_previews: frames sampled for the depth / confidence previews.
        title: report title (default: the store's directory name).
    """
    store = store_or_path if isinstance(store_or_path, RunStore) else RunStore.open(store_or_path, mode="r")
    if gt_tum is not None and not Path(gt_tum).is_file():
        raise ExportError(f"{gt_tum}: ground-truth file not found")
    snap = store.snapshot()
    commit = snap.committed
    frames, chunks = snap.frames_table(), snap.chunks_table()
    loops_tab, cands = snap.loops_table(), snap.candidates_table()
    figures: dict[str, bytes] = {}
    accuracy_sec, accuracy = _accuracy(snap, gt_tum, max_diff, figures)
    summary, facts = _summary(snap, frames, chunks, commit, accuracy)
    rej = ~np.asarray(cands["accepted"], bool)
    sections = [
        summary,
        _trajectory(frames, chunks, np.stack([loops_tab["frame_i"], loops_tab["frame_j"]], axis=1),
                    np.stack([cands["frame_i"][rej], cands["frame_j"][rej]], axis=1), figures, snap),
        _alignment(chunks, figures),
        _loops(frames, cands, loops_tab, figures),
        accuracy_sec,
        _previews(snap, frames, int(n_previews), figures),
        _timings(snap, frames, figures),
    ]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    name = title or Path(store.path).name
    subtitle = f"run store {store.path} · commit {commit['id']} · status {facts['status']} · report written {now}"
    return Report(title=f"da3stream report — {name}", subtitle=subtitle, sections=sections, figures=figures, facts=facts)


def write_report(store_or_path: Union[RunStore, PathLike], out_html: PathLike, *, gt_tum: Optional[PathLike] = None,
                 png_dir: Optional[PathLike] = None, max_diff: float = 0.01, n_previews: int = 6,
                 title: Optional[str] = None) -> dict:
    """Write the HTML report (and, with ``png_dir``, every plot as ``<section>.png`` there).

    ``run_stream.py report RUN.zarr [--gt gt.tum] [--out report.html] [--png-dir DIR]`` calls this.

    Returns:
        ``{"html": path, "png": {name: path}, "sections": [ids], "figures": [names], "bytes": size, "facts": {...}}``.
    """
    report = build_report(store_or_path, gt_tum=gt_tum, max_diff=max_diff, n_previews=n_previews, title=title)
    text = render_html(report)
    out = Path(out_html)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    pngs: dict[str, str] = {}
    if png_dir is not None:
        d = Path(png_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            for name, data in report.figures.items():
                p = d / f"{name}.png"
                p.write_bytes(data)
                pngs[name] = str(p)
        except OSError as exc:
            raise ExportError(f"{d}: cannot write the report's PNG files ({exc.strerror or exc})") from None
    log.info("wrote report %s (%d figures, %.1f kB)", out, len(report.figures), len(text) / 1024)
    return {"html": str(out), "png": pngs, "sections": [s.id for s in report.sections],
            "figures": sorted(report.figures), "bytes": len(text.encode("utf-8")), "facts": report.facts}
