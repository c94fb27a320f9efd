"""The HTML report: self-contained, every section present, embedded PNGs decode; per-frame ATE matches evaluate()."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from da3stream.alignment.sim3 import Sim3
from da3stream.errors import ExportError
from da3stream.io.evaluation.metrics import ate_over_time, evaluate
from da3stream.io.evaluation.report import SECTION_IDS, write_report
from da3stream.io.store import LoopEdge, RunStore
from da3stream.io.export.trajectory import read_tum, write_tum
from da3stream.streaming.pipeline import reconstruct
from tests.pipeline_helpers import SMALL_CFG, small_predictor, small_sequence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run_with_gt(tmp_path_factory):
    """A finished synthetic run (80 frames, 6 windows), its ground truth, and one accepted + one rejected loop edge."""
    d = tmp_path_factory.mktemp("report")
    seq = small_sequence(80)
    gt = d / "gt.tum"
    seq.write_tum(gt)
    out = d / "run.zarr"
    reconstruct(seq.frames(), out, predictor=small_predictor(seq), config=SMALL_CFG)
    store = RunStore.open(out, mode="a")
    chunks, frames = store.chunks_table(), store.frames_table()
    edges = [
        LoopEdge(chunk_i=0, chunk_j=5, frame_i=3, frame_j=70, i_from_j=Sim3.identity(), similarity=0.9,
                 inlier_ratio=0.8, residual=0.01, accepted=True),
        LoopEdge(chunk_i=1, chunk_j=4, frame_i=20, frame_j=55, similarity=0.7, inlier_ratio=0.1, residual=0.2,
                 accepted=False, reason="few_inliers"),
    ]
    store.rewrite_poses(chunks["world_from_chunk"], frames["world_from_cam"], loops=edges)
    store.close()
    return out, gt


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in DATA_PNG.findall(html)]


def test_report_is_self_contained_with_every_section(run_with_gt, tmp_path):
    from PIL import Image

    store_path, gt = run_with_gt
    res = write_report(store_path, tmp_path / "out" / "report.html", gt_tum=gt, png_dir=tmp_path / "png")
    html_path = tmp_path / "out" / "report.html"
    assert html_path.is_file() and res["html"] == str(html_path)
    html = html_path.read_text(encoding="utf-8")
    assert res["sections"] == list(SECTION_IDS)
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html, sid
    # every plot of a run with ground truth and loops is there
    assert res["figures"] == sorted(["trajectory", "alignment", "loops", "accuracy", "previews", "timings"])

    # self-contained: nothing is fetched; every src/href is inline data or an in-page anchor
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs), \
        [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    without_data = DATA_PNG.sub('src=""', html)
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in without_data.lower(), needle

    # the embedded PNGs decode, are real plots, and equal the files written to --png-dir
    pngs = _pngs(html)
    assert len(pngs) == len(res["figures"])
    files = {name: (tmp_path / "png" / f"{name}.png").read_bytes() for name in res["figures"]}
    assert sorted(files.values()) == sorted(pngs)
    for data in pngs:
        assert data.startswith(PNG_SIGNATURE)
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert img.shape[0] > 100 and img.shape[1] > 300
        assert img.std() > 10.0  # not a blank canvas

    # the summary states what the store holds and flags the simulated predictor
    facts = res["facts"]
    st = RunStore.open(store_path)
    assert facts["frames"] == st.n_frames == 74 and facts["windows"] == st.n_chunks
    assert facts["loops"] == 1 and facts["loop_candidates"] == 2 and facts["simulated"]
    assert "SIMULATED predictor" in html and "few_inliers" in html
    assert facts["ate_rmse"] == pytest.approx(evaluate(store_path, gt)["ate_rmse"], rel=1e-12)


def test_ate_over_time_matches_evaluate_and_is_gauge_invariant(run_with_gt, tmp_path, rng):
    store_path, gt = run_with_gt
    per = ate_over_time(store_path, gt)
    agg = evaluate(store_path, gt)
    n = agg["n_matched"]
    assert per["error"].shape == (n,) and per["gt_xyz"].shape == (n, 3) and per["est_xyz"].shape == (n, 3)
    assert np.all(np.diff(per["timestamp"]) >= 0)
    assert np.sqrt(np.mean(per["error"] ** 2)) == pytest.approx(agg["ate_rmse"], rel=1e-9)
    assert per["error"].max() == pytest.approx(agg["ate_max"], rel=1e-9)
    assert np.allclose(np.linalg.norm(per["est_xyz"] - per["gt_xyz"], axis=1), per["error"], rtol=0, atol=1e-12)

    # a Sim(3) of the whole estimate (another gauge) leaves the per-frame errors unchanged
    ts, world_from_cam = read_tum(gt)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    other_from_world = Sim3.from_array(np.concatenate([[2.5], q, rng.normal(size=3)]))
    moved = tmp_path / "gt_moved.tum"
    write_tum(moved, ts, other_from_world.apply_pose(world_from_cam))
    per_moved = ate_over_time(store_path, moved)
    scale = other_from_world.s
    np.testing.assert_allclose(per_moved["error"], per["error"] * scale, rtol=1e-6, atol=1e-9)


def test_report_of_an_empty_running_store(tmp_path):
    """A store with no committed window yet (a run just started): every section says so, nothing breaks."""
    path = tmp_path / "empty.zarr"
    st = RunStore.create(path, config={"chunk_size": 8, "overlap": 2}, model={"id": "rand", "weights_random": True},
                         source={"path": "video.mp4"}, image_hw=(24, 32), depth_hw=(12, 16), descriptor_dim=None,
                         save_rgb=False, save_conf=False)
    try:
        res = write_report(path, tmp_path / "r.html")
    finally:
        st.close()
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert res["figures"] == [] and res["sections"] == list(SECTION_IDS)
    assert "No committed windows." in html and "No ground truth given" in html
    assert "No timings recorded" in html and "status: running" in html
    assert "RANDOM (untrained) weights" in html


def test_report_errors_name_the_file(run_with_gt, tmp_path):
    store_path, _ = run_with_gt
    with pytest.raises(ExportError, match="missing_gt.tum: ground-truth file not found"):
        write_report(store_path, tmp_path / "r.html", gt_tum=tmp_path / "missing_gt.tum")
    assert not (tmp_path / "r.html").exists()


def test_alignment_plot_y_labels_are_not_clipped(run_with_gt, tmp_path):
    """The multi-line y labels ("residual\\n(median, rel.)") fit: the PNG's left edge is background."""
    from PIL import Image

    store_path, _ = run_with_gt
    res = write_report(store_path, tmp_path / "r.html", png_dir=tmp_path / "png")
    img = np.asarray(Image.open(res["png"]["alignment"]).convert("L"))
    assert img[:, :4].min() == 255  # no text cut at the edge (before: the labels' first lines were cut off)
    assert (img[:, 4:60] < 128).any()  # and the labels are drawn near it


