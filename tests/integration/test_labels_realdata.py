"""The label stage on the real nuScenes keyframe: through the adapter, checked against the devkit."""

from __future__ import annotations

import numpy as np
import pytest

from bevlabels import geometry as g

pytestmark = pytest.mark.realdata

TINY_FEATURES = [
    "features.weights=random",
    "features.image_height=112",
    "+features.config_overrides={num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64}",
]


@pytest.fixture(scope="module")
def demo_store(nuscenes_demo, tmp_path_factory, compose_labels):
    from pipelines.labels import run

    out = tmp_path_factory.mktemp("labels") / "demo.zarr"
    cfg = compose_labels(
        [
            "dataset=nuscenes",
            f"dataset.root={nuscenes_demo}",
            "dataset.version=v1.0-mini",
            f"out={out}",
            "cluster.processes=false",
            "cluster.n_workers=1",
            *TINY_FEATURES,
        ]
    )
    summary = run(cfg)
    assert summary["keyframes_done_total"] == 1 and not summary["failures"]
    return out


def test_lidar_px_equals_devkit_projection(demo_store, nuscenes_demo):
    from nuscenes.nuscenes import NuScenes

    from bevlabels.cache import LabelStoreReader

    store = LabelStoreReader(demo_store)
    px = store.lidar_px(0)
    nusc = NuScenes("v1.0-mini", str(nuscenes_demo), verbose=False)
    sample = nusc.get("sample", str(store.sample_tokens[0]))
    cams = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    for n, cam in enumerate(cams):
        # The devkit's own chain (lidar -> ego -> global -> ego(cam time) -> cam -> image), float32 as it is.
        pts, depth, _ = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"][cam])
        rows = px["cam"] == n
        u, v, d = px["u"][rows], px["v"][rows], px["depth"][rows]
        sd = nusc.get("sample_data", sample["data"][cam])
        # Same selection as map_pointcloud_to_image: depth > 1 m and a 1-px margin inside the image.
        sel = (d > 1.0) & (u > 1) & (u < sd["width"] - 1) & (v > 1) & (v < sd["height"] - 1)
        assert sel.sum() == pts.shape[1], f"{cam}: {sel.sum()} rows vs the devkit's {pts.shape[1]} points"
        # The devkit rounds every step in float32 at ~1 km global coordinates: ~0.02 px of noise.
        np.testing.assert_allclose(u[sel], pts[0], atol=0.05)
        np.testing.assert_allclose(v[sel], pts[1], atol=0.05)
        np.testing.assert_allclose(d[sel], depth, atol=1e-3)
        assert 3000 <= rows.sum() <= 5000  # the realdata README: 3,000-4,800 points per image


def test_lidar_px_obj_is_the_box_each_point_lies_in(demo_store, nuscenes_demo):
    from bevlabels.cache import LabelStoreReader
    from bevlabels.datasets.nuscenes import NuScenesDataset

    store = LabelStoreReader(demo_store)
    px = store.lidar_px(0)
    frame = NuScenesDataset(nuscenes_demo, version="v1.0-mini").frame(str(store.sample_tokens[0]))
    hits = px["obj"] >= 0
    assert hits.sum() > 100  # many projected points fall on annotated objects
    # Lift each row back to the ego frame and check it is inside the named box.
    for n in range(len(frame.cameras)):
        rows = (px["cam"] == n) & hits
        if not rows.any():
            continue
        uvd = np.column_stack([px["u"][rows] * px["depth"][rows], px["v"][rows] * px["depth"][rows], px["depth"][rows]])
        pts_cam = uvd @ np.linalg.inv(frame.cameras[n].K).T
        pts_ego = g.transform_points(frame.key_ego_from_cam(n), pts_cam.astype(np.float64))
        inside = g.points_in_boxes(pts_ego, frame.boxes.boxes[px["obj"][rows]], margin=1e-3)
        assert np.diag(inside).all()


