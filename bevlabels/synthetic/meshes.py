"""Triangle meshes of the synthetic world: primitives, materials and one builder per object class.

A :class:`Mesh` carries, per triangle, an RGB albedo and a material index (:data:`MATERIALS`:
LiDAR reflectivity and how the renderer shades it). Object meshes are built in the object's own
frame (x forward along the length L, y left along the width W, z up from the ground at 0) and then
fitted by :func:`fit_to_box` so that their axis-aligned bounds are exactly the annotated box shrunk
by :data:`INSET` on every side: the GT box encloses the mesh tightly, and every LiDAR return from
an object lies at least ``INSET`` inside its box (robust to float32 point storage).

Shapes: V vertices, T triangles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Gap between an object's mesh and its annotated box, metres (each side, bottom included).
INSET = 0.02

# Material table: name -> (index, LiDAR reflectivity in [0, 1]).
MATERIALS = {
    "paint": (0, 0.30),
    "glass": (1, 0.06),
    "rubber": (2, 0.05),
    "metal": (3, 0.35),
    "retro": (4, 0.95),  # retro-reflective stripes, plates
    "fabric": (5, 0.20),
    "skin": (6, 0.25),
    "facade": (7, 0.18),  # building walls: the renderer draws windows from the hit position
    "foliage": (8, 0.30),
    "bark": (9, 0.20),
    "concrete": (10, 0.28),
    "light": (11, 0.60),  # lamps: shaded as emissive
    "plastic": (12, 0.22),
    "roof": (13, 0.15),
}
MATERIAL_INDEX = {k: v[0] for k, v in MATERIALS.items()}
REFLECTIVITY = np.array([v[1] for v in sorted(MATERIALS.values())], dtype=np.float32)  # (n_materials,)
M = MATERIAL_INDEX


@dataclass
class Mesh:
    """Triangles with per-triangle albedo ``color (T, 3)`` in [0, 1] and ``material (T,)``."""

    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int64
    color: np.ndarray  # (T, 3) float32
    material: np.ndarray  # (T,) int16

    @staticmethod
    def empty() -> Mesh:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32), np.zeros(0, np.int16))

    @staticmethod
    def concat(meshes: list[Mesh]) -> Mesh:
        meshes = [m for m in meshes if len(m.triangles)]
        if not meshes:
            return Mesh.empty()
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return Mesh(
            np.concatenate([m.vertices for m in meshes]),
            np.concatenate([m.triangles + o for m, o in zip(meshes, offsets)]),
            np.concatenate([m.color for m in meshes]).astype(np.float32),
            np.concatenate([m.material for m in meshes]).astype(np.int16),
        )

    def transformed(self, R: np.ndarray, t: np.ndarray) -> Mesh:
        """The mesh with vertices mapped by ``R (3, 3)``, ``t (3,)``: ``R v + t``."""
        return Mesh(self.vertices @ np.asarray(R).T + np.asarray(t), self.triangles, self.color, self.material)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned ``(min (3,), max (3,))`` of the vertices."""
        return self.vertices.min(0), self.vertices.max(0)


def _paint(n_tri: int, color, material: str) -> tuple[np.ndarray, np.ndarray]:
    c = np.broadcast_to(np.asarray(color, dtype=np.float32), (n_tri, 3)).copy()
    return c, np.full(n_tri, MATERIAL_INDEX[material], np.int16)


# ---------------------------------------------------------------------------------------------
# Primitives (all return a Mesh in the coordinates given)

_BOX_TRIS = np.array(
    [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
     [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]],
    dtype=np.int64,
)  # fmt: skip


