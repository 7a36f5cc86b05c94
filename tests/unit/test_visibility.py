"""The label stage's visibility tests against brute-force references, and the leak they cause or prevent.

The hand-built scene of the leak: a car 8-12 m ahead of one camera, seen as two LiDAR rings on its
front face (16 px apart, as a 32-beam LiDAR's rings are on an object at that range), and a dense wall of
points 20 m ahead, entirely behind the car's silhouette. Every patch of the car's silhouette carries the
car class. A 4 px z-buffer lets the wall show through the gap between the rings and take the car's
feature (the leak); the car's box as an occluder hides the wall. With no wall (an empty ring gap)
nothing leaks, and the box takes none of the car's own points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevlabels import geometry as g
from bevlabels.grid import GridSpec
from bevlabels.leak import OracleDirections, keyframe_leak
from bevlabels.lidar.project import (
    _SPLAT_LEVELS,
    CameraSet,
    VisibilityConfig,
    box_occluded,
    camera_hits,
    hpr_visible,
    pool_bev,
    splat_visible,
)

R_EGO_FROM_CAM = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # looks along ego +x
WIDTH, HEIGHT, F, PATCH = 256, 128, 128.0, 4
CLASSES = ("sky", "ground", "scenery", "car", "pedestrian")
ORACLE = OracleDirections(CLASSES, np.eye(5, dtype=np.float32), n_stuff=3)
CAR = np.array([[10.0, 0.0, 0.8, 4.0, 2.0, 1.6, 0.0, 0.0, 0.0]])  # front face at x = 8
GRID = GridSpec((0.0, 32.0, 0.5), (-8.0, 8.0, 0.5), (-2.0, 4.0, 6.0))


def front_camera() -> CameraSet:
    K = np.array([[F, 0, WIDTH / 2], [0, F, HEIGHT / 2], [0, 0, 1]])
    cam_from_ego = g.invert_transform(g.make_transform(R_EGO_FROM_CAM, [0.0, 0.0, 1.5]))
    return CameraSet(cam_from_ego[None], K[None], np.array([[WIDTH, HEIGHT]]))


def class_features() -> torch.Tensor:
    """``(1, 5, h, w)`` one-hot class per patch: car inside the car's silhouette, ground below, else scenery."""
    cams = front_camera()
    corners = g.box_corners(CAR)[0]
    uv, _, _ = g.project_points(corners, cams.cam_from_ego[0], cams.K[0], (WIDTH, HEIGHT))
    (u0, v0), (u1, v1) = uv.min(0), uv.max(0)
    h, w = HEIGHT // PATCH, WIDTH // PATCH
    vc, uc = np.meshgrid((np.arange(h) + 0.5) * PATCH, (np.arange(w) + 0.5) * PATCH, indexing="ij")
    cls = np.where((uc >= u0) & (uc <= u1) & (vc >= v0) & (vc <= v1), 3, np.where(vc > v1, 1, 2))
    return torch.from_numpy(np.eye(5, dtype=np.float32)[cls].transpose(2, 0, 1))[None]


def scene(wall: bool) -> np.ndarray:
    ys = np.arange(-0.95, 0.96, 0.05)
    rings = [np.column_stack([np.full(ys.size, 8.0), ys, np.full(ys.size, z)]) for z in (0.3, 1.3)]
    gx, gy = np.meshgrid(np.arange(3.0, 6.0, 0.1), np.arange(-1.0, 1.0, 0.1))
    ground = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)])  # in front of the car: seen
    parts = [*rings, ground]
    if wall:
        wy, wz = np.meshgrid(np.arange(-2.0, 2.0, 0.05), np.arange(0.2, 1.4, 0.05))
        parts.append(np.column_stack([np.full(wy.size, 20.0), wy.ravel(), wz.ravel()]))
    return np.concatenate(parts)


def leak_of(points: np.ndarray, cfg: VisibilityConfig):
    pooled = pool_bev(points, class_features(), front_camera(), GRID, cfg, boxes=CAR)
    return pooled, keyframe_leak(pooled.feat.numpy(), pooled.count.numpy(), CAR, ["car"], GRID, ORACLE)


def test_a_wall_behind_a_ringed_car_leaks_through_a_zbuffer_not_through_the_box():
    points = scene(wall=True)
    n_wall = int((points[:, 0] == 20.0).sum())
    wall_cells = np.unique(GRID.flat_index(torch.from_numpy(points[points[:, 0] == 20.0, :2]).float())[0].numpy())
    pooled, z = leak_of(points, VisibilityConfig(method="zbuffer", zbuffer_px=4, box_occluders=False))
    # The wall shows through the ring gap: every wall cell is occupied, and takes the car's class.
    assert (pooled.n_visible_cams[-n_wall:] > 0).sum() > n_wall // 2
    assert pooled.count.reshape(-1)[wall_cells].gt(0).all()
    assert z.leaked == len(wall_cells) and z.leaked_behind == len(wall_cells)
    ground_cells = 6 * 4  # x 3-6 m, y -1-1 m in 0.5 m cells: seen, ground class, outside the car
    assert z.outside == ground_cells + len(wall_cells) and z.leak == len(wall_cells) / z.outside
    pooled_b, b = leak_of(points, VisibilityConfig(method="zbuffer", zbuffer_px=4, box_occluders=True, box_floor=0.0))
    assert (pooled_b.n_visible_cams[-n_wall:] == 0).all()  # all of the wall is behind the box
    assert b.leaked == 0 and b.leak == 0.0
    assert b.outside == z.outside - len(wall_cells)  # the ground in front is untouched
    assert (b.inside, b.own) == (z.inside, z.own) and b.own == b.inside > 0  # the car keeps its cells and class