def test_every_box_with_lidar_points_gets_a_pooled_cell_unless_another_box_hides_it(demo_store, nuscenes_demo):
    """Boxes with >= 5 LiDAR points own a pooled cell. Since schema 2 the keyframe's boxes occlude: an object the
    LiDAR (on the roof) saw but every camera sees through another annotated object is left empty, and the test
    checks that this, not something else, is why (its points are seen with the boxes' occlusion off)."""
    import torch

    from bevlabels.cache import LabelStoreReader
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from bevlabels.lidar.project import CameraSet, VisibilityConfig, camera_hits

    store = LabelStoreReader(demo_store)
    grid = store.grid
    count = store.dino_count(0)
    feat = store.dino_feat(0)
    ds = NuScenesDataset(nuscenes_demo, version="v1.0-mini")
    frame = ds.frame(str(store.sample_tokens[0]))
    pts = g.transform_points(frame.key_ego_from_lidar(frame.lidar), ds.load_points(frame.lidar)[:, :3].astype(float))
    lattice = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 9), np.linspace(-0.5, 0.5, 9)), -1).reshape(-1, 2)
    checked, hidden_by_boxes = 0, []
    for m, (b, n_pts) in enumerate(zip(frame.boxes.boxes, frame.boxes.num_lidar_pts)):
        _, _, inside = grid.cell_index(b[None, :2])
        if n_pts < 5 or not inside[0]:
            continue
        # Cells touched by the box footprint: a 9x9 lattice over it in the box frame, moved to ego.
        local = lattice * b[[g.L, g.W]]
        c, s = np.cos(b[g.YAW]), np.sin(b[g.YAW])
        xy = b[:2] + local @ np.array([[c, s], [-s, c]])
        ix, iy, ok = grid.cell_index(xy)
        checked += 1
        if (count[iy[ok], ix[ok]] > 0).any():
            continue
        own = torch.from_numpy(pts[g.points_box_index(pts, frame.boxes.boxes) == m]).float()
        cams = CameraSet.from_frame(frame)

        def seen(cfg, own=own, cams=cams):
            return sum(len(h.index) for h in camera_hits(own, cams, cfg, frame.boxes.boxes))

        assert seen(VisibilityConfig(box_floor=0.0)) == 0, f"box {m} at {b[:2].round(1)}: seen, yet no pooled cell"
        assert seen(VisibilityConfig(box_occluders=False)) > 0, f"box {m} at {b[:2].round(1)}: no camera sees it"
        hidden_by_boxes.append(m)
    assert checked >= 20  # the demo has many such boxes
    assert len(hidden_by_boxes) <= 0.1 * checked, (hidden_by_boxes, checked)
    assert feat.dtype == np.float16 and np.isfinite(feat).all()
    assert (np.abs(feat[:, count == 0]) == 0).all()  # empty cells are 0, as the schema says