def box(lo, hi, color, material: str = "paint") -> Mesh:
    """An axis-aligned box ``[lo, hi]`` (rotated boxes: :func:`limb`)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]])  # fmt: skip
    c, m = _paint(12, color, material)
    return Mesh(v, _BOX_TRIS.copy(), c, m)


def frustum(center_bottom, r_bottom: float, r_top: float, height: float, color, material: str = "paint",
            segments: int = 10, axis: str = "z") -> Mesh:  # fmt: skip
    """A capped cylinder/cone frustum along ``axis`` (``z`` up or ``y`` sideways), starting at ``center_bottom``."""
    a = 2 * np.pi * np.arange(segments) / segments
    ca, sa = np.cos(a), np.sin(a)
    ring0 = np.stack([r_bottom * ca, r_bottom * sa, np.zeros(segments)], -1)
    ring1 = np.stack([r_top * ca, r_top * sa, np.full(segments, height)], -1)
    v = np.concatenate([ring0, ring1, [[0, 0, 0], [0, 0, height]]])  # (2S+2, 3)
    i = np.arange(segments)
    j = (i + 1) % segments
    S = segments
    side = np.concatenate([np.stack([i, j, S + j], -1), np.stack([i, S + j, S + i], -1)])
    caps = np.concatenate(
        [np.stack([np.full(S, 2 * S), j, i], -1), np.stack([np.full(S, 2 * S + 1), S + i, S + j], -1)]
    )
    tris = np.concatenate([side, caps]).astype(np.int64)
    if axis == "y":  # rotate z -> y: (x, y, z) -> (x, z, y) keeps a valid right-handed mesh up to winding
        v = v[:, [0, 2, 1]]
    elif axis == "x":
        v = v[:, [2, 1, 0]]
    v = v + np.asarray(center_bottom, float)
    c, m = _paint(len(tris), color, material)
    return Mesh(v, tris, c, m)


def cylinder(center_bottom, radius: float, height: float, color, material: str = "paint", segments: int = 10,
             axis: str = "z") -> Mesh:  # fmt: skip
    return frustum(center_bottom, radius, radius, height, color, material, segments, axis)


def ellipsoid(center, radii, color, material: str = "foliage", n_lat: int = 6, n_lon: int = 10) -> Mesh:
    """A UV ellipsoid with ``n_lat`` bands and ``n_lon`` segments."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = 2 * np.pi * np.arange(n_lon) / n_lon
    sl, cl = np.sin(lat)[:, None], np.cos(lat)[:, None]
    ring = np.stack([sl * np.cos(lon)[None], sl * np.sin(lon)[None], np.broadcast_to(cl, (len(lat), n_lon))], -1)
    v = np.concatenate([[[0, 0, 1]], ring.reshape(-1, 3), [[0, 0, -1]]]) * np.asarray(radii, float) + np.asarray(
        center, float
    )
    tris = []
    top, bot = 0, len(v) - 1
    for k in range(n_lon):  # fan at the poles, quads between bands: a few dozen faces
        k1 = (k + 1) % n_lon
        tris.append([top, 1 + k, 1 + k1])
        tris.append([bot, 1 + (len(lat) - 1) * n_lon + k1, 1 + (len(lat) - 1) * n_lon + k])
        for b in range(len(lat) - 1):
            a0, a1 = 1 + b * n_lon + k, 1 + b * n_lon + k1
            b0, b1 = a0 + n_lon, a1 + n_lon
            tris += [[a0, b0, b1], [a0, b1, a1]]
    tris = np.asarray(tris, np.int64)
    c, m = _paint(len(tris), color, material)
    return Mesh(v, tris, c, m)


def fit_to_box(mesh: Mesh, L: float, W: float, H: float, inset: float = INSET) -> Mesh:
    """The mesh affinely mapped so its bounds are the box ``[-L/2, L/2] x [-W/2, W/2] x [0, H]`` shrunk by ``inset``."""
    lo, hi = mesh.bounds()
    target_lo = np.array([-L / 2 + inset, -W / 2 + inset, inset])
    target_hi = np.array([L / 2 - inset, W / 2 - inset, H - inset])
    scale = (target_hi - target_lo) / np.maximum(hi - lo, 1e-9)
    v = (mesh.vertices - lo) * scale + target_lo
    return Mesh(v, mesh.triangles, mesh.color, mesh.material)


# ---------------------------------------------------------------------------------------------
# Object builders: each returns a Mesh spanning [-L/2, L/2] x [-W/2, W/2] x [0, H] (before fitting)

GLASS = (0.10, 0.13, 0.17)
TYRE = (0.05, 0.05, 0.06)
DARK = (0.12, 0.12, 0.13)
HEADLIGHT = (0.95, 0.95, 0.85)
TAILLIGHT = (0.75, 0.05, 0.05)


def _wheels(xs, W: float, r: float, width: float) -> list[Mesh]:
    out = []
    for x in xs:
        for side in (-1, 1):
            y0 = side * (W / 2 - width / 2)
            out.append(cylinder((x, y0 - width / 2, r), r, width, TYRE, "rubber", segments=12, axis="y"))
    return out