def test_trajectory_figure_shows_the_point_map_from_above(run_with_gt, tmp_path):
    from da3stream.io.evaluation.report import _first_camera_axes
    from da3stream.io.evaluation.report_map import MAP_POINTS_SHOWN, map_top_view

    store_path, _ = run_with_gt
    st = RunStore.open(store_path)
    origin, axes = _first_camera_axes(st.frames_table()["world_from_cam"])
    ruh, rgb = map_top_view(st, origin, axes, max_points=None)
    xyz, colours = st.map_points()
    # the first camera's right / forward / up: its x, z and -y axes
    R0, c0 = st.frames_table()["world_from_cam"][0, :3, :3], st.frames_table()["world_from_cam"][0, :3, 3]
    expect = (xyz.astype(np.float64) - c0) @ np.stack([R0[:, 0], R0[:, 2], -R0[:, 1]]).T
    order = np.argsort(expect[:, 2], kind="stable")
    np.testing.assert_allclose(ruh, expect[order], atol=1e-9)
    np.testing.assert_array_equal(rgb, colours[order])
    assert np.all(np.diff(ruh[:, 2]) >= 0)  # higher points drawn over lower ones
    few, _ = map_top_view(st, origin, axes, max_points=100)
    assert 0 < few.shape[0] <= 100 and MAP_POINTS_SHOWN >= 10_000
    html = (tmp_path / "r.html")
    write_report(store_path, html)
    shown = map_top_view(st, origin, axes)[0].shape[0]
    assert shown == min(st.n_points, MAP_POINTS_SHOWN)  # this run's map is below the cap
    assert f"drawn from above in the same axes ({shown:,} points)" in html.read_text()
