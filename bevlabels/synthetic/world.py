"""The world of one synthetic scene: roads, static scenery, agents and their paths, the ego's drive.

Layout. A gently curving main road (curvature a slow sinusoid, radius >= ~150 m) crossed by a
straight side street at a signalised intersection (the main road has green). Across the main road,
each side from the centreline (metres; ``d`` > 0 is left of the road's direction ``s``):

    0-7        two traffic lanes (centres 1.75, 5.25); right-hand traffic: d < 0 runs +s
    7-8.5      bike lane (centre 7.75)
    8.5-11.5   parking lane (parked vehicles, a bus stop, road works)
    11.5-15.5  sidewalk behind a 15 cm curb: furniture strip at 12.25 (poles, trees, parked bicycles,
               waiting pedestrians), walking lanes at 13.3 and 14.7
    > 16.5     lots: buildings, parks, one construction site (excavators, barrier fence, cones)

Motion. Every agent follows a path (a lane of the main road or of the side street) with a 1D
speed profile: constant speed, or braking at constant deceleration to a stop line. Speeds in a lane
are chosen so that no two boxes ever overlap (gaps are linear in time with constant speeds, so
checking the scene's first and last instants suffices); side-street traffic queues at its stop
line. Heading is the path's tangent, so trajectories are smooth and physically plausible.

Frames: ``global`` (z up, ground at z = 0); an object's box is ``[-L/2, L/2] x [-W/2, W/2] x
[0, H]`` in its own frame, centred at ``(x, y, H/2)`` in global.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bevlabels.geometry import BOX_DIM, VX, VY, YAW, X, Y, Z, make_transform, rot_z
from bevlabels.geometry import H as HC
from bevlabels.geometry import L as LC
from bevlabels.geometry import W as WC
from bevlabels.synthetic import catalog
from bevlabels.synthetic import meshes as mm
from bevlabels.synthetic.meshes import Mesh

# Cross-section of the main road (metres from the centreline, each side)
LANE_CENTRES = (1.75, 5.25)
BIKE_LANE = 7.75
PARK = (8.5, 11.5)
PARK_CENTRE = 10.0
CURB = (11.5, 11.75)
CURB_HEIGHT = 0.15
SIDEWALK_OUTER = 15.5
FURNITURE = 12.25
STAND = 12.35  # parked bicycles, waiting pedestrians: clear of the curb and of the walking lanes
FURN_SLOT = 4.0
WALK_LANES = (13.3, 14.7)
LOT = 16.5
# Side street: carriageway |w| < 3.5, curb, sidewalk to 7.5
CROSS_HALF = 3.5
CROSS_SIDEWALK = 7.5

SWEEP_DT = 0.05  # s between LiDAR sweeps (20 Hz)
KEY_DT = 0.5  # s between keyframes (2 Hz)


# ---------------------------------------------------------------------------------------------
# Paths


class Road:
    """A curved road centreline sampled every ``ds`` metres: ``pose(s, d)`` and its inverse ``to_road``."""

    def __init__(self, origin, heading0: float, length: float, amp: float, wavelength: float, phase: float,
                 ds: float = 0.5):  # fmt: skip
        n = int(np.ceil(length / ds)) + 1
        self.ds = ds
        self.s = np.arange(n) * ds
        # curvature fades to 0 over the last 80 m at both ends, so that the straight continuation
        # beyond them (pose() extrapolates) keeps speeds and headings continuous
        ramp = np.clip(np.minimum(self.s, self.s[-1] - self.s) / 80.0, 0.0, 1.0)
        kappa = amp * np.sin(2 * np.pi * self.s / wavelength + phase) * ramp * ramp * (3 - 2 * ramp)
        # trapezoid integration: heading, then position
        theta = heading0 + np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * ds)])
        c, s_ = np.cos(theta), np.sin(theta)
        x = origin[0] + np.concatenate([[0.0], np.cumsum((c[1:] + c[:-1]) / 2 * ds)])
        y = origin[1] + np.concatenate([[0.0], np.cumsum((s_[1:] + s_[:-1]) / 2 * ds)])
        self.xy = np.stack([x, y], -1)  # (n, 2)
        self.theta = theta
        self.kappa = kappa
        self.length = float(self.s[-1])
        self._table = None

    def pose(self, s, d=0.0):
        """World ``x, y, heading`` of the point at arc length ``s`` and lateral offset ``d`` (left +)."""
        s = np.asarray(s, dtype=np.float64)
        f = np.clip(s / self.ds, 0, len(self.s) - 1.000001)
        i = np.floor(f).astype(np.int64)
        a = f - i
        th = self.theta[i] * (1 - a) + self.theta[i + 1] * a
        x = self.xy[i, 0] * (1 - a) + self.xy[i + 1, 0] * a - np.sin(th) * d
        y = self.xy[i, 1] * (1 - a) + self.xy[i + 1, 1] * a + np.cos(th) * d
        # beyond the sampled ends, continue straight
        over = s - np.clip(s, 0, self.length)
        return x + np.cos(th) * over, y + np.sin(th) * over, th

    def stretch(self, s: float, d: float) -> float:
        """Arc length per metre travelled at lateral offset ``d`` near ``s``: ``1 / (1 - kappa d)``.

        A physical length ``l`` along a line parallel to the road at offset ``d`` spans ``l *
        stretch`` of arc length ``s`` (more on the inside of a bend, less on the outside).
        """
        k = float(np.interp(s, self.s, self.kappa))
        return 1.0 / (1.0 - k * d)

    def build_lookup(self, lo, hi, cell: float = 1.0) -> None:
        """Tabulate ``(s, d)`` on a ``cell``-metre grid over ``[lo, hi]`` (xy) for :meth:`to_road`.

        Both fields are smooth within ~100 m of a road whose radius is >= 150 m, so bilinear
        interpolation of the table is accurate to a fraction of a millimetre.
        """
        from scipy.spatial import cKDTree

        self._lo = np.asarray(lo, float)
        self._cell = cell
        nx, ny = (np.ceil((np.asarray(hi) - self._lo) / cell).astype(int) + 1).tolist()
        gx, gy = np.meshgrid(self._lo[0] + np.arange(nx) * cell, self._lo[1] + np.arange(ny) * cell)
        xy = np.stack([gx.ravel(), gy.ravel()], -1)
        _, i0 = cKDTree(self.xy).query(xy)
        cand = np.clip(
            i0[:, None] + np.arange(-1, 2)[None], 0, len(self.s) - 1
        )  # the nearest sample and its neighbours
        best = cand[np.arange(len(xy)), ((self.xy[cand] - xy[:, None]) ** 2).sum(-1).argmin(1)]
        off = xy - self.xy[best]
        c, s_ = np.cos(self.theta[best]), np.sin(self.theta[best])
        # project onto the segment's tangent: exact to second order in the along-track offset (<= ds / 2)
        s_val = self.s[best] + off[:, 0] * c + off[:, 1] * s_
        d_val = -off[:, 0] * s_ + off[:, 1] * c
        self._table = np.stack([s_val, d_val], -1).reshape(ny, nx, 2).astype(np.float64)

    def to_road(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(s, d)`` of world points ``(N, 2)``: arc length along the road and signed lateral offset (left +)."""
        assert self._table is not None, "call build_lookup first"
        ny, nx, _ = self._table.shape
        f = (xy - self._lo) / self._cell
        fx = np.clip(f[:, 0], 0, nx - 1.000001)
        fy = np.clip(f[:, 1], 0, ny - 1.000001)
        ix, iy = fx.astype(np.int64), fy.astype(np.int64)
        ax, ay = (fx - ix)[:, None], (fy - iy)[:, None]
        tb = self._table
        v = (tb[iy, ix] * (1 - ax) + tb[iy, ix + 1] * ax) * (1 - ay) + (
            tb[iy + 1, ix] * (1 - ax) + tb[iy + 1, ix + 1] * ax
        ) * ay
        return v[:, 0], v[:, 1]


