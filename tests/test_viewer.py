"""The live viewer: point budget, store following (live run, pose rewrites), viser scene, and the page in
headless Chromium (skipped with a reason when no chromium binary exists; required under CI)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from da3stream.alignment.sim3 import Sim3
from da3stream.io.store import LoopEdge, RunStore
from da3stream.alignment.voxel import voxel_downsample
from da3stream.streaming.pipeline import reconstruct
from da3stream.viewer import FollowOptions, PointBudget, StoreFollower, colorize_depth
from tests.pipeline_helpers import SMALL_CFG, SlowPredictor, small_predictor, small_sequence

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
PAGE_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished synthetic run: 80 frames, 6 windows, ~11k map points."""
    seq = small_sequence(80)
    out = tmp_path_factory.mktemp("viewer") / "run.zarr"
    reconstruct(seq.frames(), out, predictor=small_predictor(seq), config=SMALL_CFG)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".da3stream-writer.lock"))
    return dst


def _moved_poses(path: Path, seed: int, loops: tuple = ()) -> np.ndarray:
    """Rewrite every pose of the store with one random Sim(3) applied (what a loop closure does), adding ``loops``;
    return the new ``world_from_chunk`` table."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    new_from_old = Sim3.from_array(np.concatenate([[1.7], q, rng.normal(size=3)]))
    st = RunStore.open(path, mode="a")
    try:
        c, f = st.chunks_table(), st.frames_table()
        wfc = np.stack([(new_from_old @ Sim3.from_array(a)).to_array() for a in c["world_from_chunk"]])
        st.rewrite_poses(wfc, new_from_old.apply_pose(f["world_from_cam"]), loops=list(loops))
    finally:
        st.close()
    return wfc


# ----------------------------------------------------------------------------- point budget


def test_point_budget_voxel_decimates_and_never_exceeds_the_cap(rng):
    budget = PointBudget(max_points=6000, max_points_per_chunk=2500, seed=3)
    voxel = 0.05
    shown_total = []
    for k in range(12):
        xyz = rng.uniform(-1, 1, size=(20000, 3)).astype(np.float32)
        rgb = rng.integers(0, 256, size=(20000, 3), dtype=np.uint8)
        changed = budget.add(k, xyz, rgb, voxel)
        assert k in changed
        shown_total.append(budget.total)
        assert budget.total <= 6000
        cloud = budget.shown(k)
        # one point per occupied voxel: no two shown points of a chunk share a cell
        cells = np.floor(cloud.xyz / voxel).astype(np.int64)
        assert np.unique(cells, axis=0).shape[0] == len(cloud)
        # the points shown are voxel means of the input (a subset of the full decimation)
        full, _ = voxel_downsample(xyz, rgb, voxel)
        full_set = {tuple(p) for p in np.round(full, 5)}
        assert all(tuple(p) in full_set for p in np.round(cloud.xyz[:200], 5))
        if k >= 3:  # 3 chunks x 2500 > 6000: the cap was lowered and older chunks were cut (re-sent)
            assert all(len(budget.shown(j)) <= budget.cap for j in range(k + 1))
    assert budget.cap < 2500
    # the map stays spread over all chunks instead of dropping late ones
    assert min(len(budget.shown(j)) for j in range(12)) > 0


def test_colorize_depth_near_is_red_far_is_blue_invalid_is_black():
    from matplotlib import colormaps

    depth = np.array([[1.0, 2.0, 4.0], [8.0, 0.0, np.nan]], np.float32)
    rgb = colorize_depth(depth, percentiles=(0.0, 100.0))
    turbo = colormaps["turbo"]
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], turbo(1.0, bytes=True)[:3])  # nearest: top of inverse depth
    np.testing.assert_array_equal(rgb[1, 0], turbo(0.0, bytes=True)[:3])  # farthest
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 2], [0, 0, 0])


# ----------------------------------------------------------------------------- following a store


def test_follower_reads_every_chunk_then_only_moves_poses_on_a_rewrite(finished_run, tmp_path):
    path = _copy(finished_run, tmp_path / "run.zarr")
    st = RunStore.open(path)
    chunks = st.chunks_table()
    f = StoreFollower(path, FollowOptions(max_points=4000, max_points_per_chunk=1000))
    upd = f.poll()
    assert upd is not None and not upd.reset and upd.status == "complete"
    assert upd.new_chunks == tuple(range(st.n_chunks)) and set(upd.clouds) == set(range(st.n_chunks))
    np.testing.assert_array_equal(upd.world_from_chunk, chunks["world_from_chunk"])
    assert upd.world_from_cam.shape == (st.n_frames, 4, 4)
    assert f.points_shown <= 4000 and all(len(c) <= 1000 for c in upd.clouds.values())
    assert upd.latest is not None and upd.latest.row == st.n_frames - 1 and upd.latest.depth_rgb.shape[2] == 3
    assert upd.voxel is not None and upd.voxel > 0 and upd.extent > 0
    assert f.poll() is None  # nothing new committed

    wfc = _moved_poses(path, seed=1)
    upd2 = f.poll()
    assert upd2 is not None and upd2.poses_changed
    assert upd2.clouds == {} and upd2.new_chunks == ()  # points are not re-sent: chunks move as a whole
    np.testing.assert_allclose(upd2.world_from_chunk, wfc, rtol=0, atol=1e-12)


def test_follower_follows_a_live_run_from_before_the_store_exists(tmp_path):
    seq = small_sequence(60)
    out = tmp_path / "live.zarr"
    f = StoreFollower(out)
    assert f.poll() is None  # no store yet: waits
    errors: list[BaseException] = []
    seen_chunks, new_chunks = [], []

    class FollowerPaced(SlowPredictor):
        """Window k waits until the follower has drawn chunk k - 2: a handshake, not a race with load."""

        def predict(self, batch):
            wait_until = time.monotonic() + 120.0
            while max(seen_chunks, default=0) < self.calls - 1 and time.monotonic() < wait_until:
                time.sleep(0.01)
            return super().predict(batch)

    def run() -> None:
        try:
            reconstruct(seq.frames(), out, predictor=FollowerPaced(small_predictor(seq), 0.0), config=SMALL_CFG)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 240.0
    while time.monotonic() < deadline:
        upd = f.poll()
        if upd is not None:
            seen_chunks.append(upd.counts["chunks"])
            new_chunks.extend(upd.new_chunks)
            if upd.status == "complete":
                break
        time.sleep(0.05)
    t.join(timeout=60.0)
    assert not errors, errors
    final = RunStore.open(out)
    assert seen_chunks[-1] == final.n_chunks
    assert len(set(seen_chunks)) >= 3, seen_chunks  # saw the store grow window by window
    assert sorted(new_chunks) == list(range(final.n_chunks))  # every chunk drawn exactly once


def test_follower_starts_over_when_the_store_is_recreated(finished_run, tmp_path):
    path = _copy(finished_run, tmp_path / "run.zarr")
    f = StoreFollower(path)
    assert f.poll() is not None and f.points_shown > 0
    shutil.rmtree(path)
    assert f.poll() is None  # gone: wait for the next one
    st = RunStore.create(path, config={"chunk_size": 8}, model={"id": "next"}, source={}, image_hw=(24, 32),
                         depth_hw=(12, 16), descriptor_dim=None, save_rgb=False, save_conf=False)
    st.close()
    upd = f.poll()
    assert upd is not None and upd.reset
    assert upd.counts["frames"] == 0 and upd.clouds == {} and f.points_shown == 0 and upd.latest is None


# ----------------------------------------------------------------------------- the viser scene


def test_viewer_refuses_a_path_that_is_not_a_store(tmp_path):
    pytest.importorskip("viser", reason="the viewer extra is not installed (pip install 'da3stream[viewer]')")
    from da3stream.errors import StoreError
    from da3stream.viewer import LiveViewer, ViewerOptions

    with pytest.raises(StoreError, match="nope.zarr: store not found"):
        LiveViewer(tmp_path / "nope.zarr", ViewerOptions(port=0)).start()


def test_live_viewer_places_chunks_and_moves_them_on_a_rewrite(finished_run, tmp_path):
    pytest.importorskip("viser", reason="the viewer extra is not installed (pip install 'da3stream[viewer]')")
    from da3stream.viewer import LiveViewer, ViewerOptions

    path = _copy(finished_run, tmp_path / "run.zarr")
    with LiveViewer(path, ViewerOptions(port=0)) as viewer:
        viewer._stop.set()  # no polling thread races the checks below; poll_once is called by hand
        assert viewer.url.startswith("http://127.0.0.1:") and viewer.port > 0
        assert viewer._server.request_share_url() is None  # the share relay is disabled
        st = RunStore.open(path)
        wfc = st.chunks_table()["world_from_chunk"]
        assert sorted(viewer._clouds) == list(range(st.n_chunks))
        for k, h in viewer._clouds.items():
            assert h.scale == pytest.approx(wfc[k][0])
            np.testing.assert_allclose(h.position, wfc[k][5:8])
            np.testing.assert_allclose(np.abs(np.dot(h.wxyz, wfc[k][[4, 1, 2, 3]])), 1.0, atol=1e-9)
        handles_before = dict(viewer._clouds)
        assert "loops_accepted" not in viewer._nodes
        edges = (LoopEdge(chunk_i=0, chunk_j=5, frame_i=3, frame_j=70, i_from_j=Sim3.identity(), similarity=0.9),
                 LoopEdge(chunk_i=1, chunk_j=4, frame_i=20, frame_j=55, accepted=False, reason="few_inliers"))
        new_wfc = _moved_poses(path, seed=2, loops=edges)
        assert viewer.poll_once()
        assert viewer.last_update.poses_changed
        assert viewer._clouds == handles_before  # same nodes, moved (not re-created)
        for k, h in viewer._clouds.items():
            assert h.scale == pytest.approx(new_wfc[k][0])
            np.testing.assert_allclose(h.position, new_wfc[k][5:8], atol=1e-9)
        # loop edges join the (moved) camera centres of their two frames
        centres = RunStore.open(path).frames_table()["world_from_cam"][:, :3, 3]
        np.testing.assert_allclose(viewer._nodes["loops_accepted"].points, centres[[[3, 70]]], atol=1e-4)
        np.testing.assert_allclose(viewer._nodes["loops_rejected"].points, centres[[[20, 55]]], atol=1e-4)
        np.testing.assert_allclose(viewer._nodes["trajectory"].points[0, 0], centres[0], atol=1e-4)
        assert not viewer.poll_once()


# ----------------------------------------------------------------------------- the page in a browser


class _DevTools:
    """A minimal Chrome DevTools Protocol client over the page's websocket (loopback only)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=20)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def close(self) -> None:
        self.ws.close()