def test_an_empty_ring_gap_leaks_nothing_and_the_box_keeps_the_objects_own_points():
    points = scene(wall=False)
    pz, z = leak_of(points, VisibilityConfig(method="zbuffer", zbuffer_px=4, box_occluders=False))
    pb, b = leak_of(points, VisibilityConfig(method="zbuffer", zbuffer_px=4, box_occluders=True, box_floor=0.0))
    assert z.leaked == 0 and b.leaked == 0
    assert torch.equal(pz.n_visible_cams, pb.n_visible_cams)  # the car's rings are inside its box: none hidden
    assert torch.allclose(pz.feat, pb.feat)


def test_box_occluded_matches_sampling_the_segment():
    rng = np.random.default_rng(0)
    boxes = np.column_stack(
        [rng.uniform(-8, 8, (6, 2)), rng.uniform(0, 1, 6), rng.uniform(0.5, 4, (6, 3)), rng.uniform(-3, 3, 6)]
    )
    origin = np.array([0.3, -0.2, 1.5])
    pts = np.column_stack([rng.uniform(-12, 12, (400, 2)), rng.uniform(-0.5, 2.5, 400)])
    margin = rng.uniform(0, 0.3, 6)
    got = box_occluded(
        torch.from_numpy(pts), torch.from_numpy(origin), torch.from_numpy(boxes), torch.from_numpy(margin)
    )
    # Reference: sample the open segment densely; hidden when some sample before the point is inside a box
    # that does not hold the point itself (the slab test's t_in >= 0 also drops boxes holding the origin).
    grown = boxes.copy()
    grown[:, 3:6] += 2 * margin[:, None]
    ts = np.linspace(0.0, 1.0, 2001)[:-1]
    ref = np.zeros(len(pts), bool)
    holds_origin = g.points_in_boxes(origin[None], grown)[0]
    for i, p in enumerate(pts):
        seg = origin + ts[:, None] * (p - origin)
        through = g.points_in_boxes(seg, grown).any(0) & ~g.points_in_boxes(p[None], grown)[0] & ~holds_origin
        ref[i] = through.any()
    agree = got.numpy() == ref
    assert agree.mean() > 0.99, f"{(~agree).sum()} of {len(pts)} disagree"  # sampling misses grazing rays
    assert ref.sum() > 20  # the case exercises occlusion