class Line:
    """A straight street through ``origin`` with heading ``heading``: ``pose(u, w)`` and ``to_line``."""

    def __init__(self, origin, heading: float):
        self.origin = np.asarray(origin, float)
        self.heading = float(heading)
        self.t = np.array([np.cos(heading), np.sin(heading)])
        self.n = np.array([-np.sin(heading), np.cos(heading)])

    def pose(self, u, w=0.0):
        u = np.asarray(u, dtype=np.float64)
        x = self.origin[0] + self.t[0] * u + self.n[0] * w
        y = self.origin[1] + self.t[1] * u + self.n[1] * w
        return x, y, np.full_like(u, self.heading)

    def to_line(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        off = xy - self.origin
        return off @ self.t, off @ self.n


# ---------------------------------------------------------------------------------------------
# Speed profiles and motions


@dataclass(frozen=True)
class Const:
    """Constant speed ``v`` (m/s): distance ``v t``."""

    v: float

    def dist(self, t):
        return self.v * np.asarray(t, dtype=np.float64)


@dataclass(frozen=True)
class Brake:
    """Cruise at ``v0`` until ``t_brake``, then decelerate at ``a`` to a standstill (``v0 = 0``: stopped)."""

    v0: float
    t_brake: float
    a: float

    def dist(self, t):
        t = np.asarray(t, dtype=np.float64)
        if self.v0 <= 0:
            return np.zeros_like(t)
        tau = np.clip(t - self.t_brake, 0.0, self.v0 / self.a)
        return self.v0 * np.minimum(t, self.t_brake) + self.v0 * tau - 0.5 * self.a * tau**2


@dataclass(frozen=True)
class Fixed:
    """A static pose."""

    x: float
    y: float
    yaw: float
    static = True

    def pose(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.full_like(t, self.x), np.full_like(t, self.y), np.full_like(t, self.yaw)


@dataclass(frozen=True)
class Follow:
    """Along ``path`` at lateral offset ``d``, from ``s0`` in ``direction`` (+1/-1) with a speed ``profile``."""

    path: object
    d: float
    s0: float
    direction: int
    profile: object
    static = False

    def s(self, t):
        return self.s0 + self.direction * self.profile.dist(t)

    def pose(self, t):
        x, y, th = self.path.pose(self.s(t), self.d)
        return x, y, th if self.direction > 0 else th + np.pi


# ---------------------------------------------------------------------------------------------
# Agents and the world


@dataclass
class Agent:
    """One annotated object: class, size ``(L, W, H)``, mesh in its own frame, motion, flags."""

    cls: str
    size: tuple[float, float, float]
    mesh: Mesh
    motion: object
    parked: bool = False
    rider: bool = False
    category: str = ""

    def __post_init__(self):
        if not self.category:
            self.category = catalog.CATEGORY[self.cls]

    @property
    def static(self) -> bool:
        return bool(getattr(self.motion, "static", False))


@dataclass
class World:
    """One scene's world: paths, static scenery, annotated agents, the ego's motion, lighting."""

    road: Road
    cross: Line
    cross_s: float  # arc length of the main road where the side street crosses
    agents: list[Agent]
    scenery: Mesh  # static, not annotated (buildings, poles, trees, curbs, ...)
    ego: Follow
    duration: float  # seconds from the first to the last keyframe
    sun: np.ndarray  # (3,) unit vector towards the sun
    dirt: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # (side, s0, s1, d0, d1)
    bounds: tuple[np.ndarray, np.ndarray] = None  # world xy (lo, hi) of everything

    def __post_init__(self):
        self._motions = _MotionTable(self.agents)
        self._sizes = np.array([a.size for a in self.agents], dtype=np.float64).reshape(-1, 3)

    def poses(self, t: float, idx=None) -> np.ndarray:
        """``(M, 3)`` ``x, y, yaw`` of the agents (all, or those in ``idx``) at time ``t``."""
        return self._motions.poses(t, idx)

    def boxes(self, t: float, idx=None) -> np.ndarray:
        """``(M, 9)`` boxes of the agents (all, or ``idx``) at time ``t`` in global, velocity included."""
        idx = np.arange(len(self.agents)) if idx is None else np.asarray(idx, dtype=np.int64)
        p = self.poses(t, idx)
        h = 0.01  # central difference: exact for constant speed, O(h^2) when braking
        v = (self.poses(t + h, idx)[:, :2] - self.poses(t - h, idx)[:, :2]) / (2 * h)
        out = np.zeros((len(idx), BOX_DIM))
        out[:, [X, Y]] = p[:, :2]
        out[:, Z] = self._sizes[idx, 2] / 2
        out[:, [LC, WC, HC]] = self._sizes[idx]
        out[:, YAW] = p[:, 2]
        out[:, [VX, VY]] = v
        return out

    def ego_pose(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ego ``x, y, yaw`` (rear axle on the ground) at times ``t``."""
        return self.ego.pose(t)

    def global_from_ego(self, t: float) -> np.ndarray:
        """``(4, 4)`` ego pose at time ``t`` (yaw only: the ground is flat)."""
        x, y, yaw = (float(v) for v in self.ego.pose(t))
        return make_transform(rot_z(yaw), np.array([x, y, 0.0]))


class _MotionTable:
    """All agents' motions as arrays, so that posing every agent at an instant is a few numpy calls.

    Follow motions on the same path share one ``path.pose`` call; each profile is written as
    ``dist(t) = v0 min(t, tb) + v0 tau - a tau^2 / 2``, ``tau = clip(t - tb, 0, v0 / a)`` (Const:
    ``tb = inf``).
    """

    def __init__(self, agents: list[Agent]):
        n = len(agents)
        self.fixed = np.zeros((n, 3))
        self.path_id = np.full(n, -1, np.int64)  # -1: fixed
        self.paths: list = []
        self.d, self.s0, self.dirn = np.zeros(n), np.zeros(n), np.ones(n)
        self.v0, self.tb, self.a = np.zeros(n), np.full(n, np.inf), np.ones(n)
        for i, ag in enumerate(agents):  # once per scene
            m = ag.motion
            if isinstance(m, Fixed):
                self.fixed[i] = (m.x, m.y, m.yaw)
                continue
            assert isinstance(m, Follow), f"unsupported motion {type(m).__name__}"
            ids = [k for k, p in enumerate(self.paths) if p is m.path]
            if not ids:
                self.paths.append(m.path)
            self.path_id[i] = ids[0] if ids else len(self.paths) - 1
            self.d[i], self.s0[i], self.dirn[i] = m.d, m.s0, m.direction
            if isinstance(m.profile, Const):
                self.v0[i] = m.profile.v
            else:
                self.v0[i], self.tb[i], self.a[i] = m.profile.v0, m.profile.t_brake, m.profile.a

    def poses(self, t: float, idx=None) -> np.ndarray:
        idx = np.arange(len(self.d)) if idx is None else np.asarray(idx, dtype=np.int64)
        out = self.fixed[idx].copy()
        for k, path in enumerate(self.paths):
            sel = idx[self.path_id[idx] == k]
            if len(sel) == 0:
                continue
            v0, tb, a = self.v0[sel], self.tb[sel], self.a[sel]
            tau = np.clip(t - tb, 0.0, np.where(v0 > 0, v0 / a, 0.0))
            dist = v0 * np.minimum(t, tb) + v0 * tau - 0.5 * a * tau**2
            x, y, th = path.pose(self.s0[sel] + self.dirn[sel] * dist, self.d[sel])
            out[self.path_id[idx] == k] = np.stack([x, y, np.where(self.dirn[sel] > 0, th, th + np.pi)], -1)
        return out


# ---------------------------------------------------------------------------------------------
# Building a world


class _Strips:
    """Occupied arc-length intervals per (strip, side), to keep static things from overlapping."""

    def __init__(self):
        self.used: dict[tuple[str, int], list[tuple[float, float, float]]] = {}

    def free(self, strip: str, side: int, s0: float, s1: float, z_min: float = 0.0) -> bool:
        return all(b <= s0 or a >= s1 or h <= z_min for a, b, h in self.used.get((strip, side), []))

    def take(self, strip: str, side: int, s0: float, s1: float, height: float = 99.0) -> None:
        self.used.setdefault((strip, side), []).append((s0, s1, height))


def _lane_speeds(s0: np.ndarray, half_len: np.ndarray, v: np.ndarray, anchor: int | None, horizon: float,
                 gap: float) -> np.ndarray:  # fmt: skip
    """Speeds that keep every gap >= ``gap`` over ``[0, horizon]`` for constant-speed vehicles in one lane.

    ``s0`` are distances along the direction of travel, sorted ascending (index 0 last in line);
    ``anchor`` is a vehicle whose speed is fixed (the ego), else the front one. Leaders ahead of the
    anchor may only speed up, followers behind it only slow down.
    """
    v = v.copy()
    n = len(v)
    a = n - 1 if anchor is None else anchor
    for i in range(a + 1, n):  # leaders of the anchor: at least as fast as needed
        slack = (s0[i] - s0[i - 1] - half_len[i] - half_len[i - 1] - gap) / horizon
        v[i] = max(v[i], v[i - 1] - slack)
    for i in range(a - 1, -1, -1):  # followers: no faster than allowed
        slack = (s0[i + 1] - s0[i] - half_len[i + 1] - half_len[i] - gap) / horizon
        v[i] = max(0.0, min(v[i], v[i + 1] + slack))
    return v


def build_world(seed: int, scene_number: int, duration: float, density: float = 1.0, attempt: int = 0) -> World:
    """The world of one scene, a pure function of its arguments.

    Args:
        seed: dataset seed.
        scene_number: the scene's number (``scene-0103`` -> 103); scenes do not depend on each other.
        duration: seconds from the first to the last keyframe.
        density: scales the number of moving agents and parked vehicles.
        attempt: re-draw index, used when a drawn scene misses a class (see ``generate``).
    """
    rng = np.random.default_rng([seed, scene_number, attempt])
    B = _Builder(rng, duration, density)
    return B.build()


class _Builder:
    def __init__(self, rng: np.random.Generator, duration: float, density: float):
        self.rng = rng
        self.T = duration
        self.density = density
        self.agents: list[Agent] = []
        self.scenery: list[Mesh] = []
        self.strips = _Strips()
        self.dirt: list[tuple[int, float, float, float, float]] = []

    # -- helpers --------------------------------------------------------------------------------
    def add_agent(self, cls: str, motion, size=None, parked=False, rider=False, category="", tractor=False):
        size = size or catalog.sample_size(cls, self.rng, rider=rider)
        walking = not getattr(motion, "static", False)
        mesh = catalog.build_mesh(cls, size, self.rng, rider=rider, walking=walking, tractor=tractor)
        a = Agent(cls, size, mesh, motion, parked=parked, rider=rider, category=category)
        self.agents.append(a)
        return a

    def fixed_on_road(self, s: float, d: float, yaw_offset: float = 0.0) -> Fixed:
        x, y, th = self.road.pose(s, d)
        return Fixed(float(x), float(y), float(th + yaw_offset))

    def in_parking_lane(self, s: float, side: int, d: float, yaw_offset: float, size) -> Fixed:
        """A parked pose near ``(s, side * d)`` whose box stays inside the parking lane.

        A long straight box on a curved road sticks out (at its ends on the outside of the bend,
        in its middle on the inside, by ~L^2 / 8R), so the centre is moved across the lane until
        the box's outline lies between the bike lane and the curb, a few cm clear of both.
        """
        L, W = size[0], size[1]
        pose = self.fixed_on_road(s, side * d, yaw_offset)
        c, s_ = np.cos(pose.yaw), np.sin(pose.yaw)
        a = np.linspace(-L / 2, L / 2, 9)
        local = np.concatenate([np.stack([a, np.full(9, W / 2)], -1), np.stack([a, np.full(9, -W / 2)], -1)])
        outline = np.stack(
            [pose.x + local[:, 0] * c - local[:, 1] * s_, pose.y + local[:, 0] * s_ + local[:, 1] * c], -1
        )
        ad = np.abs(self.road.to_road(outline)[1])
        lo, hi = PARK[0] + 0.05, PARK[1] - 0.05
        shift = float(np.clip(0.0, lo - ad.min(), hi - ad.max()))  # the smallest move that fits, if any does
        return self.fixed_on_road(s, side * (d + shift), yaw_offset) if shift else pose

    def add_scenery(self, mesh: Mesh, s: float, d: float, yaw_offset: float = 0.0) -> None:
        x, y, th = self.road.pose(s, d)
        self.scenery.append(mesh.transformed(rot_z(float(th + yaw_offset)), (float(x), float(y), 0.0)))

    def near_cross(self, s0: float, s1: float, d0: float, d1: float, margin: float = 1.5) -> bool:
        """Whether the road-aligned rectangle touches the side street's corridor (|w| < sidewalk + margin)."""
        ss = np.array([s0, s1, s0, s1, (s0 + s1) / 2])
        dd = np.array([d0, d0, d1, d1, (d0 + d1) / 2])
        x, y, _ = self.road.pose(ss, dd)
        _, w = self.cross.to_line(np.stack([x, y], -1))
        lim = CROSS_SIDEWALK + margin
        return bool(w.min() < lim and w.max() > -lim)

    def window(self) -> tuple[float, float]:
        """Arc-length span the ego covers, where guaranteed objects go."""
        return self.s_ego0, self.s_ego0 + self.v_ego * self.T

    # -- the build ------------------------------------------------------------------------------
    def build(self) -> World:
        rng, T = self.rng, self.T
        self.v_ego = float(rng.uniform(6.0, 10.0))
        travel = self.v_ego * T
        self.s_ego0 = 130.0
        length = self.s_ego0 + travel + 180.0
        amp = float(rng.uniform(0.0, 1.0 / 160.0)) * (1 if rng.random() < 0.5 else -1)
        road = Road((0.0, 0.0), float(rng.uniform(-np.pi, np.pi)), length, amp, float(rng.uniform(180, 420)),
                    float(rng.uniform(0, 2 * np.pi)))  # fmt: skip
        # shift so the whole world lies at positive coordinates (the map mask's pixel frame)
        shift = -road.xy.min(0) + 220.0
        road.xy = road.xy + shift
        self.road = road
        s_lo, s_hi = self.window()
        self.cross_s = float(rng.uniform(s_lo + 15.0, max(s_lo + 16.0, s_hi + 45.0)))
        cx, cy, cth = road.pose(self.cross_s, 0.0)
        self.cross = Line((float(cx), float(cy)), float(cth + np.pi / 2 + rng.uniform(-0.2, 0.2)))
        self.sin_cross = abs(np.sin(self.cross.heading - float(cth)))
        lo = road.xy.min(0) - 200.0
        hi = road.xy.max(0) + 200.0
        road.build_lookup(road.xy.min(0) - 90.0, road.xy.max(0) + 90.0)  # beyond: clamped, grass

        self.ego_d = float(-LANE_CENTRES[rng.integers(2)])
        self.ego = Follow(road, self.ego_d, self.s_ego0, +1, Const(self.v_ego))

        self._guaranteed()
        self._parking()
        self._furniture()
        self._lots()
        self._traffic()
        self._side_street()
        self._walkers()
        self._curbs_and_lights()

        sun_el, sun_az = float(rng.uniform(0.55, 1.1)), float(rng.uniform(-np.pi, np.pi))
        sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])
        return World(road, self.cross, self.cross_s, self.agents, Mesh.concat(self.scenery), self.ego, T, sun,
                     self.dirt, (lo, hi))  # fmt: skip

    # -- guaranteed content near the ego's path: every class, in range ----------------------------
    def _guaranteed(self) -> None:
        rng = self.rng
        s_lo, s_hi = self.window()
        span = s_hi - s_lo
        # a construction site beside the road: excavators, a barrier fence, cones at its gate
        side = int(rng.choice([-1, 1]))
        site_len = float(rng.uniform(24.0, 34.0))
        for _ in range(20):
            s0 = float(rng.uniform(s_lo - 12.0, s_lo + 0.6 * span + 8.0))
            if not self.near_cross(s0, s0 + site_len, side * LOT, side * (LOT + 26)):
                break
        self._construction_site(side, s0, site_len)
        # road works in a parking lane: cones around a patch, a barrier or two across
        other = -side if rng.random() < 0.7 else side
        for _ in range(20):
            s0 = float(rng.uniform(s_lo - 8.0, s_lo + 0.6 * span + 10.0))
            if self.strips.free("park", other, s0, s0 + 10) and not self.near_cross(
                s0, s0 + 10, other * PARK[0], other * PARK[1]
            ):
                break
        self._roadworks(other, s0)
        # a bus at a stop, a parked trailer, truck, motorcycle, bicycles, waiting pedestrians
        wanted = [("bus_stop", 16.0), ("trailer", 13.5), ("truck", 8.0), ("motorcycle", 2.6), ("car", 5.5)]
        for kind, need in wanted:
            for _ in range(30):
                sd = int(rng.choice([-1, 1]))
                s0 = float(rng.uniform(s_lo - 15.0, s_hi + 20.0))
                lot_free = kind != "bus_stop" or self.strips.free("lot", sd, s0, s0 + 6.0)  # the shelter
                need_s = need * self.road.stretch(s0, sd * PARK_CENTRE)
                if (
                    lot_free
                    and self.strips.free("park", sd, s0, s0 + need_s)
                    and not self.near_cross(s0, s0 + need_s, sd * 8.0, sd * 18.0)
                ):
                    if kind == "bus_stop":
                        self._bus_stop(sd, s0)
                    else:
                        self._park(kind, sd, s0, need)
                    break
        for kind in ("bicycle", "bicycle", "pedestrian", "pedestrian"):
            for _ in range(30):
                sd = int(rng.choice([-1, 1]))
                s0 = float(rng.uniform(s_lo - 10.0, s_hi + 15.0))
                if self.strips.free("furn", sd, s0, s0 + FURN_SLOT) and not self.near_cross(
                    s0, s0 + FURN_SLOT, sd * 11.5, sd * 13.0
                ):
                    self._furniture_item(kind, sd, s0)
                    break

    def _construction_site(self, side: int, s0: float, length: float) -> None:
        rng, road = self.rng, self.road
        depth = float(rng.uniform(18.0, 26.0))
        self.strips.take("lot", side, s0 - 1, s0 + length + 1)
        self.dirt.append((side, s0, s0 + length, LOT, LOT + depth))
        gate = float(rng.uniform(s0 + 4, s0 + length - 9))
        s = s0 + 0.2
        while s + 2.6 < s0 + length:  # barrier fence along the front edge, a gate left open
            size = catalog.sample_size("barrier", rng)
            if not (gate - size[1] < s < gate + 5.0):
                self.add_agent("barrier", self.fixed_on_road(s + size[1] / 2, side * (LOT + 0.45), np.pi / 2), size)
            s += (size[1] + 0.15) * road.stretch(s, side * (LOT + 0.45))
        for k in range(3):  # cones in the gate
            self.add_agent("traffic_cone", self.fixed_on_road(gate + 0.6 + 1.6 * k, side * (LOT + 0.45)))
        n_exc = 1 + int(rng.random() < 0.5)
        for k in range(n_exc):  # >= 12 m apart: an excavator turned any way fits in a 7.2 m circle
            s = s0 + (k + 0.5) * length / n_exc + float(rng.uniform(-1.0, 1.0))
            d = side * (LOT + float(rng.uniform(7.0, depth - 5.0)))
            self.add_agent(
                "construction_vehicle", self.fixed_on_road(s, d, float(rng.uniform(-np.pi, np.pi))), parked=True
            )
        # a worker beside the first excavator's gate
        self.add_agent("pedestrian", self.fixed_on_road(gate + 2.5, side * (LOT + 2.2), float(rng.uniform(-3, 3))),
                       category="human.pedestrian.construction_worker")  # fmt: skip

    def _roadworks(self, side: int, s0: float) -> None:
        rng = self.rng
        self.strips.take("park", side, s0, s0 + 10.0, height=1.2)
        for k, (ds, dd) in enumerate([(0.4, 8.9), (3.0, 8.9), (5.6, 8.9), (8.2, 8.9), (9.6, 10.4), (0.4, 10.9)]):
            if k < 4 or rng.random() < 0.7:
                self.add_agent("traffic_cone", self.fixed_on_road(s0 + ds, side * dd))
        size = catalog.sample_size("barrier", rng)
        self.add_agent("barrier", self.fixed_on_road(s0 + 1.6, side * PARK_CENTRE, 0.0), size)  # across the lane
        if rng.random() < 0.6:
            size = catalog.sample_size("barrier", rng)
            self.add_agent("barrier", self.fixed_on_road(s0 + 7.4, side * PARK_CENTRE, 0.0), size)

    def _bus_stop(self, side: int, s0: float) -> None:
        rng = self.rng
        size = catalog.sample_size("bus", rng)
        size = (size[0], min(size[1], 2.8), size[2])  # the parking lane is 3 m wide
        k = self.road.stretch(s0, side * PARK_CENTRE)
        self.strips.take("park", side, s0, s0 + (size[0] + 2) * k, height=size[2])
        yaw = 0.0 if side < 0 else np.pi
        self.add_agent(
            "bus", self.in_parking_lane(s0 + (1 + size[0] / 2) * k, side, PARK_CENTRE, yaw, size), size
        )  # stopped
        # shelter behind the sidewalk, waiting passengers in the furniture strip
        self.strips.take("lot", side, s0, s0 + 6)
        shelter = Mesh.concat([
            mm.box((-2.5, -0.05, 0), (2.5, 0.05, 2.4), (0.7, 0.8, 0.85), "glass"),
            mm.box((-2.7, -0.8, 2.4), (2.7, 0.8, 2.55), (0.3, 0.3, 0.32), "metal"),
            mm.box((-2.6, -0.75, 0), (-2.5, -0.65, 2.4), (0.3, 0.3, 0.32), "metal"),
            mm.box((2.5, -0.75, 0), (2.6, -0.65, 2.4), (0.3, 0.3, 0.32), "metal"),
        ])  # fmt: skip
        self.add_scenery(shelter, s0 + 3, side * (LOT + 0.9), 0.0 if side > 0 else np.pi)
        for k in range(int(rng.integers(1, 4))):
            s = s0 + 0.8 + 1.6 * k
            if self.strips.free("furn", side, s - 0.5, s + 0.5):
                self.strips.take("furn", side, s - 0.5, s + 0.5)
                self.add_agent("pedestrian", self.fixed_on_road(s, side * STAND, float(rng.uniform(-3, 3))))

    def _park(self, cls: str, side: int, s0: float, slot: float) -> None:
        """A vehicle parked in ``[s0, s0 + slot]`` (a physical length; the arc length it takes is stretched)."""
        rng = self.rng
        size = catalog.sample_size(cls, rng, rider=False)
        size = (min(size[0], slot - 0.6), min(size[1], 2.8), size[2])
        k = self.road.stretch(s0, side * PARK_CENTRE)
        self.strips.take("park", side, s0, s0 + (size[0] + 0.6) * k, height=size[2])
        yaw = (0.0 if side < 0 else np.pi) + float(rng.normal(0, 0.02)) * min(1.0, 4.0 / size[0])
        d = PARK_CENTRE + float(rng.uniform(-0.15, 0.15)) * (size[1] < 2.4)
        self.add_agent(cls, self.in_parking_lane(s0 + (0.3 + size[0] / 2) * k, side, d, yaw, size), size, parked=True)

    def _furniture_item(self, kind: str, side: int, s0: float) -> None:
        """Parked bicycles (one or two in a row, parallel to the curb) or a waiting pedestrian in ``[s0, s0 + 4]``."""
        rng = self.rng
        self.strips.take("furn", side, s0, s0 + FURN_SLOT, height=2.0)
        if kind == "bicycle":
            step = 2.1 * self.road.stretch(s0, side * STAND)
            for k in range(int(rng.integers(1, 3))):
                self.add_agent("bicycle", self.fixed_on_road(s0 + 1.0 + step * k, side * STAND, 0.0), parked=True)
        else:
            self.add_agent("pedestrian", self.fixed_on_road(s0 + 1.5, side * STAND, float(rng.uniform(-3, 3))))

    # -- random content ---------------------------------------------------------------------------
    def _parking(self) -> None:
        rng = self.rng
        for side in (-1, 1):
            s = 2.0
            while s < self.road.length - 10:
                gap = float(rng.uniform(0.5, 3.0))
                if rng.random() > 0.6 * min(1.0, self.density):
                    s += float(rng.uniform(4, 12))
                    continue
                cls = str(rng.choice(["car", "car", "car", "car", "car", "car", "truck", "motorcycle", "trailer"]))
                need = catalog.MEAN_SIZE[cls][0] * 1.1 + 0.6
                need_s = need * self.road.stretch(s, side * PARK_CENTRE)
                if self.strips.free("park", side, s, s + need_s) and not self.near_cross(
                    s, s + need_s, side * PARK[0], side * PARK[1]
                ):
                    self._park(cls, side, s, need)
                s += need_s + gap

    def _furniture(self) -> None:
        rng = self.rng
        for side in (-1, 1):
            s = float(rng.uniform(0, 10))
            while s < self.road.length:
                if self.near_cross(s - 2, s + 2, side * 11.8, side * 12.7):
                    s += 3.0
                    continue
                # a street light, then trees and the odd parked bicycle or waiting pedestrian until the next
                if self.strips.free("furn", side, s - 0.4, s + 0.4):
                    self.strips.take("furn", side, s - 0.4, s + 0.4)
                    self.add_scenery(_street_light(rng), s, side * FURNITURE, 0.0 if side > 0 else np.pi)
                nxt = s + float(rng.uniform(24, 32))
                t = s + float(rng.uniform(5, 8))
                while t < nxt - 4:
                    r = rng.random()
                    if r < 0.55:
                        crown_bottom = float(rng.uniform(3.2, 4.0))
                        ok = self.strips.free("furn", side, t - 0.6, t + 0.6) and self.strips.free(
                            "park", side, t - 1.5, t + 1.5, z_min=crown_bottom - 0.2
                        )
                        if ok and not self.near_cross(t - 1.5, t + 1.5, side * 10.9, side * 13.6):
                            self.strips.take("furn", side, t - 0.6, t + 0.6)
                            self.add_scenery(_tree(rng, crown_bottom, 1.3), t, side * FURNITURE)
                    elif r < 0.62 and self.strips.free("furn", side, t, t + FURN_SLOT):
                        self._furniture_item("bicycle", side, t)
                    elif r < 0.7 and self.strips.free("furn", side, t, t + FURN_SLOT):
                        self._furniture_item("pedestrian", side, t)
                    t += float(rng.uniform(6, 10))
                s = nxt

    def _lots(self) -> None:
        rng, road = self.rng, self.road
        for side in (-1, 1):
            s = -20.0
            while s < road.length + 20:
                length = float(rng.uniform(10, 30))
                setback = float(rng.uniform(0.5, 4.0))
                depth = float(rng.uniform(10, 24))
                d0, d1 = LOT + setback, LOT + setback + depth
                if self.strips.free("lot", side, s, s + length) and not self.near_cross(
                    s, s + length, side * d0, side * d1, 2.0
                ):
                    r = rng.random()
                    if r < 0.75:
                        self.add_scenery(_building(rng, length, depth), s + length / 2, side * (d0 + depth / 2),
                                         0.0 if side > 0 else np.pi)  # fmt: skip
                    elif r < 0.92:  # a small park
                        for _ in range(int(rng.integers(2, 6))):
                            self.add_scenery(_tree(rng, float(rng.uniform(2.0, 3.5)), float(rng.uniform(1.5, 3.0))),
                                             float(rng.uniform(s + 2, s + length - 2)),
                                             side * float(rng.uniform(d0 + 2, d1 - 2)))  # fmt: skip
                s += length + float(rng.uniform(0.5, 6.0))
        # buildings along the side street, beyond the main road's lots
        for sgn_u in (-1, 1):
            for sgn_w in (-1, 1):
                u = 50.0
                while u < 160:
                    length, depth = float(rng.uniform(12, 28)), float(rng.uniform(10, 20))
                    if rng.random() < 0.8:
                        w = sgn_w * (CROSS_SIDEWALK + float(rng.uniform(1.0, 4.0)) + depth / 2)
                        x, y, _ = self.cross.pose(sgn_u * (u + length / 2), w)
                        m = _building(rng, length, depth)
                        self.scenery.append(m.transformed(rot_z(self.cross.heading), (float(x), float(y), 0.0)))
                    u += length + float(rng.uniform(1, 6))

    def _traffic(self) -> None:
        """Vehicles, motorcycles and cyclists in the main road's lanes, the ego among them."""
        rng, T = self.rng, self.T
        s_lo, s_hi = self.window()
        reach = 14.0 * T + 90.0  # far enough that oncoming agents enter the annotated range
        # ((d, direction), kinds, mean spacing, speed range)
        lanes = [((-LANE_CENTRES[0], 1), "traffic"), ((-LANE_CENTRES[1], 1), "traffic"),
                 ((LANE_CENTRES[0], -1), "traffic"), ((LANE_CENTRES[1], -1), "traffic"),
                 ((-BIKE_LANE, 1), "bike"), ((BIKE_LANE, -1), "bike")]  # fmt: skip
        forced = ["bus", "motorcycle", "truck_trailer"]
        rng.shuffle(forced)
        for li, ((d, direction), kind) in enumerate(lanes):
            units = []  # (s_front_centre in travel coords, cls list, sizes, speed)
            is_ego_lane = abs(d - self.ego_d) < 1e-6
            lo = (s_lo - reach) if direction > 0 else -(s_hi + reach)
            hi = (s_hi + reach) if direction > 0 else -(s_lo - reach)
            spacing = (38.0 if kind == "traffic" else 70.0) / max(self.density, 1e-3)
            pos = lo + float(rng.uniform(0, spacing))
            while pos < hi and self.density > 0:
                if kind == "bike":
                    unit = [("bicycle", catalog.sample_size("bicycle", rng))]
                    v = float(rng.uniform(3.5, 6.5))
                else:
                    pick = forced.pop() if (forced and li < 4 and abs(pos - direction * (s_lo + 25)) < 60) else None
                    pick = pick or str(rng.choice(["car"] * 12 + ["truck", "bus", "motorcycle", "motorcycle", "truck_trailer",
                                                                  "construction_vehicle"]))  # fmt: skip
                    if pick == "truck_trailer":
                        tr = catalog.sample_size("truck", rng)
                        tr = (min(tr[0], 6.2), tr[1], tr[2])
                        unit = [("truck", tr), ("trailer", catalog.sample_size("trailer", rng))]
                    else:
                        unit = [(pick, catalog.sample_size(pick, rng))]
                    lo_v, hi_v = {"car": (8, 14), "truck": (7, 11), "bus": (6, 10), "motorcycle": (9, 15),
                                  "truck_trailer": (7, 10), "construction_vehicle": (3, 6)}[pick]  # fmt: skip
                    v = float(rng.uniform(lo_v, hi_v))
                total = sum(sz[0] for _, sz in unit) + 0.8 * (len(unit) - 1)
                units.append([pos + total / 2, unit, total, v])
                pos += total + float(rng.exponential(spacing)) + 6.0
            if is_ego_lane:  # the ego as a fixed-speed unit; its body spans ~[-1.0, 3.1] m from the rear axle
                ego_c = self.s_ego0 + 1.05
                units = [u for u in units if abs(u[0] - ego_c) > u[2] / 2 + 2.05 + 8.0]
                units.append([ego_c, None, 4.1, self.v_ego])
            units.sort(key=lambda u: u[0])
            if not units:
                continue
            s0 = np.array([u[0] for u in units])
            half = np.array([u[2] / 2 for u in units])
            v = np.array([u[3] for u in units])
            anchor = next((i for i, u in enumerate(units) if u[1] is None), None)
            v = _lane_speeds(s0, half, v, anchor, T + 0.2, gap=3.0)
            for (c, unit, total, _), vi in zip(units, v):
                if unit is None:
                    continue
                front = c + total / 2
                for cls, size in unit:  # a truck tows its trailer 0.8 m behind
                    centre = front - size[0] / 2
                    motion = Follow(self.road, d, direction * centre, direction, Const(float(vi)))
                    rider = cls in ("motorcycle", "bicycle")
                    self.add_agent(cls, motion, size, rider=rider, tractor=len(unit) > 1 and cls == "truck")
                    front = centre - size[0] / 2 - 0.8

    def _side_street(self) -> None:
        """Side-street traffic: queues braking to the stop lines, vehicles leaving the intersection."""
        rng, T = self.rng, self.T
        u_stop = SIDEWALK_OUTER / max(self.sin_cross, 0.5) + 2.5
        # approaching lanes: +u on w < 0 (u < 0 side), -u on w > 0 (u > 0 side)
        for w, direction in ((-CROSS_HALF / 2, 1), (CROSS_HALF / 2, -1)):
            if rng.random() > 0.85:
                continue
            stop_front = -u_stop  # in travel coordinates (distance along direction), the stop line
            v0, a = float(rng.uniform(7, 10)), float(rng.uniform(1.8, 2.6))
            brake = v0**2 / (2 * a)
            dist_prev = -1.0
            front_limit = stop_front
            for k in range(int(rng.integers(1, 4))):
                cls = str(rng.choice(["car", "car", "car", "truck", "motorcycle", "bus"]))
                size = catalog.sample_size(cls, rng)
                stop_centre = front_limit - size[0] / 2
                # distance still to go: 0 (already waiting) or a full braking run; never less than the car ahead
                if (k == 0 and rng.random() < 0.5) or (dist_prev == 0.0 and rng.random() < 0.6):
                    dist = 0.0
                else:
                    dist = max(dist_prev, brake + float(rng.uniform(0, 5 * T)))
                if dist == 0.0:
                    profile = Brake(0.0, 0.0, a)
                else:
                    profile = Brake(v0, (dist - brake) / v0, a)
                start = stop_centre - dist
                u0 = start if direction > 0 else -start
                self.add_agent(cls, Follow(self.cross, w, u0, direction, profile), size,
                               rider=cls in ("motorcycle",))  # fmt: skip
                dist_prev = dist
                front_limit = stop_centre - size[0] / 2 - float(rng.uniform(1.5, 3.0))
        # leaving lanes (-u on w > 0, +u on w < 0): vehicles already past the crossing, moving away; each
        # one further out leads the one behind it, so it is at least as fast
        for w, direction in ((CROSS_HALF / 2, -1), (-CROSS_HALF / 2, 1)):
            pos, v = u_stop + 3.0, 0.0
            for _ in range(int(rng.integers(0, 3))):
                cls = str(rng.choice(["car", "car", "truck", "motorcycle"]))
                size = catalog.sample_size(cls, rng)
                pos += size[0] / 2 + float(rng.uniform(2, 25))
                v = max(v, float(rng.uniform(6, 12)))
                self.add_agent(cls, Follow(self.cross, w, direction * pos, direction, Const(v)), size,
                               rider=cls == "motorcycle")  # fmt: skip
                pos += size[0] / 2

    def _walkers(self) -> None:
        rng, T = self.rng, self.T
        s_lo, s_hi = self.window()
        for side in (-1, 1):
            for k, d in enumerate(WALK_LANES):
                direction = 1 if (k == 0) == (side < 0) else -1
                lo, hi = s_lo - 110.0, s_hi + 110.0
                spacing = 22.0 / max(self.density, 1e-3)
                pos = lo + float(rng.uniform(0, spacing))
                units = []
                while pos < hi and self.density > 0:
                    size = catalog.sample_size("pedestrian", rng)
                    units.append([pos, size, float(rng.uniform(1.0, 1.7))])
                    pos += size[0] + float(rng.exponential(spacing)) + 1.0
                if not units:
                    continue
                # in travel coordinates
                tc = np.array([u[0] if direction > 0 else -u[0] for u in units])
                order = np.argsort(tc)
                tc = tc[order]
                half = np.array([units[i][1][0] / 2 for i in order])
                v = _lane_speeds(tc, half, np.array([units[i][2] for i in order]), None, T + 0.2, gap=0.6)
                for j, i in enumerate(order):
                    s0 = units[i][0]
                    self.add_agent("pedestrian", Follow(self.road, side * d, s0, direction, Const(float(v[j]))),
                                   units[i][1])  # fmt: skip

    def _curbs_and_lights(self) -> None:
        road = self.road
        curb_col = (0.55, 0.55, 0.53)
        parts = []
        seg = 2.0
        for side in (-1, 1):
            for s in np.arange(0.0, road.length, seg):
                if self.near_cross(
                    s, s + seg, side * CURB[0], side * CURB[1], margin=-CROSS_SIDEWALK + CROSS_HALF + 0.3
                ):
                    continue
                x, y, th = road.pose(s + seg / 2, side * (CURB[0] + CURB[1]) / 2)
                m = mm.box((-seg / 2 - 0.02, -0.125, 0), (seg / 2 + 0.02, 0.125, CURB_HEIGHT), curb_col, "concrete")
                parts.append(m.transformed(rot_z(float(th)), (float(x), float(y), 0.0)))
        # side-street curbs beyond the main road's sidewalks
        u_min = SIDEWALK_OUTER / max(self.sin_cross, 0.5) + 1.0
        for sgn_u in (-1, 1):
            for u in np.arange(u_min, 170.0, seg):
                for sgn_w in (-1, 1):
                    x, y, _ = self.cross.pose(sgn_u * (u + seg / 2), sgn_w * (CROSS_HALF + 0.125))
                    m = mm.box((-seg / 2 - 0.02, -0.125, 0), (seg / 2 + 0.02, 0.125, CURB_HEIGHT), curb_col, "concrete")
                    parts.append(m.transformed(rot_z(self.cross.heading), (float(x), float(y), 0.0)))
        self.scenery.extend(parts)
        # traffic lights at the four corners: main road green, side street red
        for sgn_u in (-1, 1):
            for sgn_w in (-1, 1):
                u = sgn_u * (SIDEWALK_OUTER / max(self.sin_cross, 0.5) + 1.8)
                x, y, _ = self.cross.pose(u, sgn_w * (CROSS_HALF + 1.2))
                facing = self.cross.heading + (np.pi if sgn_u > 0 else 0.0)
                self.scenery.append(_traffic_light(sgn_w).transformed(rot_z(float(facing)), (float(x), float(y), 0.0)))


# ---------------------------------------------------------------------------------------------
# Scenery meshes (not annotated)

FACADES = np.array([
    [0.76, 0.72, 0.64], [0.65, 0.45, 0.35], [0.82, 0.82, 0.80], [0.55, 0.57, 0.60], [0.85, 0.78, 0.60],
    [0.60, 0.62, 0.55], [0.72, 0.62, 0.52], [0.45, 0.40, 0.38],
])  # fmt: skip


def _building(rng: np.random.Generator, length: float, depth: float) -> Mesh:
    """A block ``length`` along x, ``depth`` along y, centred at the origin; facade windows come from the shader."""
    h = float(rng.choice([rng.uniform(6, 12), rng.uniform(12, 30), rng.uniform(25, 45)], p=[0.45, 0.4, 0.15]))
    col = tuple(FACADES[rng.integers(len(FACADES))])
    parts = [
        mm.box((-length / 2, -depth / 2, 0), (length / 2, depth / 2, h), col, "facade"),
        mm.box(
            (-length / 2 + 0.3, -depth / 2 + 0.3, h),
            (length / 2 - 0.3, depth / 2 - 0.3, h + 0.6),
            (0.35, 0.33, 0.32),
            "roof",
        ),  # fmt: skip
    ]
    if rng.random() < 0.4:  # a setback upper storey
        h2 = h + float(rng.uniform(3, 10))
        parts.append(mm.box((-length / 3, -depth / 3, h), (length / 3, depth / 3, h2), col, "facade"))
    return Mesh.concat(parts)


def _tree(rng: np.random.Generator, crown_bottom: float, radius: float) -> Mesh:
    trunk = mm.cylinder((0, 0, 0), 0.16, crown_bottom + 0.5, (0.35, 0.25, 0.16), "bark", segments=8)
    green = np.array([0.18, 0.42, 0.15]) * rng.uniform(0.7, 1.2) + rng.uniform(-0.04, 0.04, 3)
    h = radius * float(rng.uniform(1.0, 1.6))
    crown = mm.ellipsoid((0, 0, crown_bottom + h), (radius, radius, h), tuple(np.clip(green, 0, 1)), "foliage")
    return Mesh.concat([trunk, crown])


def _street_light(rng: np.random.Generator) -> Mesh:
    """A pole with an arm reaching over the road (towards -y in its frame, i.e. towards the road)."""
    grey = (0.42, 0.43, 0.45)
    h = float(rng.uniform(7.0, 8.5))
    return Mesh.concat([
        mm.cylinder((0, 0, 0), 0.11, h, grey, "metal", segments=8),
        mm.box((-0.06, -2.4, h - 0.12), (0.06, 0.0, h), grey, "metal"),
        mm.box((-0.2, -2.6, h - 0.3), (0.2, -1.9, h - 0.1), (0.95, 0.93, 0.8), "light"),
    ])  # fmt: skip


def _traffic_light(sgn_w: int) -> Mesh:
    """Pole plus two signal heads: one facing along the side street (red), one the main road (green)."""
    dark = (0.1, 0.1, 0.1)
    parts = [mm.cylinder((0, 0, 0), 0.1, 3.4, (0.3, 0.3, 0.32), "metal", segments=8),
             mm.box((-0.2, -0.2, 2.4), (0.2, 0.2, 3.4), dark, "plastic")]  # fmt: skip
    for k, col in enumerate([(1.0, 0.1, 0.05), (0.25, 0.2, 0.05), (0.1, 0.2, 0.1)]):
        z = 3.2 - 0.3 * k
        parts.append(mm.box((-0.25, -0.1, z - 0.1), (-0.2, 0.1, z + 0.1), col, "light"))  # faces -x: the side street
    for k, col in enumerate([(0.25, 0.05, 0.05), (0.25, 0.2, 0.05), (0.1, 1.0, 0.3)]):
        z = 3.2 - 0.3 * k
        y = 0.2 * sgn_w
        parts.append(
            mm.box((-0.1, min(y, y + 0.05 * sgn_w), z - 0.1), (0.1, max(y, y + 0.05 * sgn_w), z + 0.1), col, "light")
        )
    return Mesh.concat(parts)
