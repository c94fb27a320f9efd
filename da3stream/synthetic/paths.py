"""Camera paths: ``world_from_cam`` (4x4, OpenCV camera axes, float64) as a function of time.

World frame: metres, +z up. A camera with yaw 0 and pitch 0 looks along +x
with its +y (image down) along world -z. Yaw turns left (counter-clockwise seen
from above), positive pitch looks up, positive roll turns the image clockwise.

Each :class:`CameraPath` has a native duration (seconds), a frame rate and a
length in metres. :meth:`CameraPath.sample` takes ``n`` frames evenly over the
native duration and stamps them ``i / fps``; with ``n`` equal to
:attr:`CameraPath.natural_frames` that is real time, otherwise the motion is
sped up or slowed down uniformly.

Ground-level paths are built from analytic segments (straight lines, circular
arcs, turns in place, pauses) so loops close exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from da3stream.errors import ConfigError
from da3stream.synthetic.names import pick

PoseFn = Callable[[np.ndarray], tuple]
"""times (n,) -> (positions (n, 3), yaw (n,), pitch (n,), roll (n,)) in metres and radians."""


def pose_from_angles(positions: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(n, 4, 4) float64 ``world_from_cam`` from camera centres (n, 3) and yaw/pitch/roll (n,) radians."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = pos.shape[0]
    yaw, pitch, roll = (np.broadcast_to(np.asarray(a, dtype=np.float64), (n,)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    fwd = np.stack([cp * cy, cp * sy, sp], axis=-1)
    right = np.stack([sy, -cy, np.zeros(n)], axis=-1)
    down = np.cross(fwd, right)
    cr, sr = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right_r = cr * right + sr * down
    down_r = -sr * right + cr * down
    out = np.zeros((n, 4, 4))
    out[:, :3, 0] = right_r
    out[:, :3, 1] = down_r
    out[:, :3, 2] = fwd
    out[:, :3, 3] = pos
    out[:, 3, 3] = 1.0
    return out


def look_at(position, target) -> np.ndarray:
    """(4, 4) ``world_from_cam`` of a level (roll-free) camera at ``position`` looking at ``target``."""
    p = np.asarray(position, dtype=np.float64)
    d = np.asarray(target, dtype=np.float64) - p
    yaw = math.atan2(d[1], d[0])
    pitch = math.atan2(d[2], math.hypot(d[0], d[1]))
    return pose_from_angles(p[None], np.array([yaw]), np.array([pitch]), np.zeros(1))[0]


@dataclass(frozen=True, eq=False)
class CameraPath:
    """A camera trajectory over ``[0, duration_s]`` native seconds."""

    name: str
    """Path kind (walk, drone_orbit, ...)."""
    duration_s: float
    """Native duration in seconds."""
    fps: float
    """Frame rate used for timestamps when sampling."""
    fn: PoseFn = field(repr=False)
    """Evaluates positions and yaw/pitch/roll at native times."""
    closed: bool = False
    """True when the path ends where (and how) it started."""
    cut_times: tuple = ()
    """Native times of hard cuts (teleports); the length does not count the jumps."""

    def __post_init__(self) -> None:
        if not (self.duration_s > 0 and self.fps > 0):
            raise ConfigError(f"CameraPath {self.name!r}: duration_s and fps must be > 0, got {self.duration_s}, {self.fps}")

    def world_from_cam(self, times: np.ndarray) -> np.ndarray:
        """(n, 4, 4) float64 poses at native times (n,) seconds (clipped to the path's duration)."""
        t = np.clip(np.asarray(times, dtype=np.float64).reshape(-1), 0.0, self.duration_s)
        pos, yaw, pitch, roll = self.fn(t)
        return pose_from_angles(pos, yaw, pitch, roll)

    @property
    def natural_frames(self) -> int:
        """Frames that play the path in real time at :attr:`fps`."""
        return int(round(self.duration_s * self.fps)) + 1

    @property
    def length_m(self) -> float:
        """Distance travelled by the camera centre, in metres (dense sampling at >= 100 Hz)."""
        bounds = [0.0, *sorted(self.cut_times), self.duration_s]
        total = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            n = max(2000, int((b - a) * 100))
            # stop just short of the cut: the sample at the cut itself belongs to the next piece
            end = b - 1e-9 * max(1.0, b) if b < self.duration_s else b
            pos = self.fn(np.linspace(a, end, n))[0]
            total += float(np.sum(np.linalg.norm(np.diff(pos, axis=0), axis=1)))
        return total

    def sample(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps (n,) float64 seconds, world_from_cam (n, 4, 4) float64)`` for ``n_frames`` frames."""
        if n_frames < 1:
            raise ConfigError(f"CameraPath.sample: n_frames must be >= 1, got {n_frames}")
        native = np.linspace(0.0, self.duration_s, n_frames) if n_frames > 1 else np.zeros(1)
        return np.arange(n_frames, dtype=np.float64) / self.fps, self.world_from_cam(native)


# ----------------------------------------------------------------------------- analytic segments


@dataclass
class _Seg:
    kind: str  # line | arc | turn | pause
    t0: float
    T: float
    xy0: np.ndarray
    yaw0: float
    d0: float  # distance travelled before the segment
    speed: float = 0.0  # m/s (line/arc) or rad/s (turn)
    radius: float = 0.0
    sign: float = 1.0


class Turtle:
    """Builds a ground path from lines, arcs, turns in place and pauses (exact, closed-form)."""

    def __init__(self, xy=(0.0, 0.0), yaw_deg: float = 0.0) -> None:
        self._xy = np.asarray(xy, dtype=np.float64)
        self._yaw = math.radians(yaw_deg)
        self._t = 0.0
        self._d = 0.0
        self._segs: list[_Seg] = []

    def _push(self, seg: _Seg) -> None:
        self._segs.append(seg)
        xy, yaw, d = self._eval_seg(seg, np.array([seg.T]))
        self._xy, self._yaw, self._d = xy[0], float(yaw[0]), float(d[0])
        self._t += seg.T

    def line(self, length: float, speed: float) -> "Turtle":
        self._push(_Seg("line", self._t, length / speed, self._xy, self._yaw, self._d, speed=speed))
        return self

    def arc(self, radius: float, angle_deg: float, speed: float) -> "Turtle":
        """Drive ``angle_deg`` (positive = left) around a circle of ``radius`` metres at ``speed`` m/s."""
        ang = math.radians(abs(angle_deg))
        self._push(_Seg("arc", self._t, radius * ang / speed, self._xy, self._yaw, self._d, speed=speed,
                        radius=radius, sign=math.copysign(1.0, angle_deg)))
        return self

    def turn(self, angle_deg: float, rate_deg_s: float) -> "Turtle":
        """Rotate in place by ``angle_deg`` (positive = left) at ``rate_deg_s``."""
        self._push(_Seg("turn", self._t, abs(angle_deg) / rate_deg_s, self._xy, self._yaw, self._d,
                        speed=math.radians(rate_deg_s), sign=math.copysign(1.0, angle_deg)))
        return self

    def pause(self, seconds: float) -> "Turtle":
        self._push(_Seg("pause", self._t, seconds, self._xy, self._yaw, self._d))
        return self

    @property
    def duration(self) -> float:
        return self._t

    @staticmethod
    def _eval_seg(s: _Seg, tau: np.ndarray):
        n = tau.shape[0]
        if s.kind == "line":
            h = np.array([math.cos(s.yaw0), math.sin(s.yaw0)])
            return s.xy0 + (s.speed * tau)[:, None] * h, np.full(n, s.yaw0), s.d0 + s.speed * tau
        if s.kind == "arc":
            w = s.sign * s.speed / s.radius
            yaw = s.yaw0 + w * tau
            n0 = np.array([-math.sin(s.yaw0), math.cos(s.yaw0)])
            c = s.xy0 + s.sign * s.radius * n0
            nt = np.stack([-np.sin(yaw), np.cos(yaw)], axis=-1)
            return c - s.sign * s.radius * nt, yaw, s.d0 + s.speed * tau
        if s.kind == "turn":
            return np.tile(s.xy0, (n, 1)), s.yaw0 + s.sign * s.speed * tau, np.full(n, s.d0)
        return np.tile(s.xy0, (n, 1)), np.full(n, s.yaw0), np.full(n, s.d0)

    def evaluate(self, t: np.ndarray):
        """``(xy (n, 2), yaw (n,), distance (n,))`` at times ``t`` (n,)."""
        t = np.asarray(t, dtype=np.float64)
        starts = np.array([s.t0 for s in self._segs])
        which = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(self._segs) - 1)
        xy = np.zeros((t.shape[0], 2))
        yaw = np.zeros(t.shape[0])
        dist = np.zeros(t.shape[0])
        for k in np.unique(which):
            sel = which == k
            s = self._segs[k]
            a, b, c = self._eval_seg(s, np.clip(t[sel] - s.t0, 0.0, s.T))
            xy[sel], yaw[sel], dist[sel] = a, b, c
        return xy, yaw, dist


def _ground_path(name: str, turtle: Turtle, fps: float, height: float, *, pitch_deg: float = 0.0,
                 bob_m: float = 0.0, sway_deg: float = 0.0, stride_m: float = 0.7, closed: bool = False) -> CameraPath:
    """A path following ``turtle`` at ``height`` with a walking gait (bob and sway tied to distance).

    On closed paths the stride is adjusted so a whole number of strides fits
    and the gait ends in the phase it started with.
    """
    total = turtle.evaluate(np.array([turtle.duration]))[2][0]
    if closed and total > 0:
        stride_m = total / max(1, round(total / stride_m))

    def fn(t):
        xy, yaw, dist = turtle.evaluate(t)
        phase = 2.0 * math.pi * dist / stride_m
        z = height + bob_m * np.sin(2.0 * phase)
        roll = np.radians(sway_deg) * np.sin(phase)
        pitch = np.radians(pitch_deg) + np.radians(sway_deg) * 0.5 * np.sin(2.0 * phase + 0.7)
        return np.column_stack([xy, z]), yaw, pitch, roll

    return CameraPath(name, turtle.duration, fps, fn, closed=closed)


def _rounded_rectangle(t: Turtle, len_x: float, len_y: float, r: float, speed: float, turn_speed: float) -> Turtle:
    for side in (len_x, len_y, len_x, len_y):
        t.line(side - 2 * r, speed).arc(r, 90.0, turn_speed)
    return t


# ----------------------------------------------------------------------------- named paths


def walk(center=(-3.3, 0.0), half=(1.9, 2.3), height: float = 1.6, speed: float = 1.3, fps: float = 30.0) -> CameraPath:
    """A hand-held walk once around a rectangle (around a pillar of :func:`room_world` by default).

    Includes a slow stretch, a fast turn (~170 deg/s), a static stretch of
    1.5 s, a look-around pan, and a return to the starting pose.
    """
    hx, hy = half
    r_fast, r = 0.4, 0.8
    cx, cy = center
    t = Turtle((cx - hx + r, cy - hy), 0.0)
    bottom = 2 * hx - r - r_fast
    t.line(bottom * 0.45, speed).line(bottom * 0.55, 0.35 * speed)  # slow segment
    t.arc(r_fast, 90.0, 1.2)  # fast turn
    right = 2 * hy - r_fast - r
    t.line(right * 0.5, speed).pause(1.5)  # static stretch
    t.turn(-50.0, 70.0).turn(50.0, 70.0)  # look around
    t.line(right * 0.5, speed).arc(r, 90.0, 0.9 * speed)
    t.line(2 * hx - 2 * r, speed).arc(r, 90.0, 0.9 * speed)
    t.line(2 * hy - 2 * r, speed).arc(r, 90.0, 0.9 * speed)
    return _ground_path("walk", t, fps, height, pitch_deg=-4.0, bob_m=0.02, sway_deg=0.8, closed=True)


def robot_loop(center=(0.0, 0.0), half=(5.0, 2.6), height: float = 0.45, speed: float = 0.8, laps: int = 1,
               corner_radius: float = 1.0, fps: float = 30.0) -> CameraPath:
    """A ground robot driving ``laps`` rounded-rectangle laps; ends exactly at its start pose."""
    hx, hy = half
    r = corner_radius
    t = Turtle((center[0] - hx + r, center[1] - hy), 0.0)
    for _ in range(laps):
        _rounded_rectangle(t, 2 * hx, 2 * hy, r, speed, 0.7 * speed)
    return _ground_path("robot_loop", t, fps, height, pitch_deg=0.0, closed=True)


def block_loop(half=(21.0, 16.0), height: float = 1.5, speed: float = 4.0, laps: int = 1, extra_m: float = 0.0,
               corner_radius: float = 4.0, fps: float = 30.0) -> CameraPath:
    """Around the central block of :func:`city_world` along the street centre line and back to the start.

    ``laps`` full laps, then ``extra_m`` metres more along the first street
    (a second pass over already-seen places).
    """
    hx, hy = half
    r = corner_radius
    t = Turtle((-hx + r, -hy), 0.0)
    for _ in range(laps):
        _rounded_rectangle(t, 2 * hx, 2 * hy, r, speed, 0.75 * speed)
    if extra_m > 0:
        t.line(extra_m, speed)
    return _ground_path("block_loop", t, fps, height, pitch_deg=2.0, closed=extra_m == 0)


def figure8(half=(5.2, 2.6), height: float = 1.6, speed: float = 1.2, laps: int = 1, fps: float = 30.0) -> CameraPath:
    """A figure eight x = a sin(th), y = b sin(2 th) at constant speed, heading along the curve.

    With the defaults the lobes circle the pillars of :func:`room_world`.
    """
    a, b = half
    th = np.linspace(0.0, 2 * math.pi * laps, 20000 * laps + 1)
    xy = np.column_stack([a * np.sin(th), b * np.sin(2 * th)])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    duration = s[-1] / speed
    stride = s[-1] / max(1, round(s[-1] / 0.7))  # whole strides per loop so the gait closes too

    def fn(t):
        th_t = np.interp(t * speed, s, th)
        x, y = a * np.sin(th_t), b * np.sin(2 * th_t)
        dx, dy = a * np.cos(th_t), 2 * b * np.cos(2 * th_t)
        yaw = np.arctan2(dy, dx)
        phase = 2 * math.pi * t * speed / stride
        z = height + 0.015 * np.sin(2 * phase)
        return np.column_stack([x, y, z]), yaw, np.full_like(t, math.radians(-3.0)), np.radians(0.6) * np.sin(phase)

    return CameraPath("figure8", duration, fps, fn, closed=True)


def drone_orbit(center=(0.0, 0.0), radius: float = 40.0, altitude: float = 30.0, speed: float = 6.0, laps: float = 1.0,
                fps: float = 30.0) -> CameraPath:
    """A drone circling ``center`` counter-clockwise, looking at it, with slow altitude and radius changes."""
    circumference = 2 * math.pi * radius * laps
    duration = circumference / speed
    cx, cy = center

    def fn(t):
        ang = 2 * math.pi * laps * t / duration - math.pi / 2
        rad = radius + 0.12 * radius * np.sin(3 * ang)
        alt = altitude + 0.1 * altitude * np.sin(2 * ang + 0.5)
        pos = np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang), alt])
        yaw = ang + math.pi + np.radians(6.0) * np.sin(5 * ang)
        pitch = -np.arctan2(alt, rad)
        roll = np.radians(2.0) * np.sin(7 * ang)
        return pos, yaw, pitch, roll

    return CameraPath("drone_orbit", duration, fps, fn, closed=laps == int(laps))


def corridor_aliasing(n_segments: int = 10, segment_length: float = 6.0, height: float = 1.6, speed: float = 1.3,
                      margin: float = 1.5, fps: float = 30.0) -> CameraPath:
    """Walk once down the corridor of :func:`corridor_world` (no true revisit), weaving gently.

    Every segment looks alike, so place recognition sees false loop candidates.
    """
    x0, x1 = margin, n_segments * segment_length - margin
    duration = (x1 - x0) / speed

    def fn(t):
        x = x0 + speed * t
        w = 2 * math.pi / 9.0
        y = 0.25 * np.sin(w * x)
        yaw = np.arctan2(0.25 * w * np.cos(w * x), 1.0) + np.radians(8.0) * np.sin(2 * math.pi * t / 7.0)
        phase = 2 * math.pi * x / 0.7
        z = height + 0.02 * np.sin(2 * phase)
        return np.column_stack([x, y, z]), yaw, np.full_like(t, math.radians(-2.0)), np.radians(0.8) * np.sin(phase)

    return CameraPath("corridor_aliasing", duration, fps, fn)


def static(position=(-5.0, -2.5, 1.6), yaw_deg: float = 20.0, pitch_deg: float = -5.0, duration_s: float = 3.0,
           fps: float = 30.0) -> CameraPath:
    """A camera that does not move."""
    p = np.asarray(position, dtype=np.float64)

    def fn(t):
        n = t.shape[0]
        return np.tile(p, (n, 1)), np.full(n, math.radians(yaw_deg)), np.full(n, math.radians(pitch_deg)), np.zeros(n)

    return CameraPath("static", duration_s, fps, fn)


def pure_rotation(position=(0.0, -2.5, 1.6), yaw_start_deg: float = 0.0, sweep_deg: float = 300.0,
                  rate_deg_s: float = 45.0, pitch_deg: float = 0.0, fps: float = 30.0) -> CameraPath:
    """A camera panning in place (no translation): ``sweep_deg`` at ``rate_deg_s``, with a slight tilt wobble."""
    p = np.asarray(position, dtype=np.float64)
    duration = abs(sweep_deg) / rate_deg_s

    def fn(t):
        n = t.shape[0]
        yaw = math.radians(yaw_start_deg) + math.copysign(1.0, sweep_deg) * math.radians(rate_deg_s) * t
        pitch = math.radians(pitch_deg) + np.radians(3.0) * np.sin(2 * math.pi * t / 4.0)
        return np.tile(p, (n, 1)), yaw, pitch, np.zeros(n)

    return CameraPath("pure_rotation", duration, fps, fn)


def concat_paths(paths: Sequence[CameraPath], name: str = "concat") -> CameraPath:
    """Play ``paths`` one after another (a hard cut between them); fps of the first."""
    if not paths:
        raise ConfigError("concat_paths: need at least one path")
    starts = np.concatenate([[0.0], np.cumsum([p.duration_s for p in paths])])

    def fn(t):
        which = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(paths) - 1)
        pos = np.zeros((t.shape[0], 3))
        ang = np.zeros((3, t.shape[0]))
        for k in np.unique(which):
            sel = which == k
            p, y, pi, r = paths[k].fn(np.clip(t[sel] - starts[k], 0.0, paths[k].duration_s))
            pos[sel] = p
            ang[0, sel], ang[1, sel], ang[2, sel] = y, pi, r
        return pos, ang[0], ang[1], ang[2]

    cuts = tuple(float(x) for x in starts[1:-1])
    for p, t0 in zip(paths, starts[:-1]):
        cuts += tuple(float(t0 + c) for c in p.cut_times)
    return CameraPath(name, float(starts[-1]), paths[0].fps, fn, cut_times=tuple(sorted(cuts)))


def translated(path: CameraPath, offset) -> CameraPath:
    """``path`` moved by ``offset`` metres (orientation unchanged)."""
    off = np.asarray(offset, dtype=np.float64).reshape(3)

    def fn(t):
        p, y, pi, r = path.fn(t)
        return p + off, y, pi, r

    return CameraPath(path.name, path.duration_s, path.fps, fn, closed=path.closed, cut_times=path.cut_times)


PATH_BUILDERS = {
    "walk": walk,
    "robot_loop": robot_loop,
    "block_loop": block_loop,
    "figure8": figure8,
    "drone_orbit": drone_orbit,
    "corridor_aliasing": corridor_aliasing,
    "static": static,
    "pure_rotation": pure_rotation,
}


def make_path(name: str, **kwargs) -> CameraPath:
    """Build a path by name (one of :data:`PATH_BUILDERS`) with builder keyword arguments."""
    return pick("path", PATH_BUILDERS, name)(**kwargs)