def test_splat_visible_matches_a_per_point_loop():
    rng = np.random.default_rng(1)
    n, size, cell = 300, (64, 48), 4
    cfg = VisibilityConfig(method="splat", zbuffer_px=cell)
    uv = torch.from_numpy(np.column_stack([rng.uniform(0, 64, n), rng.uniform(0, 48, n)]))
    depth = torch.from_numpy(rng.uniform(2, 30, n))
    side = torch.from_numpy(rng.uniform(cell, 60, n))
    got = splat_visible(uv, depth, side, size, cfg).numpy()
    cx, cy = (uv[:, 0] // cell).long().numpy(), (uv[:, 1] // cell).long().numpy()
    half = np.floor(side.numpy() / (2 * cell)).astype(int)
    levels = np.array(_SPLAT_LEVELS)
    reach = levels[np.searchsorted(levels, np.minimum(half, levels[-1]))]
    ref = np.zeros(n, bool)
    for i in range(n):
        covers = (np.abs(cx - cx[i]) <= reach) & (np.abs(cy - cy[i]) <= reach)  # j's footprint over i's cell
        near = depth.numpy()[covers].min()
        ref[i] = depth[i].item() <= near + max(cfg.abs_tol, cfg.rel_tol * near)
    np.testing.assert_array_equal(got, ref)


def test_splat_hides_a_wall_through_the_ring_gap_its_footprint_spans():
    points = scene(wall=True)
    wall = torch.from_numpy(points[:, 0] == 20.0)
    pts = torch.from_numpy(points).float()
    # The rings are 1 m apart at 8 m: 7.1 degrees. A footprint of that ring gap (16 px) closes the gap ...
    hits = camera_hits(
        pts, front_camera(), VisibilityConfig(method="splat", ring_gap_deg=7.2, zbuffer_px=4, box_occluders=False)
    )[0]
    assert not wall[hits.index].any()
    rings = torch.from_numpy(points[:, 0] == 8.0)
    assert rings[hits.index].sum() == rings.sum()  # ... keeps every ring point, but thins the ground in front:
    ground = torch.from_numpy(points[:, 2] == 0.0)
    assert 0 < ground[hits.index].sum() < ground.sum()  # a near ground point's footprint covers farther ground
    # ... a footprint of nuScenes' 1.33 degrees (3 px here) does not.
    hits = camera_hits(
        pts, front_camera(), VisibilityConfig(method="splat", ring_gap_deg=1.33, zbuffer_px=4, box_occluders=False)
    )[0]
    assert wall[hits.index].sum() > wall.sum() // 2


def test_hpr_hides_the_far_side_of_a_sphere():
    pytest.importorskip("open3d")
    rng = np.random.default_rng(2)
    d = rng.normal(size=(2000, 3))
    sphere = d / np.linalg.norm(d, axis=1, keepdims=True) + np.array([0.0, 0.0, 10.0])  # 10 m ahead
    vis = hpr_visible(torch.from_numpy(sphere), VisibilityConfig(method="hpr")).numpy()
    near_side = sphere[:, 2] < 9.7
    far_side = sphere[:, 2] > 10.3
    assert vis[near_side].mean() > 0.95 and vis[far_side].mean() < 0.05


def test_box_floor_drops_the_ground_under_an_object_and_clearance_opens_the_gap_below_it():
    car = torch.from_numpy(CAR)  # x 8-12, y -1-1, z 0-1.6; the camera at (0, 0, 1.5)
    pts = torch.tensor(
        [
            [9.0, 0.0, 0.05],  # 0: a ground return in the footprint; its ray is 0.21 m high at the front face
            [11.5, 0.5, 0.1],  # 1: another, far side; its ray is 0.53 m high at the front face
            [8.1, 0.9, 0.45],  # 2: an object point above the floor; its ray is 0.46 m high at the front face
            [16.0, 0.0, 0.0],  # 3: ground behind the car; its ray is 0.75 m high at the front face
        ]
    )

    def seen(**kw):
        return camera_hits(pts, front_camera(), VisibilityConfig(zbuffer_px=1, **kw), car)[0].index.tolist()

    assert seen(box_floor=0.3) == [2]  # the floor drops 0 and 1; 3 is behind the solid box
    assert seen(box_floor=0.0) == [0, 1, 2]  # without a floor the ground in the footprint is inside the box: seen
    # Only the part above 0.5 m is solid: rays below it at the front face pass (0, 2); 1 enters the solid part
    # and leaves it through its underside before reaching the point; 3 enters it and leaves it behind.
    assert seen(box_floor=0.0, box_clearance=0.5) == [0, 2]
    assert seen(box_floor=0.0, box_clearance=0.9) == [0, 1, 2, 3]  # 0.9 m: every ray passes under the body


def test_box_occluders_need_the_boxes():
    with pytest.raises(ValueError, match="box_occluders"):
        pool_bev(scene(False), class_features(), front_camera(), GRID, VisibilityConfig(box_occluders=True))
    with pytest.raises(ValueError, match="visibility.method"):
        VisibilityConfig(method="raycast")


def test_image_rectangles_select_every_occluding_pair():
    """box_candidates' (point, box) pairs give box_occluded the answer of testing every pair."""
    from bevlabels.lidar.project import box_candidates

    rng = np.random.default_rng(3)
    boxes = torch.from_numpy(
        np.column_stack(
            [rng.uniform(4, 30, 12), rng.uniform(-10, 10, 12), rng.uniform(0.5, 1.5, 12)]
            + [rng.uniform(0.5, 5, (12, 3)), rng.uniform(-3, 3, 12)]
        )
    )
    boxes[0, :3] = torch.tensor([0.5, 0.0, 1.0])  # one box around the camera's plane: the whole image
    cams = front_camera()
    pts = torch.from_numpy(
        np.column_stack([rng.uniform(1, 40, 5000), rng.uniform(-15, 15, 5000), rng.uniform(0, 3, 5000)])
    )
    uv, _, mask = g.project_points(pts, cams.cam_from_ego[0], cams.K[0], (WIDTH, HEIGHT), 0.5)
    pts, uv = pts[mask], uv[mask]
    cam_from_ego = torch.as_tensor(cams.cam_from_ego[0])
    origin = torch.linalg.inv(cam_from_ego)[:3, 3]
    margin = torch.zeros(len(boxes), dtype=torch.float64)
    dense = box_occluded(pts, origin, boxes, margin)
    pairs = box_candidates(uv, boxes, cam_from_ego, cams.K[0], 0.0, 0.5)
    assert len(pairs[0]) < len(pts) * len(boxes) / 2  # the rectangles prune
    assert torch.equal(box_occluded(pts, origin, boxes, margin, pairs), dense) and dense.sum() > 50
