"""Scene accumulation on a hand-built world: a static wall, a car driving past it, an ego moving forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bevlabels import geometry as g
from bevlabels.datasets.base import Boxes, DriveDataset, Frame, LidarSweep
from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene, voxel_dedup

SWEEP_HZ, KEY_EVERY = 20, 10  # 20 Hz sweeps, a keyframe every 10th (2 Hz)
CAR_LWH = np.array([4.0, 2.0, 1.6])
CAR_V = np.array([0.0, 5.0])  # m/s along global +y
EGO_V = 2.0  # m/s along global +x


def car_box_global(t: float) -> np.ndarray:
    box = np.zeros(9)
    box[:3] = [15.0, -10.0 + CAR_V[1] * t, 0.8]
    box[g.L : g.H + 1] = CAR_LWH
    box[g.YAW] = np.pi / 2  # heading along +y
    box[g.VX : g.VY + 1] = CAR_V
    return box


class HandWorld(DriveDataset):
    """One scene, no files: points are generated per sweep in the lidar frame (= ego frame here)."""

    name = "hand"
    classes = ("car",)
    root = Path("/nonexistent")

    def __init__(self, n_keyframes=4, car_from_key=0):
        self.n_sweeps = (n_keyframes - 1) * KEY_EVERY + 1
        self.car_from_key = car_from_key  # the car is annotated only from this keyframe on
        rng = np.random.default_rng(0)
        # Static wall: the plane x = 30 (global), y in [-20, 20], z in [0, 3].
        self.wall = np.column_stack([np.full(4000, 30.0), rng.uniform(-20, 20, 4000), rng.uniform(0, 3, 4000)])

    def _pose(self, i: int) -> np.ndarray:
        return g.make_transform(np.eye(3), [EGO_V * i / SWEEP_HZ, 0.0, 0.0])

    def sweeps(self, scene):
        return [
            LidarSweep(f"sw{i}", Path(f"sw{i}"), np.eye(4), self._pose(i), int(i * 1e6 / SWEEP_HZ), i % KEY_EVERY == 0)
            for i in range(self.n_sweeps)
        ]

    def load_points(self, sweep):
        i = int(sweep.token[2:])
        t = i / SWEEP_HZ
        b = car_box_global(t)
        # Each sweep hits other spots of the car (as a spinning LiDAR does), all inside its box.
        car_local = np.random.default_rng(i).uniform(-0.5, 0.5, size=(800, 3)) * CAR_LWH * 0.98
        car = g.transform_points(g.make_transform(g.rot_z(b[g.YAW]), b[:3]), car_local)
        pts_global = np.concatenate([self.wall, car])
        pts = g.transform_points(g.invert_transform(self._pose(i)), pts_global)
        return np.column_stack([pts, np.ones(len(pts)), np.zeros(len(pts))]).astype(np.float32)

    def scenes(self, split=None):
        return ["s0"]

    def keyframes(self, scene):
        frames = []
        sweeps = self.sweeps(scene)
        for k in range(0, self.n_sweeps, KEY_EVERY):
            sw = sweeps[k]
            t = k / SWEEP_HZ
            if k // KEY_EVERY >= self.car_from_key:
                box_ego = g.transform_boxes(g.invert_transform(sw.global_from_ego), car_box_global(t)[None])
                boxes = Boxes(box_ego, ("vehicle.car",), ("car",), ("car0",), np.array([800]))
            else:
                boxes = Boxes.empty()
            frames.append(Frame(f"k{k}", "s0", k // KEY_EVERY, sw.timestamp, (), sw, (), boxes))
        return frames


@pytest.mark.parametrize("window", [None, 0.6])
def test_dynamic_points_follow_their_box_and_static_points_stay_put(window):
    ds = HandWorld()
    cfg = AccumulationConfig(time_window=window, min_range=0.0, voxel_size=0.02)
    clouds = list(accumulate_scene(ds, "s0", cfg))
    assert len(clouds) == 4
    for cloud in clouds:
        dyn = cloud.points[cloud.box_index == 0, :3]
        # The car's points of many sweeps, all re-placed at this keyframe's box: inside it.
        inside = g.points_in_boxes(dyn, cloud.frame.boxes.boxes)[:, 0]
        assert len(dyn) > 800 and inside.mean() >= 0.99
        # Static points are the wall only (no smeared car), at x = 30 - ego x in this ego frame.
        static = cloud.points[cloud.box_index < 0, :3]
        ego_x = cloud.frame.global_from_ego[0, 3]
        np.testing.assert_allclose(static[:, 0], 30.0 - ego_x, atol=1e-4)


def test_whole_scene_accumulates_more_than_a_window():
    ds = HandWorld(n_keyframes=5)
    whole = list(accumulate_scene(ds, "s0", AccumulationConfig(min_range=0.0, voxel_size=0.02)))
    narrow = list(accumulate_scene(ds, "s0", AccumulationConfig(time_window=0.1, min_range=0.0, voxel_size=0.02)))
    # Same wall points every sweep: dedup makes static counts equal; the car's cloud is one sweep's
    # points in a narrow window (3 sweeps: t-0.1..t+0.1 at 20 Hz) but every sweep's when whole.
    assert whole[2].n_dynamic > narrow[2].n_dynamic >= 800
    assert whole[2].n_static == narrow[2].n_static


@pytest.mark.parametrize("window", [None, 0.6])
def test_static_only_accumulation_keeps_each_objects_own_sweep(window):
    """dynamic=False (DualViewDistill's Table VIII): the same static map, the car from its keyframe sweep alone."""
    ds = HandWorld()
    kw = dict(time_window=window, min_range=0.0, voxel_size=0.02)
    both = list(accumulate_scene(ds, "s0", AccumulationConfig(**kw)))
    static_only = list(accumulate_scene(ds, "s0", AccumulationConfig(**kw, dynamic=False)))
    for a, b in zip(both, static_only):
        np.testing.assert_array_equal(a.points[a.box_index < 0], b.points[b.box_index < 0])
        own = b.points[b.box_index == 0, :3]
        assert 700 <= len(own) <= 800 < a.n_dynamic  # one sweep's car points (dedup may merge a few)
        assert g.points_in_boxes(own, b.frame.boxes.boxes)[:, 0].mean() >= 0.99
        # exactly the keyframe sweep's points inside the box, moved into the keyframe's ego frame
        key = g.transform_points(b.frame.key_ego_from_lidar(b.frame.lidar), ds.load_points(b.frame.lidar)[:, :3])
        mine = key[g.points_box_index(key, b.frame.boxes.boxes) == 0]
        from scipy.spatial import cKDTree

        assert cKDTree(mine).query(own)[0].max() < 1e-4 and len(own) >= len(mine) - 5  # those points, dedup aside


@pytest.mark.parametrize("window", [None, 0.6])
@pytest.mark.parametrize("dynamic", [True, False])
def test_the_torch_device_path_equals_the_numpy_reference(window, dynamic):
    """accumulate_scene(device=...) (issue 15: every part on the configured device) gives the reference's clouds."""
    import torch

    ds = HandWorld()
    cfg = AccumulationConfig(time_window=window, min_range=0.0, voxel_size=0.05, dynamic=dynamic, dedup_every=7)
    ref = list(accumulate_scene(ds, "s0", cfg))
    dev = list(accumulate_scene(ds, "s0", cfg, device="cpu"))
    assert len(ref) == len(dev) == 4
    for a, b in zip(ref, dev):
        assert isinstance(b.points, torch.Tensor) and b.points.dtype == torch.float32
        assert b.box_index.dtype == torch.int32 and a.n_dynamic > 0
        np.testing.assert_array_equal(b.box_index.numpy(), a.box_index)  # same points kept, in the same order
        np.testing.assert_allclose(b.points.numpy(), a.points, atol=1e-5)


def test_torch_voxel_dedup_keeps_the_same_first_points():
    import torch

    rng = np.random.default_rng(3)
    pts = rng.uniform(-5, 5, size=(5000, 4))
    extra = np.arange(5000)
    ref = voxel_dedup(pts, 0.5, extra)
    got = voxel_dedup(torch.as_tensor(pts), 0.5, torch.as_tensor(extra))
    np.testing.assert_array_equal(got[1].numpy(), ref[1])
    assert len(ref[1]) < 5000  # some voxels held several points


def test_instance_absent_at_a_keyframe_contributes_nothing():
    ds = HandWorld(car_from_key=2)  # the car is annotated only at keyframes 2 and 3
    clouds = list(accumulate_scene(ds, "s0", AccumulationConfig(min_range=0.0, voxel_size=0.02)))
    assert clouds[0].n_dynamic == 0 and clouds[1].n_dynamic == 0
    assert clouds[2].n_dynamic > 0 and clouds[3].n_dynamic > 0


def test_voxel_dedup_keeps_first_point_per_voxel_in_order():
    pts = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.3, 0, 0], [0.04, 0.0, 0.0], [-0.01, 0, 0]])
    out, idx = voxel_dedup(pts, 0.1, np.arange(5))
    assert idx.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(out, pts[[0, 2, 4]])
