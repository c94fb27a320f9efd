"""Ray casting and procedural texturing of :class:`~da3stream.synthetic.worlds.World` meshes.

Pixel convention (the one the whole project uses): pixel ``(row v, column u)``
has its centre at image coordinates ``(u, v)``; the ray through it is
``world_from_cam[:3, :3] @ K^-1 @ [u, v, 1]`` from the camera centre. That ray
has a camera-z component of exactly 1, so the ray parameter of the hit is the
z-depth. Camera axes are OpenCV (+x right, +y down, +z forward).

Intrinsics move between grids with :func:`scale_intrinsics` (pixel centres
aligned, as ``cv2.resize`` maps pixels).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from da3stream.synthetic.predictor.truth import pixel_rays, scale_intrinsics  # noqa: F401  (scale_intrinsics re-exported)
from da3stream.errors import ShapeError, check_shape
from da3stream.synthetic.worlds import World

logger = logging.getLogger(__name__)

INVALID_PRIMITIVE = np.uint32(0xFFFFFFFF)

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) float64 pinhole intrinsics with horizontal field of view ``fov_deg`` and square pixels.

    The principal point is the image centre ``((W - 1) / 2, (H - 1) / 2)`` in
    the pixel-centre convention above.
    """
    if not (0.0 < fov_deg < 179.0) or width < 1 or height < 1:
        raise ShapeError(f"intrinsics_from_fov: need 0 < fov_deg < 179 and a positive size, got {fov_deg}, {width}x{height}")
    f = (width / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def camera_rays(world_from_cam: np.ndarray, intrinsics: np.ndarray, hw: tuple,
                dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins (N, h, w, 3) and directions (N, h, w, 3) in the world frame.

    ``intrinsics`` is (3, 3) shared or (N, 3, 3). Directions have camera-z 1.
    """
    h, w = int(hw[0]), int(hw[1])
    P = np.asarray(world_from_cam, dtype=np.float64)
    dirs = pixel_rays(P, intrinsics, np.arange(w), np.arange(h), dtype=dtype)
    origins = np.broadcast_to(P[:, None, None, :3, 3].astype(dtype), dirs.shape)
    return origins, dirs


def cast(world: World, world_from_cam: np.ndarray, intrinsics: np.ndarray, hw: tuple, *, full: bool = True) -> dict:
    """Cast one ray per pixel for N cameras.

    Args:
        world: the scene.
        world_from_cam: (N, 4, 4) float64 camera poses.
        intrinsics: (3, 3) or (N, 3, 3) float64, for the ``hw`` grid.
        hw: (h, w) output grid.
        full: also return normals, directions and hit points (needed for shading).

    Returns:
        dict with ``depth`` (N, h, w) float32 z-depth (inf on a miss) and
        ``prim`` (N, h, w) uint32 triangle id (:data:`INVALID_PRIMITIVE` on a
        miss); with ``full`` also ``normal`` (N, h, w, 3) float32 world normals
        facing the camera, ``dirs`` (N, h, w, 3) float32 world ray directions
        and ``points`` (N, h, w, 3) float32 hit points.
    """
    import open3d as o3d

    P = np.asarray(world_from_cam, dtype=np.float64)
    check_shape("cast(world_from_cam)", P, ("N", 4, 4), "f")
    h, w = int(hw[0]), int(hw[1])
    rays = np.empty((P.shape[0], h, w, 6), dtype=np.float32)
    rays[..., 3:] = pixel_rays(P, intrinsics, np.arange(w), np.arange(h))
    rays[..., :3] = P[:, None, None, :3, 3].astype(np.float32)
    ans = world.scene().cast_rays(o3d.core.Tensor(rays))
    out = {"depth": ans["t_hit"].numpy(), "prim": ans["primitive_ids"].numpy()}
    if full:
        depth = out["depth"]
        normal = ans["primitive_normals"].numpy()
        dirs32 = rays[..., 3:]
        facing = np.sum(normal * dirs32, axis=-1, keepdims=True) > 0
        out["normal"] = np.where(facing, -normal, normal)
        out["dirs"] = dirs32
        out["points"] = rays[..., :3] + dirs32 * np.where(np.isfinite(depth), depth, 0.0)[..., None]
    return out


# ----------------------------------------------------------------------------- texturing


def _hash01(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) float32 from integer keys (elementwise)."""
    h0 = ((seed & 0xFFFFFFFF) * int(_M1) + int(_M2)) % (1 << 64)
    h = np.full(np.shape(keys[0]), h0, dtype=np.uint64)
    for k in keys:
        h = h ^ (np.asarray(k, dtype=np.int64).view(np.uint64) * _M1)
        h ^= h >> _S30
        h *= _M2
        h ^= h >> _S27
        h *= _M3
        h ^= h >> _S31
    return (h >> _S40).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """2D value noise in [0, 1), smooth at unit wavelength."""
    fx, fy = np.floor(x), np.floor(y)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = (x - fx).astype(np.float32), (y - fy).astype(np.float32)
    tx = tx * tx * (3 - 2 * tx)
    ty = ty * ty * (3 - 2 * ty)
    v00 = _hash01(seed, ix, iy)
    v10 = _hash01(seed, ix + 1, iy)
    v01 = _hash01(seed, ix, iy + 1)
    v11 = _hash01(seed, ix + 1, iy + 1)
    a = v00 + (v10 - v00) * tx
    b = v01 + (v11 - v01) * tx
    return a + (b - a) * ty


def _fade(cell_m: float, footprint: np.ndarray, lo_px: float, hi_px: float) -> np.ndarray:
    """Contrast in [0, 1] of a pattern with cells of ``cell_m`` metres seen at ``footprint`` metres/pixel.

    Patterns smaller than ``lo_px`` pixels fade to their mean colour (cheap
    anti-aliasing), fully visible above ``hi_px`` pixels.
    """
    px = cell_m / np.maximum(footprint, 1e-9)
    return np.clip((px - lo_px) / (hi_px - lo_px), 0.0, 1.0).astype(np.float32)


# anti-aliasing window (pixels per pattern cell) and fine-grain parameters
_AA_LO, _AA_HI = 1.5, 4.0
_GRAIN_SCALE_M, _GRAIN_AMPLITUDE = 0.06, 0.12


def _lerp(a, b, t):
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return a + (b - a) * t[..., None]


def _plain(a, b, sc, seed, s, t, dirs, footprint):
    return np.broadcast_to(a, (s.shape[0], 3)).copy()


def _sky(a, b, sc, seed, s, t, dirs, footprint):
    elev = np.clip(dirs[:, 2] / np.maximum(np.linalg.norm(dirs, axis=1), 1e-9), 0.0, 1.0)
    base = _lerp(b, a, np.sqrt(elev))
    az = np.arctan2(dirs[:, 1], dirs[:, 0])
    clouds = _value_noise(az * 6.0, elev * 10.0, seed) * _value_noise(az * 13.0, elev * 21.0, seed + 1)
    return base + (np.float32(1.0) - base) * np.clip(clouds * 1.6 - 0.3, 0.0, 1.0)[:, None] * 0.8


def _bricks(a, b, sc, seed, s, t, dirs, footprint):
    bw, bh = sc, sc * 0.45
    row = np.floor(t / bh)
    uu = s / bw + 0.5 * np.mod(row, 2)
    col = np.floor(uu)
    fu, fv = uu - col, t / bh - row
    var = _hash01(seed, col.astype(np.int64), row.astype(np.int64))
    c_brick = _fade(bw, footprint, _AA_LO, _AA_HI)
    col_rgb = _lerp(a * 0.75, a * 1.15, 0.5 + (var - 0.5) * c_brick)
    mortar = ((fu < 0.06) | (fv < 0.14)).astype(np.float32) * _fade(bh * 0.14, footprint, 0.5, 1.5)
    return col_rgb + (b - col_rgb) * mortar[:, None]


def _tiles(a, b, sc, seed, s, t, dirs, footprint):
    i, j = np.floor(s / sc), np.floor(t / sc)
    checker = np.mod(i + j, 2).astype(np.float32)
    var = _hash01(seed, i.astype(np.int64), j.astype(np.int64))
    c = _fade(sc, footprint, _AA_LO, _AA_HI)
    val = 0.5 + (checker * 0.8 + var * 0.2 - 0.5) * c
    rgb = _lerp(a, b, val)
    fs, ft = s / sc - i, t / sc - j
    grout = ((fs < 0.04) | (ft < 0.04)).astype(np.float32) * _fade(sc * 0.04, footprint, 0.5, 1.5)
    return rgb * (1.0 - 0.45 * grout)[:, None]


def _stripes(a, b, sc, seed, s, t, dirs, footprint):
    k = np.floor(t / sc)
    c = _fade(sc, footprint, _AA_LO, _AA_HI)
    var = _hash01(seed, k.astype(np.int64))
    val = 0.5 + (np.mod(k, 2).astype(np.float32) * 0.75 + var * 0.25 - 0.5) * c
    wobble = _value_noise(s / (sc * 4.0), t / (sc * 4.0), seed + 7) - 0.5
    return _lerp(a, b, val) * (1.0 + 0.3 * wobble * c)[:, None]


def _noise(a, b, sc, seed, s, t, dirs, footprint):
    c1 = _fade(sc, footprint, _AA_LO, _AA_HI)
    c2 = _fade(sc * 0.3, footprint, _AA_LO, _AA_HI)
    v = 0.5 + (_value_noise(s / sc, t / sc, seed) - 0.5) * 0.65 * c1
    v = v + (_value_noise(s / (sc * 0.3), t / (sc * 0.3), seed + 3) - 0.5) * 0.35 * c2
    v = np.clip(0.5 + (v - 0.5) * 2.4, 0.0, 1.0)
    return _lerp(a, b, v)


def _ground(a, b, sc, seed, s, t, dirs, footprint):
    c1 = _fade(sc, footprint, _AA_LO, _AA_HI)
    patch = _value_noise(s / sc, t / sc, seed)
    sharp = 0.5 + np.clip((patch - 0.5) * 6.0, -0.5, 0.5) * c1
    rgb = _lerp(a, b, sharp)
    c2 = _fade(sc * 0.08, footprint, _AA_LO, _AA_HI)
    detail = (_value_noise(s / (sc * 0.08), t / (sc * 0.08), seed + 5) - 0.5) * 0.5 * c2
    return rgb * (1.0 + detail)[:, None]


def _windows(a, b, sc, seed, s, t, dirs, footprint):
    sx, sz = sc, sc * 1.1
    i, j = np.floor(s / sx), np.floor(t / sz)
    fs, ft = s / sx - i, t / sz - j
    glass = ((fs > 0.22) & (fs < 0.78) & (ft > 0.3) & (ft < 0.8)).astype(np.float32)
    glass = glass * _fade(sx * 0.56, footprint, _AA_LO, _AA_HI)
    lit = _hash01(seed, i.astype(np.int64), j.astype(np.int64))
    glass_rgb = _lerp(b, b * 0.3 + 0.55, (lit > 0.8).astype(np.float32) * lit)
    wall = _lerp(a * 0.85, a * 1.1, _value_noise(s / 1.5, t / 1.5, seed + 9))
    return wall + (glass_rgb - wall) * glass[:, None]


_SHADERS = {"plain": _plain, "sky": _sky, "bricks": _bricks, "tiles": _tiles, "stripes": _stripes, "noise": _noise,
            "ground": _ground, "windows": _windows}
"""Material kind -> shader ``(color_a, color_b, scale, seed, s, t, dirs, footprint) -> (M, 3) float32 RGB``."""


def _shade_material(mat, s: np.ndarray, t: np.ndarray, dirs: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """RGB (M, 3) float32 in ~0..1 for texture coordinates ``s, t`` (metres) of one material."""
    shader = _SHADERS.get(mat.kind)
    if shader is None:  # pragma: no cover - guarded by Material
        raise ShapeError(f"unknown material kind {mat.kind!r}")
    a = np.asarray(mat.color_a, dtype=np.float32)
    b = np.asarray(mat.color_b, dtype=np.float32)
    return shader(a, b, float(mat.scale), int(mat.seed), s, t, dirs, footprint)


def shade(world: World, hits: dict, focal_px: float, ambient: float = 0.55) -> np.ndarray:
    """Colour ray hits; returns (N, h, w, 3) float32 RGB in 0..1.

    Args:
        world: the scene whose materials are used.
        hits: the dict from :func:`cast`.
        focal_px: focal length in pixels (sets the anti-aliasing footprint).
        ambient: fraction of light independent of the surface orientation.
    """
    prim = hits["prim"]
    shape = prim.shape
    flat_prim = prim.reshape(-1)
    rgb = np.zeros((flat_prim.size, 3), dtype=np.float32)
    idx = np.flatnonzero(flat_prim != INVALID_PRIMITIVE)
    if idx.size == 0:
        return rgb.reshape(shape + (3,))
    tri = flat_prim[idx].astype(np.int64)
    mat_ids = world.material_ids[tri]
    # group pixels by material once (sorted), then shade contiguous slices
    order = np.argsort(mat_ids.astype(np.int16) if len(world.materials) < 32768 else mat_ids, kind="stable")  # radix sort
    idx, tri, mat_ids = idx[order], tri[order], mat_ids[order]
    pts = hits["points"].reshape(-1, 3)[idx] - world.tex_offsets[tri]
    nrm = hits["normal"].reshape(-1, 3)[idx]
    dirs = hits["dirs"].reshape(-1, 3)[idx]
    depth = hits["depth"].reshape(-1)[idx]
    cos_inc = np.abs(np.einsum("ij,ij->i", nrm, dirs)) / np.maximum(np.linalg.norm(dirs, axis=1), 1e-9)
    footprint = depth / np.float32(focal_px) / np.maximum(cos_inc, 0.2)
    # planar texture coordinates: drop the axis the surface faces
    ax = np.argmax(np.abs(nrm), axis=1)
    s = np.where(ax == 0, pts[:, 1], pts[:, 0])
    t = np.where(ax == 2, pts[:, 1], pts[:, 2])
    light = np.asarray(world.light_dir, dtype=np.float32)
    light = light / np.linalg.norm(light)
    lambert = np.float32(ambient) + np.float32(1.0 - ambient) * np.abs(nrm @ light)
    out = np.empty((idx.size, 3), dtype=np.float32)
    bounds = np.flatnonzero(np.diff(mat_ids)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [idx.size]])):
        mat = world.materials[int(mat_ids[a])]
        sl = slice(int(a), int(b))
        col = _shade_material(mat, s[sl], t[sl], dirs[sl], footprint[sl])
        if mat.kind not in ("plain", "sky"):
            grain_c = _fade(_GRAIN_SCALE_M, footprint[sl], _AA_LO, _AA_HI)
            grain = _value_noise(s[sl] / _GRAIN_SCALE_M, t[sl] / _GRAIN_SCALE_M, int(mat.seed) + 17) - 0.5
            col = col * (1.0 + _GRAIN_AMPLITUDE * 2.0 * grain * grain_c)[:, None]
        if mat.kind != "sky":
            col = col * lambert[sl, None]
        out[sl] = col
    rgb[idx] = out
    return rgb.reshape(shape + (3,))


def is_sky(world: World, prim: np.ndarray) -> np.ndarray:
    """(..., ) bool: the ray hit a sky material (or nothing)."""
    flat = prim.reshape(-1)
    out = np.ones(flat.shape, dtype=bool)
    valid = flat != INVALID_PRIMITIVE
    sky_mats = np.array([m.kind == "sky" for m in world.materials], dtype=bool)
    out[valid] = sky_mats[world.material_ids[flat[valid].astype(np.int64)]]
    return out.reshape(prim.shape)


def render_views(
    world: World,
    world_from_cam: np.ndarray,
    intrinsics: np.ndarray,
    hw: tuple,
    *,
    with_rgb: bool = True,
    noise_std: float = 0.0,
    noise_keys: Optional[np.ndarray] = None,
) -> dict:
    """Render N views: ``depth`` (N, h, w) float32, ``sky`` (N, h, w) bool and, if asked, ``rgb`` (N, h, w, 3) uint8.

    Args:
        world: the scene.
        world_from_cam: (N, 4, 4) float64 poses.
        intrinsics: (3, 3) float64 for the ``hw`` grid (or (N, 3, 3)).
        hw: (h, w).
        with_rgb: also shade the hits.
        noise_std: std of additive Gaussian sensor noise in 8-bit levels.
        noise_keys: (N,) or (N, k) non-negative int keys seeding each view's
            sensor noise (e.g. sequence seed and frame index), so a frame
            looks the same whichever batch renders it.
    """
    hits = cast(world, world_from_cam, intrinsics, hw, full=with_rgb)
    out = {"depth": hits["depth"], "sky": is_sky(world, hits["prim"])}
    if with_rgb:
        K = np.asarray(intrinsics, dtype=np.float64)
        focal = float(np.mean(K[..., 0, 0]))
        rgb = shade(world, hits, focal)
        img = rgb * 255.0
        if noise_std > 0:
            n = img.shape[0]
            keys = np.arange(n)[:, None] if noise_keys is None else np.asarray(noise_keys).reshape(n, -1)
            for i in range(n):
                gen = np.random.default_rng([int(k) for k in keys[i]] + [7919])
                img[i] += gen.standard_normal(img.shape[1:], dtype=np.float32) * np.float32(noise_std)
        out["rgb"] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out
