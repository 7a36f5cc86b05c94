"""Ray casting the synthetic world with open3d: LiDAR sweeps, camera images, object visibility.

Two ``open3d.t.geometry.RaycastingScene`` per instant: the static one (scenery and static objects,
built once per scene) and the dynamic one (moving objects posed at that instant, rebuilt per
instant); the ground is the analytic plane z = 0. A ray's hit is the nearest of the three.

Each sensor reading is rendered at one instant: a LiDAR sweep is the whole 360 degrees at the
sweep's timestamp (no rolling shutter: an honest simplification of a spinning sensor), a camera
image at the camera's own timestamp (nuScenes' per-camera offsets), each with its own ego pose.

Cameras: one ray per pixel through the pixel centre; colour = albedo x (ambient + Lambert x
shadow), shadows from one ray towards the sun, building windows and road markings drawn
procedurally from the hit position, distance haze towards the horizon colour, a sky gradient.

LiDAR: returns within ``[min_range, max_range]``; intensity = 255 x reflectivity x (0.35 + 0.65
|cos(incidence)|), rounded to an integer as nuScenes stores it. Returns that fall within
:data:`BOX_EPS` of an annotated box's boundary (ground points right under a box) are dropped, so
that every consumer counts the same points inside every box whatever its float arithmetic.

Shapes: N rays / points, T triangles, A agents, H x W image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevlabels.geometry import box_corners, invert_transform, points_in_boxes, project_points, rot_z, transform_points
from bevlabels.synthetic.meshes import MATERIAL_INDEX, REFLECTIVITY, Mesh
from bevlabels.synthetic.world import CROSS_HALF, CROSS_SIDEWALK, CURB, PARK, SIDEWALK_OUTER, World

#: returns within this distance (metres) of a box boundary are dropped (see module docstring)
BOX_EPS = 2e-3

SKY_HORIZON = np.array([0.80, 0.85, 0.90], np.float32)
SKY_ZENITH = np.array([0.33, 0.52, 0.82], np.float32)
HAZE_DIST = 380.0
AMBIENT = 0.38


@dataclass
class _Scene:
    """One ray-casting scene and, per triangle, its object index (-1: scenery), albedo and material."""

    scene: object  # open3d.t.geometry.RaycastingScene or None when empty
    tri_obj: np.ndarray  # (T,) int32
    tri_color: np.ndarray  # (T, 3) float32
    tri_mat: np.ndarray  # (T,) int16


def _make_scene(vertices: np.ndarray, triangles: np.ndarray, tri_obj, tri_color, tri_mat) -> _Scene:
    import open3d as o3d

    if len(triangles) == 0:
        return _Scene(None, tri_obj, tri_color, tri_mat)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.uint32)),
    )
    return _Scene(scene, tri_obj, tri_color, tri_mat)


@dataclass
class Hits:
    """Nearest hits of N rays: distance ``t`` (inf: none), ``kind`` (0 sky, 1 ground, 2 mesh), ``obj``
    (agent index, -1 otherwise), albedo ``color (N, 3)``, ``refl (N,)``, ``mat (N,)`` (-1 ground),
    ``normal (N, 3)``."""

    t: np.ndarray
    kind: np.ndarray
    obj: np.ndarray
    color: np.ndarray
    refl: np.ndarray
    mat: np.ndarray
    normal: np.ndarray


class Renderer:
    """Renders one :class:`World`; build it once per scene."""

    def __init__(self, world: World):
        self.world = world
        agents = world.agents
        self.static_idx = np.array([i for i, a in enumerate(agents) if a.static], dtype=np.int64)
        self.dynamic_idx = np.array([i for i, a in enumerate(agents) if not a.static], dtype=np.int64)
        parts, objs = [world.scenery], [np.full(len(world.scenery.triangles), -1, np.int32)]
        for i, (x, y, yaw) in zip(self.static_idx, world.poses(0.0, self.static_idx)):
            parts.append(agents[i].mesh.transformed(rot_z(yaw), (x, y, 0.0)))
            objs.append(np.full(len(agents[i].mesh.triangles), i, np.int32))
        m = Mesh.concat(parts)
        self.static = _make_scene(m.vertices, m.triangles, np.concatenate(objs), m.color, m.material)
        # moving agents: local vertices concatenated once, posed per instant
        dyn = [agents[i].mesh for i in self.dynamic_idx]
        self._dyn_mesh = Mesh.concat(dyn)
        self._dyn_vert_agent = np.concatenate(
            [np.full(len(m.vertices), k, np.int64) for k, m in enumerate(dyn)] or [np.zeros(0, np.int64)]
        )
        self._dyn_tri_agent = np.concatenate(
            [np.full(len(m.triangles), k, np.int64) for k, m in enumerate(dyn)] or [np.zeros(0, np.int64)]
        )
        self._dyn_tri_obj = self.dynamic_idx[self._dyn_tri_agent].astype(np.int32)
        self._cache_key = None
        self._cache = None
        self.cull_radius = 250.0  # moving agents farther than this from the sensor are left out

    # -- scenes -------------------------------------------------------------------------------------
    def dynamic_scene(self, t: float, centre=None) -> _Scene:
        """The moving agents posed at time ``t`` within :attr:`cull_radius` of ``centre`` (cached for the last call)."""
        key = (t, None if centre is None else tuple(np.round(centre[:2], 3)), self.cull_radius)
        if self._cache_key != key:
            poses = self.world.poses(t, self.dynamic_idx)  # (A_dyn, 3) x, y, yaw
            keep = np.ones(len(poses), bool)
            if centre is not None:
                keep = np.hypot(poses[:, 0] - centre[0], poses[:, 1] - centre[1]) < self.cull_radius
            vkeep, tkeep = keep[self._dyn_vert_agent], keep[self._dyn_tri_agent]
            new_index = np.cumsum(vkeep) - 1
            v = self._dyn_mesh.vertices[vkeep]
            p = poses[self._dyn_vert_agent[vkeep]]  # (V, 3)
            c, s = np.cos(p[:, 2]), np.sin(p[:, 2])
            verts = np.stack([c * v[:, 0] - s * v[:, 1] + p[:, 0], s * v[:, 0] + c * v[:, 1] + p[:, 1], v[:, 2]], -1)
            tris = new_index[self._dyn_mesh.triangles[tkeep]]
            self._cache = _make_scene(verts, tris, self._dyn_tri_obj[tkeep], self._dyn_mesh.color[tkeep],
                                      self._dyn_mesh.material[tkeep])  # fmt: skip
            self._cache_key = key
        return self._cache

    def cast(self, origins: np.ndarray, dirs: np.ndarray, t: float, centre: np.ndarray) -> Hits:
        """Nearest hits of rays ``origins (N, 3)`` + ``dirs (N, 3)`` (unit) at time ``t``, seen from a sensor at ``centre``."""
        import open3d as o3d

        n = len(dirs)
        rays = o3d.core.Tensor(np.concatenate([origins, dirs], 1).astype(np.float32))
        results = []
        for sc in (self.static, self.dynamic_scene(t, centre)):
            if sc.scene is not None:
                results.append((sc, sc.scene.cast_rays(rays)))
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(dirs[:, 2] < -1e-9, -origins[:, 2] / dirs[:, 2], np.inf)  # the plane z = 0
        t_all = np.stack([r["t_hit"].numpy().astype(np.float64) for _, r in results] + [t_ground])  # (S + 1, N)
        which = t_all.argmin(0)
        best_t = t_all[which, np.arange(n)]
        kind = np.where(np.isinf(best_t), 0, np.where(which == len(results), 1, 2)).astype(np.int8)
        obj = np.full(n, -1, np.int32)
        color = np.zeros((n, 3), np.float32)
        mat = np.full(n, -1, np.int16)
        normal = np.zeros((n, 3), np.float32)
        normal[:, 2] = 1.0
        refl = np.zeros(n, np.float32)
        for k, (sc, r) in enumerate(results):
            m = (which == k) & (kind == 2)
            prim = r["primitive_ids"].numpy()[m].astype(np.int64)
            obj[m] = sc.tri_obj[prim]
            color[m] = sc.tri_color[prim]
            mat[m] = sc.tri_mat[prim]
            refl[m] = REFLECTIVITY[sc.tri_mat[prim]]
            normal[m] = r["primitive_normals"].numpy()[m]
        g = kind == 1
        if g.any():
            p = origins[g, :2] + dirs[g, :2] * t_ground[g, None]
            color[g], refl[g] = ground_albedo(self.world, p)
        return Hits(best_t, kind, obj, color, refl, mat, normal)

    def occluded(self, origins: np.ndarray, dirs: np.ndarray, t: float, centre: np.ndarray) -> np.ndarray:
        """Whether each ray ``(N,)`` hits any mesh (static or moving at ``t``, culled around ``centre``): shadow rays."""
        import open3d as o3d

        rays = o3d.core.Tensor(np.concatenate([origins, dirs], 1).astype(np.float32))
        out = np.zeros(len(dirs), bool)
        for sc in (self.static, self.dynamic_scene(t, centre)):
            if sc.scene is not None:
                out |= sc.scene.test_occlusions(rays).numpy()
        return out

    def objects_along(
        self, origins: np.ndarray, dirs: np.ndarray, t: float, centre: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every (ray index, agent index) pair where a ray crosses an agent's mesh, anywhere along it."""
        import open3d as o3d

        rays = o3d.core.Tensor(np.concatenate([origins, dirs], 1).astype(np.float32))
        ray_ids, objs = [], []
        for sc in (self.static, self.dynamic_scene(t, centre)):
            if sc.scene is None:
                continue
            r = sc.scene.list_intersections(rays)
            o = sc.tri_obj[r["primitive_ids"].numpy().astype(np.int64)]
            keep = o >= 0
            ray_ids.append(r["ray_ids"].numpy().astype(np.int64)[keep])
            objs.append(o[keep].astype(np.int64))
        if not ray_ids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(ray_ids), np.concatenate(objs)

    # -- sensors ------------------------------------------------------------------------------------
    def lidar(self, global_from_lidar: np.ndarray, dirs_lidar: np.ndarray, ring: np.ndarray, t: float,
              min_range: float, max_range: float, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """One sweep: points ``(N, 5)`` float32 in the LiDAR frame (x, y, z, intensity, ring) and their agent index.

        ``boxes (M, >=7)`` are the annotated boxes at ``t`` (global): returns within :data:`BOX_EPS`
        of their boundaries are dropped.
        """
        R, o = global_from_lidar[:3, :3], global_from_lidar[:3, 3]
        dirs = dirs_lidar @ R.T  # (R, 3) global
        hits = self.cast(np.broadcast_to(o, dirs.shape), dirs, t, o)
        keep = (hits.t >= min_range) & (hits.t <= max_range)
        tt = hits.t[keep]
        pts = dirs_lidar[keep] * tt[:, None]  # (N, 3) in the LiDAR frame, exact along each beam
        cos_inc = np.abs((hits.normal[keep] * dirs[keep]).sum(1))
        intensity = np.round(255.0 * hits.refl[keep] * (0.35 + 0.65 * cos_inc))
        out = np.concatenate([pts, intensity[:, None], ring[keep, None]], 1).astype(np.float32)
        obj = hits.obj[keep]
        boxes = boxes[np.hypot(boxes[:, 0] - o[0], boxes[:, 1] - o[1]) < max_range + 15.0]  # those the sweep reaches
        if len(boxes):
            drop = near_box_boundary(transform_points(global_from_lidar, out[:, :3].astype(np.float64)), boxes)
            out, obj = out[~drop], obj[~drop]
        return out, obj

    def camera(self, global_from_cam: np.ndarray, dirs_cam: np.ndarray, width: int, height: int, t: float,
               with_kind: bool = False):  # fmt: skip
        """One image: ``rgb (H, W, 3)`` uint8, per-pixel agent index ``obj (H, W)`` (-1 none) and ray depth ``t (H, W)``;
        with ``with_kind`` also ``kind (H, W)`` int8 (0 sky, 1 ground, 2 mesh: an agent or scenery)."""
        R, o = global_from_cam[:3, :3], global_from_cam[:3, 3]
        dirs = dirs_cam @ R.T
        origins = np.broadcast_to(o, dirs.shape)
        hits = self.cast(origins, dirs, t, o)
        rgb = shade(self, hits, origins, dirs, t, o)
        out = rgb.reshape(height, width, 3), hits.obj.reshape(height, width), hits.t.reshape(height, width)
        return (*out, hits.kind.reshape(height, width)) if with_kind else out


def near_box_boundary(points: np.ndarray, boxes: np.ndarray, eps: float = BOX_EPS) -> np.ndarray:
    """``(N,)`` True where a point ``(N, 3)`` is within ``eps`` of the surface of a box ``(M, >=7)``.

    That is inside the box grown by ``eps`` but not inside the box shrunk by ``eps``. Candidate
    points per box come from a k-d tree over the points' xy (boxes are few metres wide).
    """
    from scipy.spatial import cKDTree

    out = np.zeros(len(points), bool)
    if len(points) == 0 or len(boxes) == 0:
        return out
    tree = cKDTree(points[:, :2], balanced_tree=False, compact_nodes=False)  # quick to build, queried once
    radius = np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + eps
    for k, idx in enumerate(tree.query_ball_point(boxes[:, :2], radius)):  # per box: its nearby points only
        if idx:
            p, b = points[np.asarray(idx)], boxes[k : k + 1]
            band = points_in_boxes(p, b, margin=eps)[:, 0] & ~points_in_boxes(p, b, margin=-eps)[:, 0]
            out[np.asarray(idx)] |= band
    return out


# ---------------------------------------------------------------------------------------------
# Appearance


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer cell (integer hashing, no RNG state)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _noise(xy: np.ndarray, cell: float, salt: int) -> np.ndarray:
    """Smooth value noise in [0, 1) ``(N,)``: hashed values at the corners of ``cell``-metre cells, blended."""
    f = xy / cell
    i = np.floor(f)
    a = f - i
    a = a * a * (3 - 2 * a)  # smoothstep: no visible cell edges
    ix, iy = i[:, 0], i[:, 1]
    v00, v10 = _hash01(ix, iy, salt), _hash01(ix + 1, iy, salt)
    v01, v11 = _hash01(ix, iy + 1, salt), _hash01(ix + 1, iy + 1, salt)
    return (v00 * (1 - a[:, 0]) + v10 * a[:, 0]) * (1 - a[:, 1]) + (v01 * (1 - a[:, 0]) + v11 * a[:, 0]) * a[:, 1]


# ground surfaces: albedo, LiDAR reflectivity, and how much the two noise layers modulate them
_GRASS, _WALK, _DIRT, _ROAD, _BIKE, _WHITE, _YELLOW = range(7)
_G_ALBEDO = np.array([[0.30, 0.42, 0.20], [0.66, 0.65, 0.62], [0.50, 0.40, 0.28], [0.27, 0.27, 0.28],
                      [0.23, 0.28, 0.25], [0.92, 0.92, 0.88], [0.90, 0.72, 0.15]], np.float32)  # fmt: skip
_G_REFL = np.array([0.30, 0.22, 0.24, 0.08, 0.08, 0.55, 0.55], np.float32)
_G_PATCH = np.array([0.45, 0.15, 0.35, 0.3, 0.3, 0.0, 0.0], np.float32)  # relative, 3 m patches
_G_FINE = np.array([0.10, 0.06, 0.10, 0.09, 0.09, 0.05, 0.05], np.float32)  # absolute, 25 cm grain


def ground_albedo(world: World, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo ``(N, 3)`` and LiDAR reflectivity ``(N,)`` of the ground at world points ``(N, 2)``.

    Main road lanes with markings, bike and parking lanes, curbside sidewalks with paving joints,
    the side street with its stop lines and zebra crossings, dirt in construction sites, grass.
    """
    s, d = world.road.to_road(xy)
    u, w = world.cross.to_line(xy)
    ad, aw, au = np.abs(d), np.abs(w), np.abs(u)
    side_road = aw < CROSS_HALF
    main_road = ad < CURB[0]
    road = main_road | side_road
    walk = ((ad < SIDEWALK_OUTER) | (aw < CROSS_SIDEWALK)) & ~road
    surf = np.where(road, _ROAD, np.where(walk, _WALK, _GRASS))
    for side, s0, s1, d0, d1 in world.dirt:
        surf[(np.sign(d) == side) & (s >= s0) & (s <= s1) & (ad >= d0) & (ad <= d1)] = _DIRT
    on_main = main_road & ~(side_road & (ad < CURB[0] + 1.0))  # the junction box has no lane markings
    surf[on_main & (ad >= 7.05) & (ad < PARK[0])] = _BIKE
    white = (
        (on_main & (np.abs(ad - 3.5) < 0.08) & ((s % 9.0) < 3.0))  # lane divider, dashed
        | (on_main & (np.abs(ad - 7.0) < 0.075))  # edge line
        | (on_main & (np.abs(ad - PARK[0]) < 0.06) & ((s % 3.0) < 1.5))  # parking lane, dashed
        | (side_road & (ad >= CURB[0]) & (ad < SIDEWALK_OUTER) & (((w + 20.0) % 1.0) < 0.5))  # zebra crossings
    )
    u_stop = SIDEWALK_OUTER / max(abs(np.sin(world.cross.heading - world.road.pose(world.cross_s)[2])), 0.5) + 2.5
    white |= side_road & (au > u_stop) & (au < u_stop + 0.45) & (np.sign(w) != np.sign(u)) & (aw > 0.1)  # stop lines
    yellow = (on_main & (ad > 0.08) & (ad < 0.2)) | (
        side_road & (ad >= SIDEWALK_OUTER) & (aw < 0.07) & ((u % 6.0) < 3.0)
    )
    surf[white] = _WHITE
    surf[yellow] = _YELLOW
    fine = _noise(xy, 0.25, 1)
    patch = _noise(xy, 3.0, 2)
    shade_ = 1.0 + _G_PATCH[surf] * (patch - 0.5)
    tiles = (surf == _WALK) & ((np.abs(((s + 0.5) % 1.0) - 0.5) < 0.02) | (np.abs(((d + 0.5) % 1.0) - 0.5) < 0.02))
    shade_ = np.where(tiles, shade_ * 0.82, shade_)
    col = _G_ALBEDO[surf] * shade_[:, None] + (_G_FINE[surf] * (fine - 0.5))[:, None]
    return np.clip(col, 0, 1).astype(np.float32), _G_REFL[surf]


def sky(dirs: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Sky colour ``(N, 3)`` for view directions ``(N, 3)``: a horizon-to-zenith gradient and a sun glow."""
    up = np.clip(dirs[:, 2], 0, 1)[:, None] ** 0.6
    c = SKY_HORIZON * (1 - up) + SKY_ZENITH * up
    glow = np.clip((dirs @ sun.astype(dirs.dtype)), 0, 1)[:, None] ** 64
    return np.clip(c + 0.5 * glow, 0, 1).astype(np.float32)


def shade(
    renderer: Renderer, hits: Hits, origins: np.ndarray, dirs: np.ndarray, t: float, centre: np.ndarray
) -> np.ndarray:
    """``(N, 3)`` uint8 colours of camera rays from their hits (see the module docstring)."""
    world = renderer.world
    sun = world.sun.astype(np.float32)
    d = dirs.astype(np.float32)
    hit = hits.kind > 0
    dist = np.where(hit, hits.t, 0.0)
    p = origins + dirs * dist[:, None]  # (N, 3) float64: window and shadow positions need it
    nrm = hits.normal * np.where((hits.normal * d).sum(1) > 0, -1.0, 1.0).astype(np.float32)[:, None]  # face the viewer
    albedo = hits.color
    facade = np.nonzero(hit & (hits.mat == MATERIAL_INDEX["facade"]) & (np.abs(nrm[:, 2]) < 0.5))[0]
    if len(facade):
        albedo = albedo.copy()
        albedo[facade] = _facade(p[facade], nrm[facade], albedo[facade])
    lambert = np.clip(nrm @ sun, 0, 1)
    lit = np.nonzero(hit & (lambert > 0))[0]
    if len(lit):
        o = p[lit] + nrm[lit] * 0.03
        lambert[lit[renderer.occluded(o, np.broadcast_to(world.sun, o.shape), t, centre)]] = 0.0
    light = np.where(hits.mat == MATERIAL_INDEX["light"], np.float32(1.0), AMBIENT + (1 - AMBIENT) * lambert)
    col = albedo * light[:, None]
    glass = np.nonzero(hits.mat == MATERIAL_INDEX["glass"])[0]
    if len(glass):  # a hint of reflected sky
        dg, ng = d[glass], nrm[glass]
        col[glass] = col[glass] * 0.75 + 0.3 * sky(dg - 2 * (dg * ng).sum(1, keepdims=True) * ng, world.sun)
    haze = np.exp(-dist / HAZE_DIST).astype(np.float32)[:, None]
    col = col * haze + SKY_HORIZON * (1 - haze)
    miss = np.nonzero(~hit)[0]
    col[miss] = sky(d[miss], world.sun)
    return (np.clip(col, 0, 1) * 255 + 0.5).astype(np.uint8)


def _facade(p: np.ndarray, nrm: np.ndarray, wall: np.ndarray) -> np.ndarray:
    """Walls with a grid of windows (3.2 m bays, 3.3 m storeys), some lit, drawn from the hit position."""
    along = p[:, 0] * -nrm[:, 1] + p[:, 1] * nrm[:, 0]
    fa, fz = (along / 3.2) % 1.0, ((p[:, 2] - 0.6) / 3.3) % 1.0
    window = (fa > 0.22) & (fa < 0.78) & (fz > 0.28) & (fz < 0.82) & (p[:, 2] > 0.9)
    bay = np.floor(along / 3.2)
    storey = np.floor((p[:, 2] - 0.6) / 3.3)
    r = _hash01(bay, storey, 7)
    glass = np.stack([0.16 + 0.1 * r, 0.2 + 0.1 * r, 0.26 + 0.1 * r], -1)
    glass[r > 0.93] = (0.85, 0.78, 0.55)  # a lit window here and there
    out = wall.copy()
    out[window] = glass[window]
    return out


# ---------------------------------------------------------------------------------------------
# Visibility


def visible_fractions(renderer: Renderer, cams: list[dict], agent_idx: np.ndarray, stride: int = 2) -> np.ndarray:
    """Fraction ``(len(agent_idx),)`` of each agent's pixels that are visible, over all cameras.

    Each camera ``dict`` holds ``global_from_cam``, ``K``, ``width``, ``height``, ``t``, ``dirs``
    (``(H*W, 3)`` camera-frame unit rays) and ``obj`` (``(H, W)`` its rendered agent indices). An
    agent's pixels are the rays (every ``stride``-th pixel in both directions) that cross its mesh
    anywhere; visible ones are those whose first hit is that agent. An agent seen by no camera
    gets 0. This is nuScenes' "fraction of the annotation visible in the 6 images", up to the
    images' crop.
    """
    n_all = len(renderer.world.agents)
    crossed = np.zeros(n_all, np.int64)
    seen = np.zeros(n_all, np.int64)
    for cam in cams:
        h, w = cam["height"], cam["width"]
        boxes = renderer.world.boxes(cam["t"], agent_idx)
        corners = box_corners(boxes).reshape(-1, 3)  # (M*8, 3)
        cam_from_global = invert_transform(cam["global_from_cam"])
        uv, depth, _ = project_points(corners, cam_from_global, cam["K"], (w, h))
        uv, depth = uv.reshape(-1, 8, 2), depth.reshape(-1, 8)
        mask = np.zeros((h, w), bool)
        for k in range(len(boxes)):  # rectangles of the projected boxes: where rays can cross an agent
            if (depth[k] <= 0.1).all():
                continue
            if (depth[k] <= 0.1).any():  # straddles the image plane: any pixel may see it
                mask[:] = True
                break
            u0, v0 = np.floor(uv[k].min(0)).astype(int)
            u1, v1 = np.ceil(uv[k].max(0)).astype(int)
            mask[max(v0, 0) : max(min(v1 + 1, h), 0), max(u0, 0) : max(min(u1 + 1, w), 0)] = True
        sub = np.zeros((h, w), bool)
        sub[::stride, ::stride] = True
        pix = np.nonzero((mask & sub).ravel())[0]
        if len(pix) == 0:
            continue
        R, o = cam["global_from_cam"][:3, :3], cam["global_from_cam"][:3, 3]
        dirs = cam["dirs"][pix] @ R.T
        ray, obj = renderer.objects_along(np.broadcast_to(o, dirs.shape), dirs, cam["t"], o)
        pairs = np.unique(ray * n_all + obj)
        np.add.at(crossed, pairs % n_all, 1)
        first = cam["obj"].ravel()[pix]
        first = first[first >= 0]
        np.add.at(seen, first, 1)
    frac = np.where(crossed > 0, seen / np.maximum(crossed, 1), 0.0)
    return np.clip(frac[agent_idx], 0.0, 1.0)
