"""Synthetic worlds: triangle meshes with procedural materials and a far backdrop.

World coordinates are metres with +z up (x east, y north). A :class:`World` is
an immutable bag of arrays: vertices, triangles, a material id and a texture
offset per triangle. Texturing (``render.py``) evaluates each material's
pattern at ``hit_point - tex_offset``, so geometry copied with the same offset
looks identical (the corridor's look-alike segments).

Builders (all deterministic given their arguments):

- :func:`room_world`: a closed 14 x 10 x 3 m room with two pillars, furniture
  along the walls and posters.
- :func:`corridor_world`: a straight corridor of identical segments (doors,
  pillars, posters, lights) with distinct end walls; places that are one
  segment apart look alike (see :meth:`World.appearance_position`).
- :func:`city_world`: a grid of city blocks with box buildings, streets and a
  sky backdrop.
- :func:`ground_world`: open fields with scattered houses and trees for drones.
- :func:`textureless_world`: the room with plain, untextured materials.
- :func:`merge_worlds`: several worlds placed far apart in one coordinate frame
  (used for hard scene cuts whose ground truth stays consistent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from da3stream.errors import ConfigError, check_shape
from da3stream.synthetic.names import pick

MATERIAL_KINDS = ("bricks", "tiles", "noise", "windows", "stripes", "plain", "ground", "sky")


@dataclass(frozen=True)
class Material:
    """A procedural surface appearance."""

    kind: str
    """Pattern family, one of :data:`MATERIAL_KINDS`."""
    color_a: tuple
    """Primary RGB colour in 0..1."""
    color_b: tuple
    """Secondary RGB colour in 0..1 (mortar, grout, glass, field colour ...)."""
    scale: float = 1.0
    """Pattern cell size in metres (brick width, tile side, window spacing, noise wavelength)."""
    seed: int = 0
    """Seed of the pattern's hash, so equal kinds with different seeds differ."""

    def __post_init__(self) -> None:
        if self.kind not in MATERIAL_KINDS:
            raise ConfigError(f"Material.kind must be one of {MATERIAL_KINDS}, got {self.kind!r}")
        if not self.scale > 0:
            raise ConfigError(f"Material.scale must be > 0, got {self.scale}")


