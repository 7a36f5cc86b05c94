"""The label stage and the camera data module on the AV2-format synthetic world (``pipelines.synth format=av2``).

AV2's ring has cameras of two sizes (``ring_front_center`` portrait, the others landscape). The store is
conftest's ``av2_tiny_store`` (``dataset=av2_synthetic``, ``grid=near``, 32-channel random features); the
projections are checked against av2's own ``PinholeCamera`` and ``AV2SensorDataLoader``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevlabels import geometry as g

pytest.importorskip("open3d")

LIDAR_PX_MIN_DEPTH = 1.0  # conf/labels.yaml lidar_px_min_depth


@pytest.fixture(scope="module")
def av2_ds(av2_tiny):
    from bevlabels.datasets.av2 import AV2Dataset

    return AV2Dataset(av2_tiny)


def test_every_keyframe_is_labelled_with_both_camera_sizes(av2_tiny_store, av2_ds):
    from bevlabels.cache import LabelStoreReader

    reader = LabelStoreReader(av2_tiny_store)
    frames = [f for s in av2_ds.scenes() for f in av2_ds.keyframes(s)]
    assert [f.token for f in frames] == [str(t) for t in reader.sample_tokens]
    assert reader.done.all()
    frame = frames[0]
    sizes = [(c.width, c.height) for c in frame.cameras]
    assert frame.cameras[0].name == "ring_front_center" and sizes[0][1] > sizes[0][0]  # portrait
    assert all(w > h for w, h in sizes[1:]) and len(set(sizes)) == 2
    for s in range(len(frames)):
        px = reader.lidar_px(s)
        per_cam = np.bincount(px["cam"], minlength=7)
        assert (per_cam > 50).all(), f"keyframe {s}: lidar_px rows per camera {per_cam.tolist()}"
        front = px["cam"] == 0
        w0, h0 = sizes[0]
        assert px["u"][front].max() < w0 and px["v"][front].max() < h0
        assert px["v"][front].max() > w0  # rows below the portrait image's width: its own size, not a landscape one
        assert (np.asarray(reader.dino_count(s)) > 0).mean() > 0.05


def test_lidar_px_matches_av2s_own_projection_on_the_portrait_and_landscape_cameras(av2_tiny_store, av2_ds, av2_tiny):
    """Every LiDAR pixel equals av2's ``project_ego_to_img_motion_compensated`` with av2's own poses and calibration."""
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader

    from bevlabels.cache import LabelStoreReader

    reader = LabelStoreReader(av2_tiny_store)
    scene = av2_ds.scenes()[-1]
    log = av2_ds._log(scene)
    loader = AV2SensorDataLoader(data_dir=log.log_dir.parent, labels_dir=log.log_dir.parent)
    checked = 0
    for frame in av2_ds.keyframes(scene)[1:3]:
        s = reader.index_of(frame.token)
        px = reader.lidar_px(s)
        points = av2_ds.load_points(frame.lidar)[:, :3].astype(np.float64)  # ego frame at the sweep time
        lidar_ns = int(frame.token.rpartition(":")[2])
        city_SE3_ego_lidar = loader.get_city_SE3_ego(scene, lidar_ns)
        for n, cam in enumerate(frame.cameras):
            cam_ns = int(cam.token.rpartition(":")[2])
            assert cam_ns != lidar_ns  # each camera fires at its own time: motion compensation matters
            pin = loader.get_log_pinhole_camera(scene, cam.name)
            uv, pts_cam, av2_valid = pin.project_ego_to_img_motion_compensated(
                points, loader.get_city_SE3_ego(scene, cam_ns), city_SE3_ego_lidar
            )
            # Our rule: depth > min_depth and 0 <= u < W, 0 <= v < H (av2 stops at W - 1, H - 1).
            ours = (pts_cam[:, 2] > LIDAR_PX_MIN_DEPTH) & (uv[:, 0] >= 0) & (uv[:, 0] < pin.width_px)
            ours &= (uv[:, 1] >= 0) & (uv[:, 1] < pin.height_px)
            assert not (av2_valid & (pts_cam[:, 2] > LIDAR_PX_MIN_DEPTH) & ~ours).any()
            rows = px["cam"] == n
            assert rows.sum() == ours.sum() > 50, cam.name
            np.testing.assert_allclose(px["u"][rows], uv[ours, 0], atol=2e-3)
            np.testing.assert_allclose(px["v"][rows], uv[ours, 1], atol=2e-3)
            np.testing.assert_allclose(px["depth"][rows], pts_cam[ours, 2], rtol=1e-5, atol=1e-4)
            checked += 1
    assert checked == 14


def test_each_moving_objects_points_accumulate_inside_its_box(av2_ds):
    """Dynamic accumulation at 10 Hz keyframes (every sweep annotated): a moving object's points from other
    sweeps land inside its box at the keyframe."""
    from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene

    checked, gathered = 0, 0
    for scene in av2_ds.scenes():
        for c in accumulate_scene(av2_ds, scene, AccumulationConfig()):
            boxes = c.frame.boxes.boxes
            speed = np.nan_to_num(np.hypot(boxes[:, g.VX], boxes[:, g.VY]))
            pts_key = g.transform_points(
                c.frame.key_ego_from_lidar(c.frame.lidar), av2_ds.load_points(c.frame.lidar)[:, :3]
            )
            own = np.bincount(np.maximum(g.points_box_index(pts_key, boxes), -1) + 1, minlength=len(boxes) + 1)[1:]
            for m in np.flatnonzero(speed > 1.0):
                pts = c.points[c.box_index == m, :3]
                if len(pts) < 20:
                    continue
                inside = g.points_in_boxes(pts, boxes[m : m + 1])[:, 0]
                assert inside.mean() >= 0.99, f"{c.frame.token} box {m}: {inside.mean():.3f} of its points inside"
                checked += 1
                gathered += int(len(pts) > 1.5 * own[m])  # points of other sweeps were added
    assert checked >= 5 and gathered >= 2, (checked, gathered)


def test_camera_samples_fit_both_sizes_into_one_input(av2_tiny, av2_tiny_store, compose_train, tmp_path):
    """The data module of dataset=av2_synthetic: seven cameras, one input size, depth targets in every camera."""
    from hydra.utils import instantiate

    cfg = compose_train([
        "experiment=bevdepth", "dataset=av2_synthetic", f"dataset.root={av2_tiny}", "grid=near",
        f"data.label_store={av2_tiny_store}", "data.num_workers=0", "data.image_aug.final_hw=[64,176]",
        f"run_dir={tmp_path}",
    ])  # fmt: skip
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert list(dm.class_names) == list(cfg.dataset.class_names) and len(dm.class_names) == 26
    for split, train in (("train", True), ("val", False)):
        ds = dm.make_dataset(dm.frames(split), train=train)
        sample = ds[0]
        assert sample["images"].shape == (7, 3, 64, 176)
        assert (sample["depth_map"] > 0).flatten(1).sum(1).min() > 0  # the portrait crop keeps LiDAR-lit rows too
        assert len(sample["gt_boxes"]) > 0 and sample["gt_labels"].max() < 26
        # The portrait camera's K maps a point in front of it to where its image aug put that pixel.
        K = sample["K"][0].double()
        aug = sample["aug_from_img"][0].double()
        frame = ds.frames[0]
        K0 = torch.as_tensor(frame.cameras[0].K)
        assert torch.allclose(K, aug @ K0, atol=1e-4)
        assert aug[0, 0].abs() == pytest.approx(176 / frame.cameras[0].width, rel=0.2)  # fitted by its width
