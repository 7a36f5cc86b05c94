"""The synthetic world's layout and motion: tight meshes, no collisions, smooth physical paths."""

from __future__ import annotations

import numpy as np
import pytest

from bevlabels.geometry import BOX_DIM, box_corners, wrap_angle
from bevlabels.synthetic import catalog
from bevlabels.synthetic.meshes import INSET
from bevlabels.synthetic.world import Fixed, Follow, build_world

DURATION = 4.5  # seconds: 10 keyframes, enough for agents to move and the side street to brake


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0, scene_number=103, duration=DURATION)


def test_same_arguments_same_world(world):
    again = build_world(seed=0, scene_number=103, duration=DURATION)
    np.testing.assert_array_equal(world.boxes(1.3), again.boxes(1.3))
    np.testing.assert_array_equal(world.scenery.vertices, again.scenery.vertices)
    other = build_world(seed=1, scene_number=103, duration=DURATION)
    assert other.boxes(0.0).shape != world.boxes(0.0).shape or not np.allclose(other.boxes(0.0), world.boxes(0.0))


def test_every_class_appears_static_and_moving(world):
    kinds = {(a.cls, a.static) for a in world.agents}
    assert {c for c, _ in kinds} == set(catalog.CLASSES)
    for cls in ("car", "truck", "pedestrian", "motorcycle", "bicycle"):
        assert (cls, True) in kinds and (cls, False) in kinds, cls
    for cls in ("trailer", "bus", "construction_vehicle", "traffic_cone", "barrier"):
        assert (cls, True) in kinds, cls


def test_meshes_fill_their_box_with_a_small_inset(world):
    for a in world.agents:
        L, W, H = a.size
        lo, hi = a.mesh.bounds()
        np.testing.assert_allclose(lo, [-L / 2 + INSET, -W / 2 + INSET, INSET], atol=1e-9, err_msg=a.cls)
        np.testing.assert_allclose(hi, [L / 2 - INSET, W / 2 - INSET, H - INSET], atol=1e-9, err_msg=a.cls)


def test_sizes_are_each_class_typical(world):
    for a in world.agents:
        mean = np.array(catalog.MEAN_SIZE[a.cls])
        ratio = np.array(a.size) / mean
        assert np.all(ratio > 0.55) and np.all(ratio < 1.15), (a.cls, a.size)


def _ego_box(world, t):
    x, y, yaw = (float(v) for v in world.ego_pose(t))
    c, s = np.cos(yaw), np.sin(yaw)
    # the ego body (a Renault Zoe): 4.1 m long, its centre 1.05 m ahead of the rear axle
    return np.array([x + 1.05 * c, y + 1.05 * s, 0.8, 4.1, 1.8, 1.6, yaw, 0, 0])


def test_no_two_boxes_ever_overlap(world):
    from shapely import STRtree
    from shapely.geometry import Polygon

    for t in np.linspace(-0.05, DURATION, 31):
        boxes = np.concatenate([world.boxes(t), _ego_box(world, t)[None]])
        assert boxes.shape[1] == BOX_DIM
        polys = [Polygon(c) for c in box_corners(boxes)[:, [0, 1, 5, 4], :2]]  # footprints
        tree = STRtree(polys)
        a, b = tree.query(polys, predicate="intersects")
        for i, j in zip(a, b):
            if i < j:
                area = polys[i].intersection(polys[j]).area
                names = [world.agents[k].cls if k < len(world.agents) else "ego" for k in (i, j)]
                assert area < 1e-6, f"t={t:.2f}: {names} overlap by {area:.3f} m2"


def test_no_scenery_inside_any_box(world):
    from bevlabels.geometry import points_in_boxes

    v = world.scenery.vertices
    for t in np.linspace(0, DURATION, 10):
        inside = points_in_boxes(v, world.boxes(t), margin=0.01)  # (V, M)
        assert not inside.any(), f"t={t}: scenery vertex inside {world.agents[int(np.argwhere(inside)[0, 1])].cls}"


def test_paths_are_smooth_and_physical(world):
    dt = 0.05
    ts = np.arange(0.0, DURATION + 1e-9, dt)
    poses = np.stack([world.poses(t) for t in ts])  # (T, A, 3)
    moving = np.array([not a.static for a in world.agents])
    xy, yaw = poses[:, moving, :2], poses[:, moving, 2]
    vel = np.diff(xy, axis=0) / dt  # (T-1, A, 2)
    speed = np.linalg.norm(vel, axis=-1)
    acc = np.linalg.norm(np.diff(vel, axis=0), axis=-1) / dt
    yaw_rate = np.abs(wrap_angle(np.diff(yaw, axis=0))) / dt
    assert speed.max() < 17.0, f"max speed {speed.max():.1f} m/s"
    assert acc.max() < 4.0, f"max acceleration {acc.max():.2f} m/s2 (braking is at most 2.6)"
    assert yaw_rate.max() < 0.3, f"max yaw rate {yaw_rate.max():.2f} rad/s"
    # heading follows the direction of travel
    heading = np.arctan2(vel[..., 1], vel[..., 0])
    mid_yaw = yaw[:-1] + wrap_angle(yaw[1:] - yaw[:-1]) / 2
    fast = speed > 0.5
    assert np.abs(wrap_angle(heading - mid_yaw))[fast].max() < np.deg2rad(2.0)
    # a pedestrian walks, a car drives
    cls = np.array([a.cls for a in world.agents])[moving]
    assert speed[:, cls == "pedestrian"].max() < 2.0
    assert np.median(speed[:, cls == "car"]) > 5.0


def test_the_ego_drives_through_the_scene(world):
    x0, y0, _ = world.ego_pose(0.0)
    x1, y1, _ = world.ego_pose(DURATION)
    assert 6.0 * DURATION - 0.1 < np.hypot(x1 - x0, y1 - y0) < 10.0 * DURATION + 0.1
    assert isinstance(world.ego, Follow)


def test_side_street_traffic_brakes_and_waits(world):
    braking = [a for a in world.agents if isinstance(a.motion, Follow) and a.motion.path is world.cross
               and hasattr(a.motion.profile, "t_brake")]  # fmt: skip
    assert all(isinstance(a.motion, (Fixed, Follow)) for a in world.agents)
    for a in braking:  # never reverses, never passes its stop line
        s = a.motion.s(np.linspace(0, DURATION + 30, 200)) * a.motion.direction
        assert np.all(np.diff(s) >= -1e-9)
