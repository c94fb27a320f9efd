"""Rendered synthetic sequences with exact ground truth, their files, and named presets.

A :class:`SyntheticSequence` holds per frame the true ``world_from_cam``
(F, 4, 4), the intrinsics (3, 3) at render resolution and the timestamps;
RGB (uint8), z-depth (float32) and the sky mask are rendered lazily in small
batches and cached. It writes a video (PyAV, via
:func:`da3stream.io.sources.video_write.write_video`), an image folder, the TUM ground truth
and an ``.npz`` bundle, and it is a ground-truth source for
:class:`~da3stream.synthetic.predictor.SimulatedPredictor`.

Presets (:data:`PRESETS`, built with :func:`make_sequence`) pair a world with
a path and default sizes; see docs/SIMULATOR.md for the list.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from da3stream.synthetic.predictor.truth import GroundTruth
from da3stream.core.types import FrameBatch
from da3stream.errors import ConfigError, ExportError, ShapeError, check_shape
from da3stream.synthetic.names import pick
from da3stream.synthetic import paths as P
from da3stream.synthetic import worlds as W
from da3stream.synthetic.render import cast, intrinsics_from_fov, is_sky, render_views

logger = logging.getLogger(__name__)

NPZ_FORMAT = 1
"""Version of the :meth:`SyntheticSequence.save_npz` layout."""


class SyntheticSequence:
    """A synthetic video with exact ground truth (rendered lazily, cached).

    Args:
        world: the scene (None for a sequence loaded without a rebuildable recipe:
            then only the stored frames and depth are available).
        world_from_cam: (F, 4, 4) float64 true poses (OpenCV camera axes, metres).
        intrinsics: (3, 3) float64 for ``image_hw``.
        timestamps: (F,) float64 seconds.
        image_hw: (H, W) render size.
        name: preset or free name.
        fps: nominal frame rate (videos are written at this rate).
        path_length_m: camera path length in metres (NaN if unknown).
        seed: seeds the sensor noise (per frame, independent of render order).
        noise_std: Gaussian sensor noise std in 8-bit levels (0 for clean images).
        cache: keep rendered frames in memory.
        render_batch: frames ray-cast together.
        recipe: JSON-safe description from which :meth:`load` can rebuild the world.
        events: JSON-safe extra facts (e.g. ``{"cut_frames": [k]}`` for scene cuts).
    """

    def __init__(self, world: Optional[W.World], world_from_cam: np.ndarray, intrinsics: np.ndarray,
                 timestamps: np.ndarray, image_hw: tuple, *, name: str = "synthetic", fps: float = 30.0,
                 path_length_m: float = float("nan"), seed: int = 0, noise_std: float = 1.5, cache: bool = True,
                 render_batch: int = 8, recipe: Optional[dict] = None, events: Optional[dict] = None) -> None:
        Pw = np.array(world_from_cam, dtype=np.float64)
        check_shape("SyntheticSequence.world_from_cam", Pw, ("F", 4, 4), "f")
        K = np.array(intrinsics, dtype=np.float64)
        check_shape("SyntheticSequence.intrinsics", K, (3, 3), "f")
        ts = np.array(timestamps, dtype=np.float64)
        check_shape("SyntheticSequence.timestamps", ts, (Pw.shape[0],), "f")
        for a in (Pw, K, ts):
            a.setflags(write=False)
        self.world = world
        self.world_from_cam = Pw
        self.intrinsics = K
        self.timestamps = ts
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.name = name
        self.fps = float(fps)
        self.path_length_m = float(path_length_m)
        self.seed = int(seed)
        self.noise_std = float(noise_std)
        self.cache = bool(cache)
        self.render_batch = max(1, int(render_batch))
        self.recipe = recipe
        self.events = dict(events or {})
        self._rgb: dict[int, np.ndarray] = {}
        self._depth: dict[int, np.ndarray] = {}
        self._sky: dict[int, np.ndarray] = {}
        self._last_query: Optional[tuple] = None
        self._lock = threading.RLock()  # a prefetch thread may read frames while the predictor reads depth

    def __getstate__(self) -> dict:
        """Pickles without the lock (Ray sends the simulated predictor to its workers this way)."""
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ basics

    def __len__(self) -> int:
        return int(self.world_from_cam.shape[0])

    @property
    def n_frames(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return (f"SyntheticSequence({self.name!r}, {len(self)} frames, {self.image_hw[1]}x{self.image_hw[0]}, "
                f"{self.path_length_m:.1f} m)")

    def describe(self) -> dict:
        """JSON-safe summary."""
        return {"kind": "synthetic", "name": self.name, "n_frames": len(self), "width": self.image_hw[1],
                "height": self.image_hw[0], "fps": self.fps, "path_length_m": self.path_length_m,
                "world": None if self.world is None else self.world.name, "seed": self.seed,
                "noise_std": self.noise_std, "events": self.events, "recipe": self.recipe}

    def _indices(self, indices) -> np.ndarray:
        if indices is None:
            return np.arange(len(self))
        idx = np.atleast_1d(np.asarray(indices))
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise ShapeError(f"SyntheticSequence: indices must be 1-D ints, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ShapeError(f"SyntheticSequence {self.name!r}: frame index out of range 0..{len(self) - 1}")
        return idx.astype(np.int64)

    # ------------------------------------------------------------------ rendering

    def _render(self, idx: np.ndarray, with_rgb: bool) -> dict[int, tuple]:
        if self.world is None:
            raise ConfigError(f"SyntheticSequence {self.name!r}: frames {idx.tolist()[:5]} were not stored and no world to render them")
        out = {}
        for s in range(0, idx.size, self.render_batch):
            part = idx[s:s + self.render_batch]
            keys = np.column_stack([np.full(part.size, self.seed), part])
            r = render_views(self.world, self.world_from_cam[part], self.intrinsics, self.image_hw, with_rgb=with_rgb,
                             noise_std=self.noise_std, noise_keys=keys)
            for j, i in enumerate(part):
                out[int(i)] = (r["rgb"][j] if with_rgb else None, r["depth"][j], r["sky"][j])
        return out

    def _ensure(self, idx: np.ndarray, with_rgb: bool) -> dict[int, tuple]:
        """(rgb or None, depth, sky) per requested frame, rendering what is missing."""
        with self._lock:
            return self._ensure_locked(idx, with_rgb)

    def _ensure_locked(self, idx: np.ndarray, with_rgb: bool) -> dict[int, tuple]:
        have = self._rgb if with_rgb else self._depth
        missing = np.array([i for i in dict.fromkeys(idx.tolist()) if i not in have], dtype=np.int64)
        fresh = self._render(missing, with_rgb) if missing.size else {}
        if self.cache:
            for i, (rgb, depth, sky) in fresh.items():
                if rgb is not None:
                    self._rgb[i] = rgb
                self._depth[i], self._sky[i] = depth, sky
        out = {}
        for i in idx.tolist():
            if i in fresh:
                out[i] = fresh[i]
            else:
                out[i] = (self._rgb.get(i), self._depth[i], self._sky[i])
        return out

    def rgb(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of frame ``i``."""
        return self.images([i])[0]

    def depth(self, i: int) -> np.ndarray:
        """(H, W) float32 true z-depth of frame ``i`` (inf where nothing is hit)."""
        return self.depths([i])[0]

    def images(self, indices=None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB of ``indices`` (all frames when None)."""
        idx = self._indices(indices)
        got = self._ensure(idx, with_rgb=True)
        return np.stack([got[i][0] for i in idx.tolist()]) if idx.size else np.zeros((0,) + self.image_hw + (3,), np.uint8)

    def depths(self, indices=None) -> np.ndarray:
        """(N, H, W) float32 true z-depth of ``indices``."""
        idx = self._indices(indices)
        got = self._ensure(idx, with_rgb=False)
        return np.stack([got[i][1] for i in idx.tolist()]) if idx.size else np.zeros((0,) + self.image_hw, np.float32)

    def skies(self, indices=None) -> np.ndarray:
        """(N, H, W) bool: pixels that see the sky/backdrop."""
        idx = self._indices(indices)
        got = self._ensure(idx, with_rgb=False)
        return np.stack([got[i][2] for i in idx.tolist()]) if idx.size else np.zeros((0,) + self.image_hw, bool)

    def render_all(self) -> "SyntheticSequence":
        """Render and cache every frame now; returns self."""
        self.images()
        return self

    def frames(self, start: int = 0, stop: Optional[int] = None, *, with_timestamps: bool = False) -> Iterator:
        """Iterate frames ``start..stop-1``: (H, W, 3) uint8 RGB, or ``(rgb, timestamp)`` tuples."""
        stop = len(self) if stop is None else min(int(stop), len(self))
        for s in range(int(start), stop, self.render_batch):
            idx = np.arange(s, min(s + self.render_batch, stop))
            imgs = self.images(idx)
            for j, i in enumerate(idx):
                yield (imgs[j], float(self.timestamps[i])) if with_timestamps else imgs[j]

    def batch(self, indices) -> FrameBatch:
        """A :class:`FrameBatch` of the given frames (for driving a predictor directly)."""
        idx = self._indices(indices)
        return FrameBatch(images=self.images(idx), indices=idx, timestamps=self.timestamps[idx].copy())

    # ------------------------------------------------------------------ ground truth

    def _query(self, indices, intrinsics, hw) -> tuple[np.ndarray, np.ndarray]:
        idx = self._indices(indices)
        hw = (int(hw[0]), int(hw[1]))
        K = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (idx.size, 3, 3))
        key = (idx.tobytes(), hw, np.ascontiguousarray(K).tobytes())
        last = self._last_query
        if last is not None and last[0] == key:
            return last[1]
        if hw == self.image_hw and np.array_equal(K, np.broadcast_to(self.intrinsics, K.shape)):
            got = self._ensure(idx, with_rgb=False)
            res = (np.stack([got[i][1] for i in idx.tolist()]), np.stack([got[i][2] for i in idx.tolist()]))
        else:
            if self.world is None:
                raise ConfigError(f"SyntheticSequence {self.name!r}: no world to render depth at {hw} (loaded without recipe)")
            hits = cast(self.world, self.world_from_cam[idx], K, hw, full=False)
            res = (hits["depth"], is_sky(self.world, hits["prim"]))
        self._last_query = (key, res)
        return res

    def gt_depth(self, indices, intrinsics: np.ndarray, hw: tuple) -> np.ndarray:
        """(N, h, w) float32 true z-depth of ``indices`` on any grid with ``intrinsics`` (3, 3) or (N, 3, 3)."""
        return self._query(indices, intrinsics, hw)[0]

    def gt_sky(self, indices, intrinsics: np.ndarray, hw: tuple) -> np.ndarray:
        """(N, h, w) bool sky/backdrop mask on any grid."""
        return self._query(indices, intrinsics, hw)[1]

    def appearance_position(self, points: np.ndarray) -> np.ndarray:
        """Look-alike coordinates of world positions (identity unless the world repeats itself)."""
        return np.asarray(points, dtype=np.float64) if self.world is None else self.world.appearance_position(points)

    def ground_truth(self) -> GroundTruth:
        """This sequence as a :class:`GroundTruth` for the simulated predictor."""
        alias = None
        if self.world is not None and self.world.alias_period is not None:
            alias = np.array([self.world.alias_period, 0.0, 0.0])
        return GroundTruth(world_from_cam=self.world_from_cam, intrinsics=self.intrinsics, image_hw=self.image_hw,
                           depth_fn=self.gt_depth, sky_fn=self.gt_sky, appearance_fn=self.appearance_position,
                           alias_translation=alias)

    # ------------------------------------------------------------------ files

    def write_video(self, path, codec: str = "libx264", fps: Optional[float] = None, crf: Optional[int] = None) -> int:
        """Encode all frames (yuv420p; lossy codecs change pixels). Returns the number of frames written."""
        from da3stream.io.sources.video_write import write_video

        return write_video(path, self.frames(), fps or self.fps, codec=codec, crf=crf)

    def write_image_folder(self, directory, ext: str = "png") -> list[Path]:
        """Write ``frame_0.<ext>`` ... ``frame_<F-1>.<ext>`` (unpadded: natural sort needed). Returns the paths."""
        import cv2

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written = []
        for i, img in enumerate(self.frames()):
            p = d / f"frame_{i}.{ext}"
            ok, buf = cv2.imencode(f".{ext}", np.ascontiguousarray(img[..., ::-1]))
            if not ok:
                raise ExportError(f"{p}: cv2 could not encode a .{ext} image")
            buf.tofile(str(p))
            written.append(p)
        return written

    def write_tum(self, path) -> Path:
        """Write the true trajectory in TUM format (world_from_cam per frame)."""
        return write_tum(path, self.timestamps, self.world_from_cam)

    def save_npz(self, path, with_images: bool = True) -> Path:
        """Save ground truth (and, if asked, every rendered frame, depth and sky mask) to one ``.npz``."""
        arrays: dict[str, Any] = {
            "format": np.int64(NPZ_FORMAT), "world_from_cam": self.world_from_cam, "intrinsics": self.intrinsics,
            "timestamps": self.timestamps, "image_hw": np.asarray(self.image_hw, dtype=np.int64),
            "meta": np.array(json.dumps({"name": self.name, "fps": self.fps, "path_length_m": self.path_length_m,
                                         "seed": self.seed, "noise_std": self.noise_std, "recipe": self.recipe,
                                         "events": self.events})),
        }
        if with_images:
            arrays["rgb"] = self.images()
            arrays["depth"] = self.depths()
            arrays["sky"] = self.skies()
        p = Path(path)
        try:
            np.savez_compressed(p, **arrays)
        except OSError as exc:
            raise ExportError(f"{p}: cannot write ({exc.strerror or exc})") from None
        return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")

    @classmethod
    def load(cls, path, cache: bool = True) -> "SyntheticSequence":
        """Load a :meth:`save_npz` bundle; the world is rebuilt from the recipe when there is one."""
        p = Path(path)
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{p}: not a readable sequence bundle ({exc})") from None
        with data:
            if "format" not in data or int(data["format"]) > NPZ_FORMAT:
                raise ExportError(f"{p}: not a sequence bundle of format <= {NPZ_FORMAT}")
            meta = json.loads(str(data["meta"]))
            recipe = meta.get("recipe")
            world = _world_from_recipe(recipe) if recipe else None
            seq = cls(world, data["world_from_cam"], data["intrinsics"], data["timestamps"], tuple(data["image_hw"]),
                      name=meta["name"], fps=meta["fps"], path_length_m=meta["path_length_m"], seed=meta["seed"],
                      noise_std=meta["noise_std"], cache=cache, recipe=recipe, events=meta.get("events"))
            if "rgb" in data:
                rgb, depth, sky = data["rgb"], data["depth"], data["sky"]
                for i in range(len(seq)):
                    seq._rgb[i], seq._depth[i], seq._sky[i] = rgb[i], depth[i], sky[i]
        return seq


# ----------------------------------------------------------------------------- TUM files


def write_tum(path, timestamps: np.ndarray, world_from_cam: np.ndarray) -> Path:
    """Write ``timestamp tx ty tz qx qy qz qw`` lines (``world_from_cam``, quat_xyzw) to ``path``."""
    from scipy.spatial.transform import Rotation

    Pw = np.asarray(world_from_cam, dtype=np.float64)
    check_shape("write_tum(world_from_cam)", Pw, ("F", 4, 4), "f")
    ts = np.asarray(timestamps, dtype=np.float64)
    check_shape("write_tum(timestamps)", ts, (Pw.shape[0],), "f")
    quat_xyzw = Rotation.from_matrix(Pw[:, :3, :3]).as_quat()
    lines = ["# timestamp tx ty tz qx qy qz qw  (world_from_cam, OpenCV camera axes)"]
    for t, M, q in zip(ts, Pw, quat_xyzw):
        lines.append(f"{t:.9f} " + " ".join(f"{v:.9f}" for v in (*M[:3, 3], *q)))
    p = Path(path)
    try:
        p.write_text("\n".join(lines) + "\n")
    except OSError as exc:
        raise ExportError(f"{p}: cannot write TUM file ({exc.strerror or exc})") from None
    return p


def read_tum(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory: ``(timestamps (F,) float64, world_from_cam (F, 4, 4) float64)``."""
    from scipy.spatial.transform import Rotation

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ExportError(f"{p}: cannot read TUM file ({exc.strerror or exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vals = line.replace(",", " ").split()
        if len(vals) != 8:
            raise ExportError(f"{p}:{n}: expected 8 values (timestamp tx ty tz qx qy qz qw), got {len(vals)}")
        try:
            rows.append([float(v) for v in vals])
        except ValueError:
            raise ExportError(f"{p}:{n}: not a number in {line!r}") from None
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
    Pw = np.tile(np.eye(4), (a.shape[0], 1, 1))
    if a.shape[0]:
        Pw[:, :3, :3] = Rotation.from_quat(a[:, 4:8]).as_matrix()
        Pw[:, :3, 3] = a[:, 1:4]
    return a[:, 0], Pw


# ----------------------------------------------------------------------------- building sequences


def render_sequence(world: W.World, path: P.CameraPath, n_frames: Optional[int] = None, width: int = 320,
                    height: int = 240, fov_deg: float = 70.0, seed: int = 0, *, noise_std: float = 1.5,
                    cache: bool = True, name: Optional[str] = None, recipe: Optional[dict] = None,
                    events: Optional[dict] = None) -> SyntheticSequence:
    """Sample ``path`` at ``n_frames`` frames (default: real time at the path's fps) and wrap it for rendering.

    Nothing is rendered yet: frames are rendered when first asked for.
    ``fov_deg`` is the horizontal field of view; ``seed`` seeds the sensor noise.
    """
    n = path.natural_frames if n_frames is None else int(n_frames)
    if n < 1 or width < 2 or height < 2:
        raise ConfigError(f"render_sequence: need n_frames >= 1 and a size >= 2x2, got {n}, {width}x{height}")
    timestamps, world_from_cam = path.sample(n)
    K = intrinsics_from_fov(width, height, fov_deg)
    return SyntheticSequence(world, world_from_cam, K, timestamps, (height, width), name=name or path.name,
                             fps=path.fps, path_length_m=path.length_m, seed=seed, noise_std=noise_std, cache=cache,
                             recipe=recipe, events=events)


@dataclass(frozen=True)
class Preset:
    """A named world + path pairing with default sizes."""

    description: str
    """What the preset exercises."""
    build: Callable[[dict, dict], tuple]
    """(world_kwargs, path_kwargs) -> (World, CameraPath, events with native cut times)."""
    n_frames: int
    """Default frame count."""
    width: int
    """Default render width."""
    height: int
    """Default render height."""
    fov_deg: float
    """Default horizontal field of view."""


def _simple(world_name: str, path_name: str, world_defaults: Optional[dict] = None, path_defaults: Optional[dict] = None):
    def build(wk: dict, pk: dict):
        return (W.make_world(world_name, **{**(world_defaults or {}), **wk}),
                P.make_path(path_name, **{**(path_defaults or {}), **pk}), {})
    return build


def _aliasing(wk: dict, pk: dict):
    wk = {"n_segments": 10, "segment_length": 6.0, **wk}
    pk = {"n_segments": wk["n_segments"], "segment_length": wk["segment_length"], **pk}
    return W.corridor_world(**wk), P.corridor_aliasing(**pk), {}


_CUT_OFFSET = (1000.0, 0.0, 0.0)


def _scene_cut(wk: dict, pk: dict):
    world = W.merge_worlds([W.room_world(**wk.get("room", {})), W.city_world(**wk.get("city", {}))],
                           [(0.0, 0.0, 0.0), _CUT_OFFSET], name="room+city")
    first = P.walk(**pk.get("walk", {}))
    second = P.translated(P.block_loop(**{"laps": 0, "extra_m": 40.0, **pk.get("street", {})}), _CUT_OFFSET)
    path = P.concat_paths([first, second], name="scene_cut")
    return world, path, {"cut_native_s": list(path.cut_times)}


PRESETS: dict[str, Preset] = {
    "demo": Preset("room, hand-held walk around a pillar back to the start (fast turn, slow part, static stretch, pan)",
                   _simple("room", "walk"), 300, 320, 240, 70.0),
    "loop": Preset("city street, two laps around a block plus 20 m (revisits, for loop closure)",
                   _simple("city", "block_loop", path_defaults={"laps": 2, "extra_m": 20.0}), 2400, 160, 120, 75.0),
    "aliasing": Preset("corridor of identical segments walked once (false loop candidates, no true revisit)",
                       _aliasing, 600, 160, 120, 70.0),
    "static": Preset("room, a camera that never moves", _simple("room", "static"), 90, 320, 240, 70.0),
    "pure_rotation": Preset("room, panning in place without translation", _simple("room", "pure_rotation"),
                            200, 320, 240, 70.0),
    "textureless": Preset("untextured room, the demo walk", _simple("textureless", "walk"), 150, 320, 240, 70.0),
    "scene_cut": Preset("room walk, then a hard cut to a city street", _scene_cut, 300, 320, 240, 70.0),
    "drone": Preset("drone orbit over fields and houses", _simple("ground", "drone_orbit"), 600, 320, 240, 80.0),
    "figure8": Preset("room, figure eight around both pillars", _simple("room", "figure8"), 400, 320, 240, 70.0),
    "robot_loop": Preset("room, ground robot, two rectangular laps", _simple("room", "robot_loop", path_defaults={"laps": 2}),
                         1200, 160, 120, 80.0),
    "street": Preset("city street, one lap around a block", _simple("city", "block_loop"), 600, 320, 240, 75.0),
}


def _world_from_recipe(recipe: dict) -> Optional[W.World]:
    preset = recipe.get("preset")
    if preset not in PRESETS:
        return None
    return PRESETS[preset].build(recipe.get("world_kwargs") or {}, recipe.get("path_kwargs") or {})[0]


def make_sequence(preset: str, n_frames: Optional[int] = None, width: Optional[int] = None,
                  height: Optional[int] = None, fov_deg: Optional[float] = None, seed: int = 0, *,
                  noise_std: float = 1.5, cache: bool = True, world_kwargs: Optional[dict] = None,
                  path_kwargs: Optional[dict] = None) -> SyntheticSequence:
    """Build a named preset (see :data:`PRESETS`); None arguments take the preset's defaults.

    ``world_kwargs``/``path_kwargs`` override the builders' arguments (for
    ``scene_cut``: ``{"room": {...}, "city": {...}}`` and ``{"walk": {...}, "street": {...}}``).
    """
    spec = pick("synthetic preset", PRESETS, preset)
    wk, pk = dict(world_kwargs or {}), dict(path_kwargs or {})
    world, path, native_events = spec.build(wk, pk)
    n = spec.n_frames if n_frames is None else int(n_frames)
    events: dict = {}
    if "cut_native_s" in native_events:
        native = np.linspace(0.0, path.duration_s, n) if n > 1 else np.zeros(1)
        events["cut_frames"] = [int(np.searchsorted(native, t, side="left")) for t in native_events["cut_native_s"]]
    recipe = {"preset": preset, "world_kwargs": wk, "path_kwargs": pk}
    return render_sequence(world, path, n, width or spec.width, height or spec.height, fov_deg or spec.fov_deg, seed,
                           noise_std=noise_std, cache=cache, name=preset, recipe=recipe, events=events)