@dataclass(frozen=True, eq=False)
class World:
    """An immutable textured triangle mesh, ray-cast with open3d."""

    name: str
    """Short name used in logs and sequence descriptions."""
    vertices: np.ndarray
    """(V, 3) float32 vertex positions in world metres."""
    triangles: np.ndarray
    """(T, 3) uint32 vertex indices."""
    material_ids: np.ndarray
    """(T,) int32 index into ``materials`` per triangle."""
    tex_offsets: np.ndarray
    """(T, 3) float32 offset subtracted from hit points before texturing."""
    materials: tuple
    """The :class:`Material` table."""
    alias_period: Optional[float] = None
    """Length of the repeated segment along x (look-alike places), or None."""
    alias_x_range: tuple = (0.0, 0.0)
    """x-interval of the repeated structure (its start sets the phase of the folding)."""
    light_dir: tuple = (0.35, 0.55, 0.76)
    """Direction towards the light (world frame) for Lambert shading."""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_shape(f"World({self.name}).vertices", self.vertices, ("V", 3), "f")
        check_shape(f"World({self.name}).triangles", self.triangles, ("T", 3), "iu")
        n_tri = self.triangles.shape[0]
        check_shape(f"World({self.name}).material_ids", self.material_ids, (n_tri,), "iu")
        check_shape(f"World({self.name}).tex_offsets", self.tex_offsets, (n_tri, 3), "f")
        for arr in (self.vertices, self.triangles, self.material_ids, self.tex_offsets):
            arr.setflags(write=False)

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def scene(self):
        """The cached open3d ``RaycastingScene`` holding this mesh."""
        scene = self._cache.get("scene")
        if scene is None:
            import open3d as o3d

            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(
                o3d.core.Tensor(np.ascontiguousarray(self.vertices, dtype=np.float32)),
                o3d.core.Tensor(np.ascontiguousarray(self.triangles, dtype=np.uint32)),
            )
            self._cache["scene"] = scene
        return scene

    def appearance_position(self, points: np.ndarray) -> np.ndarray:
        """Map world positions (M, 3) to "look-alike" coordinates (M, k), metric near each point.

        Two places that look the same (corridor positions a whole number of
        segments apart) map to the same coordinates. Without repeated
        structure this is the identity (k = 3). With ``alias_period`` L the
        x coordinate becomes a point on a circle of circumference L (k = 4:
        ``[r cos(2 pi x / L), r sin(2 pi x / L), y, z]`` with r = L / (2 pi)),
        continuous across segment boundaries. Used by the simulated
        predictor's descriptors.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.alias_period is None:
            return pts
        r = self.alias_period / (2.0 * np.pi)
        phase = 2.0 * np.pi * (pts[:, 0] - self.alias_x_range[0]) / self.alias_period
        return np.column_stack([r * np.cos(phase), r * np.sin(phase), pts[:, 1], pts[:, 2]])

    def translated(self, offset: Sequence[float], name: Optional[str] = None) -> "World":
        """A copy moved by ``offset`` metres that looks the same (texture offsets move too)."""
        off = np.asarray(offset, dtype=np.float32).reshape(3)
        x0, x1 = self.alias_x_range
        return World(
            name=name or self.name,
            vertices=self.vertices + off,
            triangles=self.triangles,
            material_ids=self.material_ids,
            tex_offsets=self.tex_offsets + off,
            materials=self.materials,
            alias_period=self.alias_period,
            alias_x_range=(x0 + float(off[0]), x1 + float(off[0])),
            light_dir=self.light_dir,
        )


class MeshBuilder:
    """Accumulates quads and boxes with their materials; :meth:`build` returns a :class:`World`."""

    def __init__(self) -> None:
        self._verts: list[np.ndarray] = []
        self._tris: list[np.ndarray] = []
        self._mats: list[np.ndarray] = []
        self._offs: list[np.ndarray] = []
        self._n_verts = 0
        self.materials: list[Material] = []

    def material(self, mat: Material) -> int:
        """Register a material and return its id."""
        self.materials.append(mat)
        return len(self.materials) - 1

    def _add(self, verts: np.ndarray, tris: np.ndarray, material_id: int, tex_offset) -> None:
        self._verts.append(np.asarray(verts, dtype=np.float64))
        self._tris.append(np.asarray(tris, dtype=np.int64) + self._n_verts)
        self._mats.append(np.full(len(tris), material_id, dtype=np.int32))
        self._offs.append(np.tile(np.asarray(tex_offset, dtype=np.float64).reshape(1, 3), (len(tris), 1)))
        self._n_verts += len(verts)

    def quad(self, origin, edge_u, edge_v, material_id: int, tex_offset=(0.0, 0.0, 0.0)) -> None:
        """The rectangle ``origin + a*edge_u + b*edge_v`` for a, b in [0, 1] (two triangles)."""
        o, u, v = (np.asarray(x, dtype=np.float64) for x in (origin, edge_u, edge_v))
        verts = np.stack([o, o + u, o + u + v, o + v])
        self._add(verts, np.array([[0, 1, 2], [0, 2, 3]]), material_id, tex_offset)

    def box(self, center, size, material_id: int, tex_offset=(0.0, 0.0, 0.0)) -> None:
        """An axis-aligned box (12 triangles)."""
        c = np.asarray(center, dtype=np.float64)
        h = np.asarray(size, dtype=np.float64) / 2.0
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        verts = c + corners * h
        # corner index = 4*ix + 2*iy + iz; two triangles per face, faces consecutive
        faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
        tris = []
        for a, b, cc, d in faces:
            tris += [[a, b, cc], [a, cc, d]]
        self._add(verts, np.array(tris), material_id, tex_offset)

    def build(self, name: str, **kwargs) -> World:
        if not self._verts:
            raise ConfigError(f"world {name!r}: no geometry was added")
        return World(
            name=name,
            vertices=np.concatenate(self._verts).astype(np.float32),
            triangles=np.concatenate(self._tris).astype(np.uint32),
            material_ids=np.concatenate(self._mats),
            tex_offsets=np.concatenate(self._offs).astype(np.float32),
            materials=tuple(self.materials),
            **kwargs,
        )


def _palette(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> tuple:
    return tuple(float(x) for x in rng.uniform(lo, hi, size=3))


def _sky_box(b: MeshBuilder, center_xy, half: float, height: float, seed: int) -> None:
    """A sky-coloured closed box around everything so every ray hits something."""
    sky = b.material(Material("sky", (0.55, 0.72, 0.95), (0.93, 0.95, 0.98), scale=40.0, seed=seed))
    cx, cy = center_xy
    lo = np.array([cx - half, cy - half, -1.0])
    size = np.array([2 * half, 2 * half, height + 1.0])
    # walls and ceiling only; the ground closes the bottom
    x0, y0, z0 = lo
    sx, sy, sz = size
    b.quad((x0, y0, z0), (sx, 0, 0), (0, 0, sz), sky)
    b.quad((x0, y0 + sy, z0), (sx, 0, 0), (0, 0, sz), sky)
    b.quad((x0, y0, z0), (0, sy, 0), (0, 0, sz), sky)
    b.quad((x0 + sx, y0, z0), (0, sy, 0), (0, 0, sz), sky)
    b.quad((x0, y0, z0 + sz), (sx, 0, 0), (0, sy, 0), sky)
    b.quad((x0, y0, z0), (sx, 0, 0), (0, sy, 0), sky)


def _room_builder(textured: bool, seed: int) -> MeshBuilder:
    rng = np.random.default_rng([seed, 101])
    b = MeshBuilder()

    def mat(kind, a, bb, scale):
        if not textured:
            return b.material(Material("plain", a, a, scale=scale, seed=0))
        return b.material(Material(kind, a, bb, scale=scale, seed=int(rng.integers(1 << 30))))

    hx, hy, hz = 7.0, 5.0, 3.0
    floor = mat("tiles", (0.78, 0.74, 0.66), (0.25, 0.22, 0.2), 0.6)
    ceiling = mat("noise", (0.85, 0.85, 0.82), (0.6, 0.6, 0.58), 1.5)
    walls = [
        mat("bricks", (0.62, 0.28, 0.2), (0.85, 0.82, 0.75), 0.5),
        mat("stripes", (0.2, 0.35, 0.6), (0.85, 0.8, 0.55), 0.35),
        mat("noise", (0.25, 0.55, 0.3), (0.9, 0.88, 0.6), 0.8),
        mat("tiles", (0.9, 0.9, 0.88), (0.3, 0.32, 0.4), 0.4),
    ]
    b.quad((-hx, -hy, 0), (2 * hx, 0, 0), (0, 2 * hy, 0), floor)
    b.quad((-hx, -hy, hz), (2 * hx, 0, 0), (0, 2 * hy, 0), ceiling)
    b.quad((-hx, -hy, 0), (2 * hx, 0, 0), (0, 0, hz), walls[0])  # south wall y = -hy
    b.quad((-hx, hy, 0), (2 * hx, 0, 0), (0, 0, hz), walls[1])  # north wall y = +hy
    b.quad((-hx, -hy, 0), (0, 2 * hy, 0), (0, 0, hz), walls[2])  # west wall x = -hx
    b.quad((hx, -hy, 0), (0, 2 * hy, 0), (0, 0, hz), walls[3])  # east wall x = +hx
    pillar = mat("bricks", (0.55, 0.5, 0.45), (0.2, 0.18, 0.16), 0.3)
    for x in (-3.5, 3.5):
        b.box((x, 0.0, hz / 2), (0.8, 0.8, hz), pillar)
    _add_furniture(b, mat, rng, hx, hy)
    _add_posters(b, mat, rng, hx, hy)
    return b


def _add_furniture(b: MeshBuilder, mat, rng: np.random.Generator, hx: float, hy: float) -> None:
    """14 random boxes along the walls of a room of half-sides ``hx, hy``, in a 1.2 m margin the paths keep clear of."""
    kinds = ("noise", "tiles", "stripes", "bricks")
    for i in range(14):
        side = i % 4
        t = rng.uniform(-0.85, 0.85)
        w, d, h = rng.uniform(0.5, 1.6), rng.uniform(0.4, 1.0), rng.uniform(0.4, 2.2)
        if side == 0:
            c = (t * hx, -hy + d / 2 + 0.05, h / 2)
            size = (w, d, h)
        elif side == 1:
            c = (t * hx, hy - d / 2 - 0.05, h / 2)
            size = (w, d, h)
        elif side == 2:
            c = (-hx + d / 2 + 0.05, t * hy, h / 2)
            size = (d, w, h)
        else:
            c = (hx - d / 2 - 0.05, t * hy, h / 2)
            size = (d, w, h)
        m = mat(kinds[i % 4], _palette(rng), _palette(rng), float(rng.uniform(0.1, 0.4)))
        b.box(c, size, m)


def _add_posters(b: MeshBuilder, mat, rng: np.random.Generator, hx: float, hy: float) -> None:
    """10 thin boxes on the walls at eye height."""
    for i in range(10):
        side = i % 4
        t = rng.uniform(-0.8, 0.8)
        w, h = rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.0)
        z = rng.uniform(1.3, 2.2)
        m = mat("noise", _palette(rng, 0.0, 1.0), _palette(rng, 0.0, 1.0), float(rng.uniform(0.08, 0.25)))
        if side == 0:
            b.box((t * hx, -hy + 0.02, z), (w, 0.04, h), m)
        elif side == 1:
            b.box((t * hx, hy - 0.02, z), (w, 0.04, h), m)
        elif side == 2:
            b.box((-hx + 0.02, t * hy, z), (0.04, w, h), m)
        else:
            b.box((hx - 0.02, t * hy, z), (0.04, w, h), m)


def room_world(seed: int = 0) -> World:
    """A closed 14 x 10 x 3 m room centred at the origin (floor at z = 0).

    Two 0.8 m pillars stand at (+-3.5, 0); furniture and posters stay within
    1.2 m of the walls, so paths inside x in [-5.5, 5.5], y in [-3.5, 3.5]
    that keep 0.8 m from the pillars are collision free.
    """
    return _room_builder(textured=True, seed=seed).build("room")


def textureless_world(seed: int = 0) -> World:
    """The :func:`room_world` geometry with plain, untextured materials (only shading varies)."""
    return _room_builder(textured=False, seed=seed).build("textureless_room")


def corridor_world(n_segments: int = 10, segment_length: float = 6.0, seed: int = 0) -> World:
    """A straight corridor along +x, 2.4 m wide (y in [-1.2, 1.2]) and 2.7 m high.

    The corridor starts at x = 0 and has ``n_segments`` identical segments of
    ``segment_length`` metres: every segment has the same doors, pillars,
    posters and lights with the same textures (texture offset = segment
    origin), so positions one segment apart look alike. The end walls differ.
    """
    if n_segments < 1 or not segment_length > 0:
        raise ConfigError(f"corridor_world: need n_segments >= 1 and segment_length > 0, got {n_segments}, {segment_length}")
    rng = np.random.default_rng([seed, 202])
    b = MeshBuilder()
    L, hy, hz = float(segment_length), 1.2, 2.7

    def mat(kind, a, bb, scale):
        return b.material(Material(kind, a, bb, scale=scale, seed=int(rng.integers(1 << 30))))

    floor = mat("tiles", (0.7, 0.7, 0.72), (0.3, 0.3, 0.34), 0.5)
    ceiling = mat("tiles", (0.92, 0.92, 0.9), (0.7, 0.7, 0.7), 0.6)
    wall_l = mat("noise", (0.78, 0.74, 0.6), (0.55, 0.5, 0.38), 0.7)
    wall_r = mat("stripes", (0.7, 0.78, 0.8), (0.45, 0.55, 0.6), 0.45)
    door = mat("stripes", (0.45, 0.28, 0.15), (0.3, 0.18, 0.1), 0.12)
    pillar = mat("bricks", (0.5, 0.5, 0.52), (0.25, 0.25, 0.27), 0.25)
    poster_a = mat("noise", (0.9, 0.2, 0.15), (0.1, 0.15, 0.5), 0.15)
    poster_b = mat("tiles", (0.95, 0.85, 0.1), (0.1, 0.1, 0.1), 0.15)
    light = mat("plain", (1.0, 1.0, 0.95), (1.0, 1.0, 0.95), 1.0)
    for k in range(n_segments):
        x0 = k * L
        off = (x0, 0.0, 0.0)
        b.quad((x0, -hy, 0), (L, 0, 0), (0, 2 * hy, 0), floor, off)
        b.quad((x0, -hy, hz), (L, 0, 0), (0, 2 * hy, 0), ceiling, off)
        b.quad((x0, hy, 0), (L, 0, 0), (0, 0, hz), wall_l, off)
        b.quad((x0, -hy, 0), (L, 0, 0), (0, 0, hz), wall_r, off)
        b.box((x0 + 0.15, hy - 0.12, hz / 2), (0.3, 0.24, hz), pillar, off)
        b.box((x0 + 0.15, -hy + 0.12, hz / 2), (0.3, 0.24, hz), pillar, off)
        b.box((x0 + 1.8, hy - 0.03, 1.05), (1.0, 0.06, 2.1), door, off)
        b.box((x0 + 4.2, -hy + 0.03, 1.05), (1.0, 0.06, 2.1), door, off)
        b.box((x0 + 3.6, hy - 0.02, 1.6), (1.1, 0.04, 0.8), poster_a, off)
        b.box((x0 + 1.8, -hy + 0.02, 1.5), (0.8, 0.04, 1.0), poster_b, off)
        b.box((x0 + L / 2, 0.0, hz - 0.03), (1.2, 0.4, 0.06), light, off)
    end_a = mat("bricks", (0.3, 0.5, 0.75), (0.9, 0.9, 0.9), 0.4)
    end_b = mat("noise", (0.8, 0.4, 0.1), (0.2, 0.1, 0.3), 0.5)
    xe = n_segments * L
    b.quad((0, -hy, 0), (0, 2 * hy, 0), (0, 0, hz), end_a)
    b.quad((xe, -hy, 0), (0, 2 * hy, 0), (0, 0, hz), end_b)
    return b.build("corridor", alias_period=L, alias_x_range=(0.0, xe))


def city_world(blocks: int = 3, block_size=(30.0, 20.0), street_width: float = 12.0, seed: int = 0) -> World:
    """A ``blocks`` x ``blocks`` grid of city blocks centred at the origin, with a sky backdrop.

    Block (i, j) spans ``block_size`` metres; streets of ``street_width``
    separate blocks. Each block holds 4-6 box buildings (6-28 m tall) with
    window facades. The central block's street loop is at
    ``(bx + street_width) / 2`` and ``(by + street_width) / 2`` from the origin.
    """
    if blocks < 1:
        raise ConfigError(f"city_world: blocks must be >= 1, got {blocks}")
    rng = np.random.default_rng([seed, 303])
    b = MeshBuilder()
    bx, by = (float(v) for v in block_size)
    w = float(street_width)
    pitch_x, pitch_y = bx + w, by + w
    extent = blocks * max(pitch_x, pitch_y) + 60.0
    asphalt = b.material(Material("ground", (0.32, 0.32, 0.34), (0.22, 0.22, 0.24), scale=6.0, seed=11))
    sidewalk = b.material(Material("tiles", (0.7, 0.68, 0.64), (0.5, 0.48, 0.45), scale=0.8, seed=12))
    b.quad((-extent, -extent, 0.0), (2 * extent, 0, 0), (0, 2 * extent, 0), asphalt)
    facades = [
        b.material(Material("windows", _palette(rng, 0.35, 0.9), (0.12, 0.16, 0.22), scale=float(rng.uniform(2.5, 3.5)),
                            seed=int(rng.integers(1 << 30))))
        for _ in range(10)
    ]
    roofs = b.material(Material("noise", (0.4, 0.38, 0.36), (0.25, 0.24, 0.23), scale=2.0, seed=13))
    half = (blocks - 1) / 2.0
    for i in range(blocks):
        for j in range(blocks):
            cx, cy = (i - half) * pitch_x, (j - half) * pitch_y
            b.box((cx, cy, 0.06), (bx + 3.0, by + 3.0, 0.12), sidewalk)  # kerb and sidewalk
            # split the block into a 2 x 2 or 2 x 3 grid of buildings with small gaps
            nx, ny = 2, int(rng.integers(2, 4))
            for a in range(nx):
                for c in range(ny):
                    sx, sy = bx / nx, by / ny
                    gap = float(rng.uniform(0.3, 1.5))
                    h = float(rng.uniform(6.0, 28.0))
                    ctr = (cx - bx / 2 + (a + 0.5) * sx, cy - by / 2 + (c + 0.5) * sy, h / 2)
                    fac = facades[int(rng.integers(len(facades)))]
                    b.box(ctr, (sx - gap, sy - gap, h), fac)
                    b.box((ctr[0], ctr[1], h + 0.05), (sx - gap - 0.01, sy - gap - 0.01, 0.1), roofs)
    _sky_box(b, (0.0, 0.0), extent + 40.0, 160.0, seed=14)
    return b.build("city")


def ground_world(size: float = 600.0, n_objects: int = 120, seed: int = 0) -> World:
    """Open fields (``size`` metres square, centred at the origin) with houses and trees, and a sky backdrop.

    Objects keep out of a 12 m radius around the origin so an orbit can look
    at the centre; trees are dark boxes, houses have window facades.
    """
    rng = np.random.default_rng([seed, 404])
    b = MeshBuilder()
    half = size / 2.0
    fields = b.material(Material("ground", (0.35, 0.55, 0.2), (0.62, 0.55, 0.3), scale=25.0, seed=21))
    b.quad((-half, -half, 0.0), (size, 0, 0), (0, size, 0), fields)
    trees = b.material(Material("noise", (0.1, 0.3, 0.08), (0.25, 0.45, 0.15), scale=0.8, seed=22))
    houses = [
        b.material(Material("windows", _palette(rng, 0.5, 0.95), (0.15, 0.15, 0.2), scale=2.5, seed=int(rng.integers(1 << 30))))
        for _ in range(5)
    ]
    roofs = b.material(Material("tiles", (0.55, 0.2, 0.15), (0.35, 0.12, 0.1), scale=0.5, seed=23))
    marker = b.material(Material("tiles", (0.95, 0.95, 0.95), (0.1, 0.1, 0.1), scale=2.0, seed=24))
    b.box((0.0, 0.0, 0.05), (8.0, 8.0, 0.1), marker)
    lim = min(half - 20.0, 150.0)
    placed = 0
    while placed < n_objects:
        x, y = rng.uniform(-lim, lim, size=2)
        if np.hypot(x, y) < 12.0:
            continue
        if rng.uniform() < 0.6:
            s, h = rng.uniform(2.0, 5.0), rng.uniform(4.0, 12.0)
            b.box((x, y, h / 2), (s, s, h), trees)
        else:
            sx, sy, h = rng.uniform(6, 14), rng.uniform(6, 12), rng.uniform(4, 9)
            b.box((x, y, h / 2), (sx, sy, h), houses[int(rng.integers(len(houses)))])
            b.box((x, y, h + 0.1), (sx + 0.4, sy + 0.4, 0.2), roofs)
        placed += 1
    _sky_box(b, (0.0, 0.0), half + 20.0, 250.0, seed=25)
    return b.build("ground")


def merge_worlds(worlds: Sequence[World], offsets: Sequence[Sequence[float]], name: str = "merged") -> World:
    """One world holding ``worlds[i]`` moved by ``offsets[i]`` metres (appearance unchanged).

    Keep the worlds far enough apart that each one's backdrop (or walls) hides
    the others. Look-alike folding is dropped (appearance is the identity).
    """
    if len(worlds) == 0 or len(worlds) != len(offsets):
        raise ConfigError(f"merge_worlds: need one offset per world, got {len(worlds)} worlds and {len(offsets)} offsets")
    verts, tris, mats, offs, table = [], [], [], [], []
    n_v = 0
    for w, off in zip(worlds, offsets):
        moved = w.translated(off)
        verts.append(moved.vertices)
        tris.append(moved.triangles.astype(np.int64) + n_v)
        mats.append(moved.material_ids + len(table))
        offs.append(moved.tex_offsets)
        table.extend(moved.materials)
        n_v += moved.vertices.shape[0]
    return World(
        name=name,
        vertices=np.concatenate(verts).astype(np.float32),
        triangles=np.concatenate(tris).astype(np.uint32),
        material_ids=np.concatenate(mats).astype(np.int32),
        tex_offsets=np.concatenate(offs).astype(np.float32),
        materials=tuple(table),
        light_dir=worlds[0].light_dir,
    )


WORLD_BUILDERS = {
    "room": room_world,
    "textureless": textureless_world,
    "corridor": corridor_world,
    "city": city_world,
    "ground": ground_world,
}


def make_world(name: str, **kwargs) -> World:
    """Build a world by name (one of :data:`WORLD_BUILDERS`) with builder keyword arguments."""
    return pick("world", WORLD_BUILDERS, name)(**kwargs)