def car_mesh(L: float, W: float, H: float, paint, rng: np.random.Generator) -> Mesh:
    r = 0.19 * H
    cab0, cab1 = rng.uniform(-0.36, -0.28) * L, rng.uniform(0.12, 0.22) * L
    belt = rng.uniform(0.52, 0.6) * H
    parts = [
        box((-L / 2, -W / 2 + 0.05, 0.18 * H), (L / 2, W / 2 - 0.05, 0.26 * H), DARK, "plastic"),  # sills/bumpers
        box((-L / 2 + 0.05, -W / 2, 0.26 * H), (L / 2 - 0.05, W / 2, belt), paint, "paint"),  # body
        box((cab0, -0.44 * W, belt), (cab1, 0.44 * W, 0.94 * H), GLASS, "glass"),  # greenhouse
        box((cab0 + 0.05 * L, -0.42 * W, 0.94 * H), (cab1 - 0.04 * L, 0.42 * W, H), paint, "paint"),  # roof
        box((L / 2 - 0.05, -0.46 * W, 0.42 * H), (L / 2, -0.28 * W, 0.5 * H), HEADLIGHT, "light"),
        box((L / 2 - 0.05, 0.28 * W, 0.42 * H), (L / 2, 0.46 * W, 0.5 * H), HEADLIGHT, "light"),
        box((-L / 2, -0.46 * W, 0.42 * H), (-L / 2 + 0.05, -0.3 * W, 0.5 * H), TAILLIGHT, "retro"),
        box((-L / 2, 0.3 * W, 0.42 * H), (-L / 2 + 0.05, 0.46 * W, 0.5 * H), TAILLIGHT, "retro"),
        box((-L / 2 - 0.0, -0.12 * W, 0.3 * H), (-L / 2 + 0.03, 0.12 * W, 0.36 * H), (0.9, 0.9, 0.9), "retro"),  # plate
    ]
    parts += _wheels((0.31 * L, -0.31 * L), W, r, 0.22)
    return Mesh.concat(parts)


def truck_mesh(L: float, W: float, H: float, cab_paint, cargo_paint, rng: np.random.Generator,
               tractor: bool = False) -> Mesh:  # fmt: skip
    """A box truck, or a tractor unit (cab, fuel tanks and a fifth-wheel deck) when ``tractor``."""
    r = 0.5 * min(1.0, H / 2.8)
    cab_len = rng.uniform(0.24, 0.3) * L
    x_cab = L / 2 - cab_len
    cab_top = rng.uniform(0.78, 0.9) * H
    parts = [
        box((-L / 2, -0.4 * W, 0.55 * r), (L / 2 - 0.1, 0.4 * W, 2.0 * r), DARK, "metal"),  # chassis
        box((x_cab, -W / 2, 1.3 * r), (L / 2, W / 2, 0.5 * cab_top), cab_paint, "paint"),  # cab lower
        box((x_cab, -W / 2, 0.5 * cab_top), (L / 2 - 0.35, W / 2, cab_top), cab_paint, "paint"),  # cab upper
        box((L / 2 - 0.35, -0.47 * W, 0.5 * cab_top), (L / 2, 0.47 * W, 0.92 * cab_top), GLASS, "glass"),  # windscreen
        box((-L / 2, -W / 2, 2.0 * r), (x_cab - 0.15, W / 2, H), cargo_paint, "paint")  # cargo box
        if not tractor
        else box((-L / 2, -0.45 * W, 2.0 * r), (x_cab - 0.3, 0.45 * W, 2.3 * r), DARK, "metal"),  # fifth-wheel deck
        box((L / 2 - 0.04, -0.45 * W, 1.4 * r), (L / 2, -0.3 * W, 1.7 * r), HEADLIGHT, "light"),
        box((L / 2 - 0.04, 0.3 * W, 1.4 * r), (L / 2, 0.45 * W, 1.7 * r), HEADLIGHT, "light"),
        box((-L / 2 - 0.0, -0.48 * W, 0.7 * r), (-L / 2 + 0.04, 0.48 * W, 0.95 * r), TAILLIGHT, "retro"),
    ]
    if tractor:
        tank = (0.7, 0.7, 0.72)
        parts += [box((x_cab - 1.4, -W / 2, 0.9 * r), (x_cab - 0.2, -W / 2 + 0.55, 1.7 * r), tank, "metal"),
                  box((x_cab - 1.4, W / 2 - 0.55, 0.9 * r), (x_cab - 0.2, W / 2, 1.7 * r), tank, "metal")]  # fmt: skip
    parts += _wheels((L / 2 - 0.55 * cab_len, -L / 2 + 1.6 * r, -L / 2 + 3.8 * r), W, r, 0.32)
    return Mesh.concat(parts)


