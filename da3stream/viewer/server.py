"""The live web viewer: a local viser server that follows a run store.

Why viser (not rerun): viser's page is a three.js client shipped inside its
wheel and served by the same small Python process on one port, so
``run_stream.py view`` needs no native viewer binary and no WebGPU; it renders
in any browser with WebGL, including headless Chromium with software WebGL
(what the test uses). Its scene is a tree of nodes with a pose and a scale
each, which fits the store: every chunk's points are sent once, in the chunk
frame, under a node placed by the chunk's ``world_from_chunk`` Sim(3), so a
loop-closure rewrite is one small transform update per chunk instead of a
re-send of the map (rerun logs a time series: moving logged points means
logging them again). Each browser that connects gets the current scene.

Network: the server binds ``127.0.0.1`` unless told otherwise, and viser's
"share" tunnel (an outside relay) is disabled and hidden.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from da3stream.errors import ConfigError
from da3stream.viewer.follow import FollowOptions, StoreFollower, StoreUpdate
from da3stream.io.export.colormap import fit_width

log = logging.getLogger(__name__)

__all__ = ["LiveViewer", "ViewerOptions", "serve"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")

# chunks/status codes (docs/STORE.md) -> frustum colour
STATUS_COLORS = {0: (90, 110, 140), 1: (235, 140, 20), 2: (20, 20, 20), 3: (150, 60, 200)}
SEGMENT_COLORS = ((30, 100, 220), (220, 80, 30), (40, 160, 70), (170, 50, 170), (200, 170, 20), (20, 160, 170))
LOOP_ACCEPTED_COLOR = (30, 180, 60)
LOOP_REJECTED_COLOR = (220, 50, 50)
CURRENT_COLOR = (230, 20, 20)


@dataclass(frozen=True)
class ViewerOptions:
    """Server and drawing settings of :class:`LiveViewer`."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default)."""
    port: int = 8080
    """TCP port (0: any free port; a busy port is replaced by the next free one)."""
    poll_s: float = 0.5
    """Seconds between two reads of the store's commit record."""
    follow: FollowOptions = field(default_factory=FollowOptions)
    """Point budget and decimation (see :class:`~da3stream.viewer.follow.FollowOptions`)."""
    max_trajectory_points: int = 20_000
    """Camera centres drawn in the trajectory polyline (evenly subsampled above this)."""
    max_frusta: int = 300
    """Keyframe frusta drawn (one per chunk; every k-th chunk above this)."""
    frustum_fraction: float = 0.04
    """Frustum depth as a fraction of the scene extent."""
    point_size_voxels: float = 1.5
    """Rendered point size, in voxels of the decimation grid."""
    line_px: float = 2.0
    """Width of trajectory and loop lines, in screen pixels."""
    image_width: int = 320
    """Width of the current-frame and depth images in the side panel."""
    frustum_image_width: int = 128
    """Width of the image drawn on the current camera's frustum."""
    camera_distance: float = 0.0
    """Initial view: distance behind the first camera, in scene extents (0: at the first camera)."""
    camera_height: float = 0.0
    """Initial view: height above the first camera, in scene extents (0: at the first camera)."""


def _wxyz_from_quat_xyzw(q: np.ndarray) -> np.ndarray:
    return np.asarray([q[3], q[0], q[1], q[2]], np.float64)