def test_foreground_pixels_keep_their_gt_box_after_filtering_and_augmentation(demo_store, nuscenes_demo):
    """The camera sample's fg_px ``gt`` column names the pixel's row of gt_boxes after the GT filter (classes,
    >= 5 LiDAR points, grid) and a BEV rotation + flip: that box, projected, contains the pixel."""
    import torch

    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES, NuScenesDataset
    from bevlabels.grid import GridSpec
    from trainer.data.camera import CameraDataset
    from trainer.data.common import augment_boxes

    ds = NuScenesDataset(nuscenes_demo, version="v1.0-mini")
    frames = [f for s in ds.scenes() for f in ds.keyframes(s)]
    adapter = {
        "_target_": "bevlabels.datasets.nuscenes.NuScenesDataset",
        "root": str(nuscenes_demo),
        "version": "v1.0-mini",
    }
    data = CameraDataset(
        frames,
        adapter,
        train=True,
        grid=GridSpec.from_yaml(g_conf("default")),
        class_names=NUSCENES_CLASSES,
        label_store=str(demo_store),
        image_aug={"final_hw": [256, 704], "resize_range": [1.0, 1.0], "flip_prob": 0.0},
        bev_aug={"rot_range": [0.6, 0.6], "scale_range": [1.0, 1.0], "flip_x_prob": 0.0, "flip_y_prob": 1.0},
        depth_stride=16,
        load_dino=False,
        min_lidar_points=5,
    )
    frame, sample = frames[0], data[0]
    fg = sample["fg_px"].numpy()  # cam, u, v, depth, obj, gt
    boxes = sample["gt_boxes"].double()
    kept, dropped = fg[fg[:, 5] >= 0], fg[fg[:, 5] < 0]
    assert len(kept) > 100 and len(dropped) > 0, "the filter must both keep and drop boxes with pixels"
    # the gt row is the store's box (obj), moved by the BEV augmentation
    moved = augment_boxes(torch.as_tensor(frame.boxes.boxes, dtype=torch.float64), sample["aug_from_ego"].double())
    for obj, gt in {(int(r[4]), int(r[5])) for r in kept}:
        torch.testing.assert_close(boxes[gt], moved[obj], rtol=0, atol=1e-4, equal_nan=True)  # NaN: unknown velocity
    # dropped pixels belong to boxes of ignored classes, too few points or beyond the grid
    names = frame.boxes.detection_class
    for obj in {int(r[4]) for r in dropped}:
        assert (
            names[obj] not in NUSCENES_CLASSES
            or frame.boxes.num_lidar_pts[obj] < 5
            or not (abs(moved[obj, 0]) < 51.2 and abs(moved[obj, 1]) < 51.2)
        )
    # each kept pixel lies inside its box's projection in its camera
    corners = g.box_corners(boxes.numpy())  # (M, 8, 3) augmented ego frame
    checked = 0
    for n in range(6):
        cam_from_ego = np.linalg.inv(sample["ego_from_cam"][n].double().numpy())
        K = sample["K"][n].double().numpy()
        for gt in np.unique(kept[kept[:, 0] == n, 5]).astype(int):
            rows = kept[(kept[:, 0] == n) & (kept[:, 5] == gt)]
            pc = g.transform_points(cam_from_ego, corners[gt])
            if (pc[:, 2] < 0.5).any():
                continue  # a box crossing the image plane: its projection is unbounded
            uv = (pc @ K.T)[:, :2] / pc[:, 2:]
            assert (rows[:, 1] >= uv[:, 0].min() - 1).all() and (rows[:, 1] <= uv[:, 0].max() + 1).all()
            assert (rows[:, 2] >= uv[:, 1].min() - 1).all() and (rows[:, 2] <= uv[:, 1].max() + 1).all()
            checked += 1
    assert checked >= 5, f"only {checked} (camera, box) pairs checked"


def g_conf(name: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "conf" / "grid" / f"{name}.yaml"


def test_device_paths_equal_the_reference_on_the_real_keyframe(nuscenes_demo):
    """Issue 15: lidar_px and the accumulated cloud computed in torch on a device (here the CPU) equal the numpy
    reference on the real nuScenes keyframe (its 69 boxes, six 1600x900 cameras)."""
    import torch

    from bevlabels.datasets.nuscenes import NuScenesDataset
    from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene
    from bevlabels.lidar.project import lidar_pixels

    ds = NuScenesDataset(nuscenes_demo, version="v1.0-mini")
    frame = ds.keyframes(ds.scenes()[0])[0]
    points = ds.load_points(frame.lidar)
    ref = lidar_pixels(frame, points)
    dev = lidar_pixels(frame, points, device="cpu")
    for k in ("cam", "obj"):
        np.testing.assert_array_equal(dev[k], ref[k])
    for k in ("u", "v", "depth"):
        np.testing.assert_allclose(dev[k], ref[k], atol=1e-4)
    assert (ref["obj"] >= 0).sum() > 500  # the boxes hold points: the obj column is exercised
    a = next(accumulate_scene(ds, frame.scene, AccumulationConfig()))
    b = next(accumulate_scene(ds, frame.scene, AccumulationConfig(), device="cpu"))
    assert isinstance(b.points, torch.Tensor) and a.n_dynamic > 100
    np.testing.assert_array_equal(b.box_index.numpy(), a.box_index)
    np.testing.assert_allclose(b.points.numpy(), a.points, atol=1e-4)