def bus_mesh(L: float, W: float, H: float, paint, rng: np.random.Generator) -> Mesh:
    r = 0.5
    parts = [
        box((-L / 2, -W / 2 + 0.03, 0.7 * r), (L / 2 - 0.03, W / 2 - 0.03, H - 0.15), paint, "paint"),  # body
        box(
            (-L / 2 + 0.3, -W / 2 + 0.1, H - 0.15), (L / 2 - 0.5, W / 2 - 0.1, H), (0.75, 0.75, 0.75), "metal"
        ),  # roof units
        box((-0.46 * L, -W / 2, 0.48 * H), (0.47 * L, -W / 2 + 0.03, 0.84 * H), GLASS, "glass"),  # window band right
        box((-0.46 * L, W / 2 - 0.03, 0.48 * H), (0.47 * L, W / 2, 0.84 * H), GLASS, "glass"),  # window band left
        box((L / 2 - 0.03, -0.46 * W, 0.35 * H), (L / 2, 0.46 * W, 0.86 * H), GLASS, "glass"),  # windscreen
        box((L / 2 - 0.03, -0.4 * W, 0.88 * H), (L / 2, 0.4 * W, 0.95 * H), (1.0, 0.6, 0.1), "light"),  # route sign
        box((-L / 2, -0.4 * W, 0.6 * H), (-L / 2 + 0.02, 0.4 * W, 0.8 * H), GLASS, "glass"),  # rear window
    ]
    parts += _wheels((0.3 * L, -0.28 * L), W, r, 0.3)
    return Mesh.concat(parts)


def trailer_mesh(L: float, W: float, H: float, paint, rng: np.random.Generator) -> Mesh:
    r = 0.5
    floor = 2.6 * r
    parts = [
        box((-L / 2, -W / 2 + 0.03, floor), (L / 2, W / 2 - 0.03, H), paint, "paint"),  # container
        box((-L / 2 + 0.2, -0.42 * W, 0.9 * r), (L / 2 - 0.3, 0.42 * W, floor), DARK, "metal"),  # chassis rails
        box((-L / 2, -0.48 * W, 1.2 * r), (-L / 2 + 0.05, 0.48 * W, 1.6 * r), TAILLIGHT, "retro"),  # rear bumper
    ]
    shade = np.asarray(paint) * 0.8
    n_ribs = max(3, int(L / 1.2))
    for k in range(n_ribs):  # vertical ribs on both sides: they give the container its look
        x = -L / 2 + (k + 0.5) * L / n_ribs
        for side in (-1, 1):
            y0, y1 = sorted((side * (W / 2 - 0.03), side * W / 2))
            parts.append(box((x - 0.06, y0, floor + 0.05), (x + 0.06, y1, H - 0.05), shade, "metal"))
    for x in (0.3 * L,):  # landing legs near the front
        for side in (-1, 1):
            parts.append(
                box((x - 0.1, side * 0.35 * W - 0.08, 0.0), (x + 0.1, side * 0.35 * W + 0.08, floor), DARK, "metal")
            )
    parts += _wheels((-L / 2 + 1.3, -L / 2 + 2.4, -L / 2 + 3.5), W, r, 0.3)
    return Mesh.concat(parts)