def _wxyz_from_rotations(R: np.ndarray) -> np.ndarray:
    """(N, 4) wxyz quaternions of (N, 3, 3) rotations."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(R).as_quat()  # xyzw
    return q[:, [3, 0, 1, 2]]


class LiveViewer:
    """A viser server drawing one run store; follows it while a run writes it.

    Use :meth:`start` (binds the port, starts the polling thread), then
    :meth:`wait` or :meth:`stop`; or as a context manager. :meth:`poll_once`
    applies the newest commit now (what the polling thread does every
    ``poll_s``).
    """

    def __init__(self, store_path: str | Path, options: ViewerOptions = ViewerOptions()) -> None:
        self.path = Path(store_path)
        self.options = options
        if options.poll_s <= 0:
            raise ConfigError(f"viewer: poll interval must be positive, got {options.poll_s}")
        if not 0 <= int(options.port) <= 65535:
            raise ConfigError(f"viewer: --port must be in 0..65535, got {options.port}")
        self.follower = StoreFollower(self.path, options.follow)
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._clouds: dict[int, Any] = {}
        self._frusta: dict[int, Any] = {}
        self._sent_wfc = np.zeros((0, 8))
        self._sent_frustum_pose: dict[int, np.ndarray] = {}
        self._gui: dict[str, Any] = {}
        self._nodes: dict[str, Any] = {}  # trajectory, loop edges, current camera
        self._framed = False
        self._view: Optional[tuple] = None  # (position, look_at, up) of the initial view, once framed
        self._voxel: Optional[float] = None
        self._extent = 0.0
        self.n_connections = 0
        """Browser connections accepted so far."""
        self.n_updates = 0
        """Store commits drawn so far."""
        self.last_update: Optional[StoreUpdate] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, follow: bool = True, wait_for_store: bool = False) -> "LiveViewer":
        """Bind the server and draw what the store holds; with ``follow``, keep polling in a thread.

        ``wait_for_store``: the store may not exist yet (a run about to create it); otherwise a
        missing or unreadable store raises :class:`~da3stream.errors.StoreError` here.
        """
        try:
            import viser
        except ImportError as exc:
            raise ConfigError(f"the viewer needs viser ({exc}); install it with: pip install 'da3stream[viewer]'") from None
        if not wait_for_store:
            from da3stream.io.store import RunStore

            RunStore.open(self.path, mode="r")  # one-line StoreError for a missing or foreign directory
        if self.options.host not in LOOPBACK:
            log.warning("viewer: binding %s, not loopback: other machines can open this page", self.options.host)
        # viser prints a banner with rich; the library logs instead
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                self._server = viser.ViserServer(host=self.options.host, port=int(self.options.port), verbose=False)
            except OSError as exc:
                where = f"{self.options.host}:{self.options.port}"
                raise ConfigError(f"viewer: cannot bind {where} ({exc.strerror or exc})") from None
        self._server.request_share_url = self._no_share  # the share tunnel would leave loopback
        self._server.gui.configure_theme(show_share_button=False, show_logo=False, control_width="medium")
        self._server.on_client_connect(self._on_connect)
        self._build_gui()
        log.info("viewer: %s serving %s", self.url, self.path)
        self.poll_once()
        if follow:
            self._thread = threading.Thread(target=self._run, name="da3stream-viewer-poll", daemon=True)
            self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.get_port()) if self._server is not None else int(self.options.port)

    @property
    def url(self) -> str:
        host = self.options.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop polling and close the server (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.options.poll_s))
            self._thread = None
        if self._server is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                self._server.stop()
            self._server = None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until :meth:`stop` (from another thread) or ``timeout`` seconds; Ctrl-C stops the viewer."""
        try:
            self._stop.wait(timeout)
        except KeyboardInterrupt:
            self.stop()
            raise

    def __enter__(self) -> "LiveViewer":
        return self.start() if self._server is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.options.poll_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - keep serving what was drawn; the log says why
                log.exception("viewer: drawing the newest commit failed")

    def _no_share(self, *_: Any, **__: Any) -> None:
        log.warning("viewer: share links are disabled (the viewer serves this machine only)")
        return None

    def _on_connect(self, client: Any) -> None:
        self.n_connections += 1
        log.info("viewer: browser connected (%d so far)", self.n_connections)
        if self._view is not None:  # a browser that connects later starts at the first camera too
            self._set_client_view(client, *self._view)

    @staticmethod
    def _set_client_view(client: Any, position: np.ndarray, look_at: np.ndarray, up: np.ndarray) -> None:
        client.camera.up_direction = up
        client.camera.position = position
        client.camera.look_at = look_at

    # ------------------------------------------------------------------ drawing
    def poll_once(self) -> bool:
        """Read the newest commit and draw it; return whether anything changed."""
        with self._lock:
            if self._server is None:
                return False
            upd = self.follower.poll()
            if upd is None:
                return False
            self._apply(upd)
            self.last_update = upd
            self.n_updates += 1
            return True

    def _apply(self, upd: StoreUpdate) -> None:
        scene = self._server.scene
        if upd.reset:
            for h in list(self._clouds.values()) + list(self._frusta.values()) + list(self._nodes.values()):
                h.remove()
            self._clouds, self._frusta, self._sent_frustum_pose, self._nodes = {}, {}, {}, {}
            self._sent_wfc = np.zeros((0, 8))
            self._framed, self._view = False, None
        self._voxel, self._extent = upd.voxel, upd.extent
        point_size = self._point_size()  # world units; viser multiplies it by the node's scale
        wfc = upd.world_from_chunk
        for k, cloud in upd.clouds.items():
            a = wfc[k]
            self._clouds[k] = scene.add_point_cloud(
                f"/map/chunk_{k:06d}", cloud.xyz, cloud.rgb, point_size=point_size / float(a[0]), precision="float32",
                point_shading="flat", scale=float(a[0]), wxyz=_wxyz_from_quat_xyzw(a[1:5]), position=a[5:8],
            )
        # live Sim(3) of every chunk: new chunks, and every chunk a pose rewrite moved
        n_sent = self._sent_wfc.shape[0]
        moved = [k for k in range(min(n_sent, wfc.shape[0])) if not np.array_equal(self._sent_wfc[k], wfc[k])]
        for k in moved:
            h = self._clouds.get(k)
            if h is not None and k not in upd.clouds:
                h.scale = float(wfc[k][0])
                h.point_size = point_size / float(wfc[k][0])
                h.wxyz = _wxyz_from_quat_xyzw(wfc[k][1:5])
                h.position = wfc[k][5:8]
        self._sent_wfc = wfc.copy()
        if moved:
            log.info("viewer: poses rewritten; moved %d chunks", len(moved))
        self._draw_cameras(upd)
        self._draw_lines(upd)
        self._draw_panel(upd)
        if not self._framed and upd.world_from_cam.shape[0] and self._extent > 0:
            self._frame_view(upd)

    def _point_size(self) -> float:
        base = self._voxel if self._voxel else 0.01
        slider = self._gui.get("point_size")
        factor = float(slider.value) if slider is not None else self.options.point_size_voxels
        return float(base * factor)

    def _draw_cameras(self, upd: StoreUpdate) -> None:
        scene = self._server.scene
        wcam = upd.world_from_cam
        if wcam.shape[0] == 0:
            return
        scale = max(self._extent, 1e-6) * self.options.frustum_fraction
        n_chunks = upd.chunk_first_row.shape[0]
        every = max(1, math.ceil(n_chunks / max(1, self.options.max_frusta)))
        show = self._gui["show_frusta"].value if "show_frusta" in self._gui else True
        rows = upd.chunk_first_row
        wxyz = _wxyz_from_rotations(wcam[rows[rows >= 0]][:, :3, :3]) if (rows >= 0).any() else np.zeros((0, 4))
        j = 0
        for k in range(n_chunks):
            r = int(rows[k])
            if r < 0:
                continue
            q, t = wxyz[j], wcam[r, :3, 3]
            j += 1
            pose = np.concatenate([q, t])
            color = STATUS_COLORS.get(int(upd.chunk_status[k]), STATUS_COLORS[0])
            h = self._frusta.get(k)
            if h is None:
                self._frusta[k] = scene.add_camera_frustum(
                    f"/cameras/chunk_{k:06d}", fov=upd.fov_y, aspect=upd.aspect, scale=scale, color=color, wxyz=q,
                    position=t, thickness=self.options.line_px, thickness_units="screen", visible=show and k % every == 0,
                )
            else:
                if not np.array_equal(self._sent_frustum_pose.get(k), pose):
                    h.wxyz, h.position = q, t
                h.visible = bool(show and k % every == 0)
            self._sent_frustum_pose[k] = pose
        latest = upd.latest
        r = (latest.row if latest is not None else wcam.shape[0] - 1)
        q = _wxyz_from_rotations(wcam[r : r + 1, :3, :3])[0]
        if latest is not None or upd.poses_changed or "current" not in self._nodes:
            image = None
            if latest is not None and latest.rgb is not None:
                image = fit_width(latest.rgb, self.options.frustum_image_width)
            if latest is not None or "current" not in self._nodes:
                self._nodes["current"] = scene.add_camera_frustum(
                    "/cameras/current", fov=upd.fov_y, aspect=upd.aspect, scale=scale * 1.5, color=CURRENT_COLOR,
                    image=image, wxyz=q, position=wcam[r, :3, 3], thickness=2 * self.options.line_px,
                    thickness_units="screen",
                )
            else:
                self._nodes["current"].wxyz, self._nodes["current"].position = q, wcam[r, :3, 3]

    def _draw_lines(self, upd: StoreUpdate) -> None:
        scene = self._server.scene
        centres = upd.world_from_cam[:, :3, 3]
        F = centres.shape[0]
        if F >= 2:
            step = max(1, math.ceil(F / max(2, self.options.max_trajectory_points)))
            idx = np.unique(np.append(np.arange(0, F, step), F - 1))
            a, b = idx[:-1], idx[1:]
            same = upd.frame_segment[a] == upd.frame_segment[b]
            a, b = a[same], b[same]
            if a.size:
                seg = np.stack([centres[a], centres[b]], axis=1).astype(np.float32)
                palette = np.asarray(SEGMENT_COLORS, np.uint8)
                col = palette[upd.frame_segment[a] % len(palette)]
                self._nodes["trajectory"] = scene.add_line_segments(
                    "/trajectory", seg, np.repeat(col[:, None], 2, axis=1), thickness=self.options.line_px,
                    thickness_units="screen",
                )
        show = self._gui["show_loops"].value if "show_loops" in self._gui else True
        for name, pairs, color, width in (("accepted", upd.loops_accepted, LOOP_ACCEPTED_COLOR, 1.5),
                                          ("rejected", upd.loops_rejected, LOOP_REJECTED_COLOR, 0.75)):
            ok = (pairs >= 0).all(axis=1) & (pairs < F).all(axis=1) if pairs.size else np.zeros(0, bool)
            pairs = pairs[ok]
            if pairs.shape[0] == 0:
                continue
            seg = np.stack([centres[pairs[:, 0]], centres[pairs[:, 1]]], axis=1).astype(np.float32)
            self._nodes[f"loops_{name}"] = scene.add_line_segments(
                f"/loops/{name}", seg, color, thickness=width * self.options.line_px, thickness_units="screen",
                visible=show,
            )

    def _draw_panel(self, upd: StoreUpdate) -> None:
        c = upd.counts
        self._gui["status"].content = (
            f"**{self.path.name}** — {upd.status}, commit {c.get('commit', 0)}  \n"
            f"frames {c.get('frames', 0)} · windows {c.get('chunks', 0)} · gated {c.get('gated', 0)} · "
            f"segments {c.get('segments', 0)}  \n"
            f"loops {c.get('loops', 0)} (of {c.get('candidates', 0)} candidates) · pose rewrites {c.get('pose_epoch', 0)}  \n"
            f"map points shown {c.get('points_shown', 0):,} of {c.get('points', 0):,}  \n"
            f"model {c.get('model', '?')}"
        )
        latest = upd.latest
        if latest is not None:
            self._gui["frame_label"].content = f"frame row {latest.row} (source #{latest.index}, t = {latest.timestamp:.2f} s)"
            if latest.rgb is not None:
                self._gui["rgb"].image = fit_width(latest.rgb, self.options.image_width)
                self._gui["rgb"].visible = True
            self._gui["depth"].image = fit_width(latest.depth_rgb, self.options.image_width)
            self._gui["depth"].visible = True

    def _frame_view(self, upd: StoreUpdate) -> None:
        """Start the view at the first camera, looking along its view direction (its +z), its up (-y) up.

        The look-at point lies on the first camera's optical axis, at the median depth of the first
        chunk's points along it (half the scene extent without points): the orbit centre is in the scene.
        ``camera_distance`` / ``camera_height`` move the start back / up (in scene extents).
        """
        first = upd.world_from_cam[0]
        up = -first[:3, 1]  # OpenCV camera: +y is down
        forward = first[:3, 2]
        extent = self._extent
        depth = extent * 0.5
        cloud = upd.clouds.get(0)
        if cloud is not None and len(cloud):
            from da3stream.alignment.sim3 import Sim3

            pts = Sim3.from_array(upd.world_from_chunk[0]).apply(cloud.xyz.astype(np.float64))
            ahead = (pts - first[:3, 3]) @ forward
            ahead = ahead[ahead > 0]
            if ahead.size:
                depth = float(np.median(ahead))
        position = first[:3, 3] - forward * extent * self.options.camera_distance + up * extent * self.options.camera_height
        look_at = position + forward * depth
        scene = self._server.scene
        scene.set_up_direction(tuple(float(v) for v in up))
        cam = self._server.initial_camera
        cam.up = up
        cam.position = position
        cam.look_at = look_at
        cam.near = extent * 1e-3
        cam.far = extent * 1e3
        self._view = (position, look_at, up)
        for client in self._server.get_clients().values():
            self._set_client_view(client, position, look_at, up)
        self._framed = True

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui = self._server.gui
        self._gui["status"] = gui.add_markdown(f"**{self.path.name}** — waiting for the first window")
        self._gui["frame_label"] = gui.add_markdown("")
        blank = np.zeros((8, 8, 3), np.uint8)
        self._gui["rgb"] = gui.add_image(blank, label="current frame", format="jpeg", visible=False)
        self._gui["depth"] = gui.add_image(blank, label="depth (near = red)", format="png", visible=False)
        self._gui["point_size"] = gui.add_slider("point size (voxels)", min=0.25, max=8.0, step=0.25,
                                                 initial_value=float(self.options.point_size_voxels))
        self._gui["show_frusta"] = gui.add_checkbox("keyframe cameras", initial_value=True)
        self._gui["show_loops"] = gui.add_checkbox("loop edges", initial_value=True)

        @self._gui["point_size"].on_update
        def _(_: Any) -> None:
            with self._lock:
                size = self._point_size()
                for k, h in self._clouds.items():
                    h.point_size = size / float(self._sent_wfc[k][0])

        @self._gui["show_frusta"].on_update
        def _(_: Any) -> None:
            with self._lock:
                every = max(1, math.ceil(len(self._frusta) / max(1, self.options.max_frusta)))
                for k, h in self._frusta.items():
                    h.visible = bool(self._gui["show_frusta"].value and k % every == 0)

        @self._gui["show_loops"].on_update
        def _(_: Any) -> None:
            with self._lock:
                for name in ("loops_accepted", "loops_rejected"):
                    if name in self._nodes:
                        self._nodes[name].visible = bool(self._gui["show_loops"].value)


def serve(store_path: str | Path, options: ViewerOptions = ViewerOptions(), *, duration_s: Optional[float] = None) -> None:
    """Serve the viewer for ``store_path`` until Ctrl-C (or for ``duration_s`` seconds); follows a live run.

    ``run_stream.py view RUN.zarr [--host H] [--port P]`` calls this.
    """
    viewer = LiveViewer(store_path, options).start(follow=True, wait_for_store=False)
    log.info("viewer: open %s (Ctrl-C to stop)", viewer.url)
    try:
        viewer.wait(duration_s)
    finally:
        viewer.stop()