def _start_chromium(profile: Path) -> tuple[subprocess.Popen, _DevTools]:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1024,768", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30.0
    while not (port_file.is_file() and port_file.read_text().strip()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"chromium did not start (exit code {proc.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        pages = [p for p in json.load(r) if p.get("type") == "page"]
    return proc, _DevTools(pages[0]["webSocketDebuggerUrl"])


def _screenshot(dev: _DevTools) -> np.ndarray:
    from PIL import Image

    data = base64.b64decode(dev.call("Page.captureScreenshot", format="png")["data"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _scene_pixels(img: np.ndarray) -> float:
    """Fraction of non-background pixels in the 3D view, away from the side panel and the notification corner."""
    h, w = img.shape[:2]
    view = img[int(0.3 * h):, : int(0.6 * w)].astype(np.int16)
    return float(np.mean(np.any(view < 225, axis=2)))


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="no chromium binary (scripts/setup.sh installs Debian's chromium)")
def test_viewer_page_renders_in_headless_chromium(finished_run, tmp_path):
    if CHROMIUM is None:
        pytest.fail("CI=true but no chromium binary: scripts/setup.sh should have installed it")
    pytest.importorskip("viser", reason="the viewer extra is not installed (pip install 'da3stream[viewer]')")
    from da3stream.viewer import LiveViewer, ViewerOptions

    with LiveViewer(finished_run, ViewerOptions(port=0, poll_s=0.25)) as viewer:
        proc, dev = _start_chromium(tmp_path / "profile")
        try:
            dev.call("Page.enable")
            dev.call("Emulation.setDeviceMetricsOverride", width=1024, height=768, deviceScaleFactor=1, mobile=False)
            dev.call("Page.navigate", url=viewer.url)
            text, img = "", None
            deadline = time.monotonic() + PAGE_TIMEOUT_S
            while time.monotonic() < deadline:
                text = dev.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                returnByValue=True)["result"].get("value", "")
                if "run.zarr" in text and "complete" in text:
                    img = _screenshot(dev)
                    if _scene_pixels(img) > 0.05:
                        break
                time.sleep(0.5)
            if img is not None:
                from PIL import Image

                Image.fromarray(img).save(tmp_path / "viewer.png")  # kept for a look when the test fails
        finally:
            dev.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert viewer.n_connections >= 1, "the page never opened the viewer's websocket"
    # the side panel shows the store's numbers, so the page got the server's messages
    assert "run.zarr" in text and "frames 74" in text and "windows 6" in text, text[:300]
    assert img is not None
    assert img.shape[:2] == (768, 1024)
    assert img.std() > 20.0  # not blank
    assert _scene_pixels(img) > 0.05, "the 3D view shows no points or lines"


# ----------------------------------------------------------------------------- scale (slow)


@pytest.mark.slow
def test_follower_keeps_a_4m_point_map_within_the_budget(tmp_path):
    """100 windows x 40k fused points: the first poll of the finished store shows at most max_points.

    Run with ``-m slow -s`` to print the timing.
    """
    from da3stream.io.store import ChunkRecord

    path = tmp_path / "big.zarr"
    st = RunStore.create(path, config={}, model={"id": "synthetic"}, source={}, image_hw=(8, 8), depth_hw=(4, 4),
                         descriptor_dim=None, save_rgb=False, save_conf=False)
    rng = np.random.default_rng(0)
    n_chunks, n_points = 100, 40_000
    K = np.array([[[4.0, 0, 4], [0, 4.0, 4], [0, 0, 1]]])
    try:
        for k in range(n_chunks):
            world_from_cam = np.eye(4)
            world_from_cam[0, 3] = float(k)
            st.append_chunk(ChunkRecord(
                chunk_id=k, frame_start=k, frame_index=np.array([k]), frame_timestamp=np.array([k / 30.0]),
                chunk_from_cam=np.eye(4)[None], world_from_cam=world_from_cam[None], intrinsics=K,
                depth=np.ones((1, 4, 4), np.float32), world_from_chunk=Sim3(1.0, np.eye(3), world_from_cam[:3, 3]),
                points_xyz=(rng.normal(size=(n_points, 3)) * [1.0, 1.0, 3.0]).astype(np.float32),
                points_rgb=rng.integers(0, 256, (n_points, 3), dtype=np.uint8), status=2 if k == 0 else 0,
            ))
        st.set_status("complete")
    finally:
        st.close()
    f = StoreFollower(path, FollowOptions(max_points=1_000_000, max_points_per_chunk=50_000))
    t0 = time.perf_counter()
    upd = f.poll()
    dt = time.perf_counter() - t0
    assert upd is not None and len(upd.clouds) == n_chunks
    assert f.points_shown <= 1_000_000 and min(len(c) for c in upd.clouds.values()) > 0
    print(f"\nfollower: {n_chunks * n_points:,} stored points -> {f.points_shown:,} shown "
          f"(per-chunk cap {f.chunk_cap:,}, voxel {upd.voxel:.4g}) in {dt:.2f} s")


def test_viewer_starts_at_the_first_camera_looking_along_its_view(finished_run, tmp_path):
    pytest.importorskip("viser", reason="the viewer extra is not installed (pip install 'da3stream[viewer]')")
    from types import SimpleNamespace

    from da3stream.viewer import LiveViewer, ViewerOptions

    path = _copy(finished_run, tmp_path / "run.zarr")
    first = RunStore.open(path).frames_table()["world_from_cam"][0]
    centre, forward, up = first[:3, 3], first[:3, 2], -first[:3, 1]
    with LiveViewer(path, ViewerOptions(port=0)) as viewer:
        viewer._stop.set()
        cam = viewer._server.initial_camera
        views = [(np.asarray(cam.position), np.asarray(cam.look_at), np.asarray(cam.up))]
        client = SimpleNamespace(camera=SimpleNamespace())  # a browser connecting now gets the same view
        viewer._on_connect(client)
        views.append((np.asarray(client.camera.position), np.asarray(client.camera.look_at),
                      np.asarray(client.camera.up_direction)))
        for position, look_at, cam_up in views:
            np.testing.assert_allclose(position, centre, atol=1e-5)  # at the first camera (before: behind and above it)
            view = (look_at - position) / np.linalg.norm(look_at - position)
            np.testing.assert_allclose(view, forward, atol=1e-5)  # looking along its +z
            np.testing.assert_allclose(cam_up, up, atol=1e-5)