def construction_mesh(L: float, W: float, H: float, paint, rng: np.random.Generator) -> Mesh:
    """An excavator: tracks, a rotating house with a cab, boom, stick and bucket reaching forward."""
    track = (0.22, 0.22, 0.24)
    parts = [
        box((-0.5 * L, -W / 2, 0.0), (0.16 * L, -0.22 * W, 0.24 * H), track, "rubber"),
        box((-0.5 * L, 0.22 * W, 0.0), (0.16 * L, W / 2, 0.24 * H), track, "rubber"),
        box((-0.3 * L, -0.22 * W, 0.08 * H), (0.0, 0.22 * W, 0.26 * H), DARK, "metal"),  # undercarriage
        box((-0.48 * L, -0.46 * W, 0.26 * H), (0.06 * L, 0.46 * W, 0.58 * H), paint, "paint"),  # house
        box((-0.5 * L, -0.44 * W, 0.3 * H), (-0.4 * L, 0.44 * W, 0.56 * H), DARK, "metal"),  # counterweight
        box((-0.08 * L, 0.02 * W, 0.58 * H), (0.1 * L, 0.44 * W, 0.95 * H), GLASS, "glass"),  # cab
        box((-0.08 * L, 0.02 * W, 0.95 * H), (0.1 * L, 0.44 * W, H), paint, "paint"),  # cab roof
    ]
    # boom from the house up and forward, stick down to the bucket
    p0, p1, p2 = (0.06 * L, -0.08 * W, 0.5 * H), (0.36 * L, -0.08 * W, 0.92 * H), (0.45 * L, -0.08 * W, 0.28 * H)
    parts += [limb(p0, p1, 0.42, paint, "paint"), limb(p1, p2, 0.3, paint, "paint")]
    parts.append(box((0.38 * L, -0.08 * W - 0.45, 0.0), (0.5 * L, -0.08 * W + 0.45, 0.3 * H), DARK, "metal"))  # bucket
    return Mesh.concat(parts)


def pedestrian_mesh(L: float, W: float, H: float, shirt, trousers, skin, rng: np.random.Generator,
                    walking: bool = True) -> Mesh:  # fmt: skip
    """Legs (apart when walking), torso, arms and a head; the stride and the arm swing span L."""
    hip, shoulder = 0.48 * H, 0.8 * H
    stride = L / 2 - 0.06 if walking else 0.12
    legs = []
    for side, sgn in ((-1, 1), (1, -1)):
        foot = np.array([sgn * stride, side * 0.09, 0.04])
        legs.append(limb((0.0, side * 0.09, hip), foot, 0.14, trousers))
        legs.append(box(foot + [-0.06, -0.05, -0.04], foot + [0.06, 0.05, 0.04], DARK, "rubber"))
    arms = []
    swing = (L / 2 - 0.05) if walking else 0.1
    for side, sgn in ((-1, -1), (1, 1)):
        y = side * (W / 2 - 0.05)
        arms.append(limb((0.0, y, shoulder), (sgn * swing * 0.8, y, 0.5 * H), 0.1, shirt))
    torso = box((-0.12, -W / 2 + 0.1, hip), (0.12, W / 2 - 0.1, shoulder + 0.02), shirt, "fabric")
    head = ellipsoid((0.0, 0.0, H - 0.11), (0.09, 0.08, 0.11), skin, "skin", n_lat=5, n_lon=8)
    return Mesh.concat(legs + arms + [torso, head])


def limb(p0, p1, thick: float, color, material: str = "fabric", width: float | None = None) -> Mesh:
    """A box ``thick`` x ``width`` in cross-section from point ``p0`` to point ``p1`` (tubes, limbs, spokes)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    x = axis / length
    y = np.cross([0.0, 0.0, 1.0], x)
    y = y / np.linalg.norm(y) if np.linalg.norm(y) > 1e-9 else np.array([0.0, 1.0, 0.0])
    R = np.stack([x, y, np.cross(x, y)], -1)  # columns: the box's axes
    w = thick if width is None else width
    m = box((-length / 2, -w / 2, -thick / 2), (length / 2, w / 2, thick / 2), color, material)
    return m.transformed(R, (p0 + p1) / 2)


def ring_wheel(cx: float, r: float, width: float, tube: float, spokes: int = 3, segments: int = 14) -> Mesh:
    """A see-through wheel in the x-z plane centred at ``(cx, 0, r)``: a tyre of ``segments`` pieces, hub, spokes."""
    a = 2 * np.pi * np.arange(segments + 1) / segments
    rim = r - tube / 2
    pts = np.stack([cx + rim * np.cos(a), np.zeros_like(a), r + rim * np.sin(a)], -1)
    parts = [limb(pts[k], pts[k + 1], tube, TYRE, "rubber", width=width) for k in range(segments)]
    centre = np.array([cx, 0.0, r])
    for k in range(spokes):
        d = np.array([np.cos(np.pi * k / spokes), 0.0, np.sin(np.pi * k / spokes)]) * rim
        parts.append(limb(centre - d, centre + d, 0.012, (0.7, 0.7, 0.72), "metal"))
    parts.append(cylinder((cx, -width / 2, r), 0.05, width, (0.6, 0.6, 0.62), "metal", segments=6, axis="y"))
    return Mesh.concat(parts)


def _rider(hip, hand, foot, top: float, jacket, trousers, skin) -> list[Mesh]:
    """A seated rider: legs from the hip over the knee to the foot rests, torso leaning to the handlebar, head."""
    hip, hand, foot = np.asarray(hip, float), np.asarray(hand, float), np.asarray(foot, float)
    parts = []
    shoulder = np.array([hip[0] + 0.35 * (hand[0] - hip[0]), 0.0, top - 0.28])
    for side in (-1, 1):
        h = hip + [0.0, side * 0.11, 0.0]
        f = foot + [0.0, side * 0.16, 0.0]
        knee = np.array([(h[0] + f[0]) / 2 + 0.18, side * 0.14, max(h[2], f[2]) + 0.05])
        parts += [limb(h, knee, 0.13, trousers), limb(knee, f, 0.11, trousers)]
        parts.append(limb(shoulder + [0.0, side * 0.17, 0.0], hand + [0.0, side * 0.2, 0.0], 0.08, jacket))
    parts.append(limb(hip, shoulder, 0.3, jacket, width=0.36))
    parts.append(ellipsoid(shoulder + [0.06, 0.0, 0.17], (0.12, 0.11, 0.13), skin, "plastic", n_lat=5, n_lon=8))
    return parts


def motorcycle_mesh(L: float, W: float, H: float, paint, jacket, skin, rng: np.random.Generator, rider: bool) -> Mesh:
    """Two wheels, a low engine, tank, seat and tail, fork and bars; a rider leaning to the bars if ridden."""
    r = 0.31
    xf, xr = L / 2 - r, -L / 2 + r
    metal = (0.55, 0.55, 0.58)
    parts = [
        cylinder((xf, -0.065, r), r, 0.13, TYRE, "rubber", segments=14, axis="y"),
        cylinder((xr, -0.065, r), r, 0.13, TYRE, "rubber", segments=14, axis="y"),
        box((-0.12 * L, -0.15, 0.22), (0.14 * L, 0.15, 0.55), DARK, "metal"),  # engine
        box((0.0, -0.16, 0.58), (0.22 * L, 0.16, 0.8), paint, "paint"),  # tank
        box((-0.3 * L, -0.13, 0.66), (0.0, 0.13, 0.78), DARK, "plastic"),  # seat
        box((-0.45 * L, -0.1, 0.6), (-0.28 * L, 0.1, 0.74), paint, "paint"),  # tail
        box((-0.47 * L, -0.08, 0.6), (-0.45 * L, 0.08, 0.66), TAILLIGHT, "retro"),
        limb((xr, 0.0, r), (-0.05 * L, 0.0, 0.6), 0.06, metal, "metal"),  # swing arm
        limb((xf, 0.0, r), (0.3 * L, 0.0, 0.95), 0.07, metal, "metal"),  # fork
        box((0.29 * L, -W / 2, 0.93), (0.33 * L, W / 2, 0.97), metal, "metal"),  # handlebar
        box((0.33 * L, -0.1, 0.78), (0.37 * L, 0.1, 0.9), HEADLIGHT, "light"),
    ]
    if rider:
        parts += _rider((-0.15 * L, 0.0, 0.8), (0.3 * L, 0.0, 0.95), (-0.02 * L, 0.0, 0.35), H, jacket, DARK, skin)
    return Mesh.concat(parts)


def bicycle_mesh(L: float, W: float, H: float, paint, jacket, skin, rng: np.random.Generator, rider: bool) -> Mesh:
    """Spoked see-through wheels, a diamond frame of tubes, saddle and bars; a pedalling rider if ridden."""
    r = 0.34
    xf, xr = L / 2 - r, -L / 2 + r
    bb = np.array([-0.02 * L, 0.0, 0.3])  # bottom bracket
    seat = np.array([-0.14 * L, 0.0, 0.92])
    head = np.array([0.26 * L, 0.0, 0.95])
    metal = (0.6, 0.6, 0.62)
    parts = [
        ring_wheel(xf, r, 0.04, 0.05),
        ring_wheel(xr, r, 0.04, 0.05),
        limb(bb, seat, 0.035, paint, "paint"),  # seat tube
        limb(seat - [0, 0, 0.05], head - [0, 0, 0.05], 0.035, paint, "paint"),  # top tube
        limb(bb, head - [0, 0, 0.08], 0.04, paint, "paint"),  # down tube
        limb(bb, (xr, 0.0, r), 0.025, paint, "paint"),  # chain stay
        limb(seat - [0, 0, 0.05], (xr, 0.0, r), 0.025, paint, "paint"),  # seat stay
        limb((xf, 0.0, r), head + [0, 0, 0.08], 0.03, metal, "metal"),  # fork and stem
        box(seat + [-0.12, -0.07, 0.0], seat + [0.1, 0.07, 0.05], DARK, "plastic"),  # saddle
        box(head + [-0.03, -W / 2, 0.06], head + [0.03, W / 2, 0.1], metal, "metal"),  # handlebar
    ]
    if rider:
        parts += _rider(seat + [0.0, 0.0, 0.08], head + [0.0, 0.0, 0.08], bb + [0.08, 0.0, 0.0], H, jacket,
                        DARK, skin)  # fmt: skip
    return Mesh.concat(parts)


def cone_mesh(L: float, W: float, H: float, rng: np.random.Generator) -> Mesh:
    orange, white = (0.95, 0.35, 0.05), (0.95, 0.95, 0.95)
    base_h = 0.04 * H
    rb, rt = 0.4 * min(L, W), 0.06 * min(L, W)
    zs = [base_h, 0.45 * H, 0.62 * H, H]
    cols = [(orange, "plastic"), (white, "retro"), (orange, "plastic")]
    parts = [box((-L / 2, -W / 2, 0.0), (L / 2, W / 2, base_h), (0.08, 0.08, 0.08), "rubber")]
    for (z0, z1), (c, mat) in zip(zip(zs[:-1], zs[1:]), cols):
        f0 = rb + (rt - rb) * (z0 - base_h) / (H - base_h)
        f1 = rb + (rt - rb) * (z1 - base_h) / (H - base_h)
        parts.append(frustum((0.0, 0.0, z0), f0, f1, z1 - z0, c, mat, segments=10))
    return Mesh.concat(parts)


def barrier_mesh(L: float, W: float, H: float, rng: np.random.Generator, style: str) -> Mesh:
    """A barrier whose long side is along y (nuScenes barriers: W ~2.5 m across their heading, L ~0.5 m)."""
    if style == "jersey":  # concrete with a wide foot and a red-white retro band on top
        concrete = tuple(np.clip(np.array([0.62, 0.61, 0.58]) + rng.uniform(-0.05, 0.05), 0, 1))
        parts = [
            box((-L / 2, -W / 2, 0.0), (L / 2, W / 2, 0.3 * H), concrete, "concrete"),
            box((-0.3 * L, -W / 2, 0.3 * H), (0.3 * L, W / 2, 0.85 * H), concrete, "concrete"),
        ]
        parts += _retro_panels(W, 6, 0.3 * L, 0.85 * H, H, ((0.85, 0.1, 0.08), (0.95, 0.95, 0.95)))
        return Mesh.concat(parts)
    # plastic road barrier: alternating red/white panels on two feet
    parts = [box((-L / 2, -W / 2, 0.0), (L / 2, -W / 2 + 0.15, 0.12 * H), DARK, "plastic"),
             box((-L / 2, W / 2 - 0.15, 0.0), (L / 2, W / 2, 0.12 * H), DARK, "plastic")]  # fmt: skip
    parts += _retro_panels(W, 7, 0.12 * L, 0.12 * H, H, ((0.9, 0.12, 0.08), (0.96, 0.96, 0.96)))
    return Mesh.concat(parts)


def _retro_panels(W: float, n: int, half_x: float, z0: float, z1: float, colours) -> list[Mesh]:
    """A barrier's band of ``n`` retro-reflective panels side by side across its width ``W`` (along y), ``2 * half_x``
    thick, from height ``z0`` to ``z1``, alternating the two ``colours`` (red, white) from the -y end."""
    panels = []
    for k in range(n):
        y0 = -W / 2 + k * W / n
        panels.append(box((-half_x, y0, z0), (half_x, y0 + W / n, z1), colours[k % 2], "retro"))
    return panels
