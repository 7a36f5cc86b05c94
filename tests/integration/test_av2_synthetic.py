"""The synthetic world written as Argoverse 2 sensor logs: av2's own loaders and our adapter read it.

Runs on a `tiny` AV2 world (seed 0) generated once per session: scene-0061 as a train log and
scene-0103 as a val log, 4 sweeps (10 Hz) each, 7 ring cameras at 352x266 (front 266x352). The
expectations come from av2 itself (``AV2SensorDataLoader``, ``Sweep``, ``PinholeCamera``) and from
the world the logs were rendered from (``av2_generate.load_world``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bevlabels.datasets.av2 import AV2_CLASSES, RING_CAMERAS, AV2Dataset
from bevlabels.geometry import invert_transform, points_in_boxes, project_points, rot_z, transform_points, wrap_angle
from bevlabels.synthetic import SynthConfig
from bevlabels.synthetic.av2_generate import (
    AV2_CATEGORY,
    OWN_PATHS_AV2,
    generate_av2,
    load_world,
    log_id,
    log_meta,
    track_uuid,
)
from bevlabels.synthetic.av2_rig import AV2_RIG, CAMERA_OFFSET_NS, ring_camera
from bevlabels.synthetic.generate import OutputDirError, camera_rays, staging_dir

pytest.importorskip("av2")
pytest.importorskip("open3d")

SCENES = {"train": "scene-0061", "val": "scene-0103"}
N_SWEEPS = 4
SWEEP_NS = 100_000_000


@pytest.fixture(scope="module")
def ds(av2_tiny) -> AV2Dataset:
    return AV2Dataset(av2_tiny)


@pytest.fixture(scope="module")
def worlds(av2_tiny):
    """Per log id: ``(world, renderer, synth.json record)``, rebuilt from the dataset's config."""
    from bevlabels.synthetic.render import Renderer

    out = {}
    for scene in SCENES.values():
        lid = log_id(0, scene)
        w = load_world(av2_tiny, lid)
        out[lid] = (w, Renderer(w), log_meta(av2_tiny, lid))
    return out


def _ns(token: str) -> int:
    return int(token.rsplit(":", 1)[1])


def _av2_loader(split_dir: Path):
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader

    return AV2SensorDataLoader(data_dir=split_dir, labels_dir=split_dir)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# av2's own loaders


def test_av2_loader_lists_logs_sweeps_images_poses_and_labels(av2_tiny):
    from av2.structures.sweep import Sweep

    meta = json.loads((av2_tiny / "synth.json").read_text())
    assert meta["format"] == "av2" and [s["name"] for s in meta["scenes"]] == list(SCENES.values())
    assert sorted(p.name for p in av2_tiny.iterdir()) == ["synth.json", "train", "val"]
    for split, scene in SCENES.items():
        loader = _av2_loader(av2_tiny / split)
        lid = log_id(0, scene)
        assert loader.get_log_ids() == [lid]
        t0 = log_meta(av2_tiny, lid)["t0_ns"]
        lidar_ns = loader.get_ordered_log_lidar_timestamps(lid)
        assert lidar_ns == [t0 + k * SWEEP_NS for k in range(N_SWEEPS)]  # 10 Hz
        for ts in lidar_ns:
            loader.get_city_SE3_ego(lid, ts)  # raises when the pose table lacks the exact timestamp
            sweep = Sweep.from_feather(loader.get_lidar_fpath(lid, ts))
            assert len(sweep) > 10_000 and sweep.xyz.shape[1] == 3
            labels = loader.get_labels_at_lidar_timestamp(lid, ts)
            assert len(labels) > 50 and {c.category for c in labels} <= set(AV2_CLASSES)
            for cam in RING_CAMERAS:
                img = loader.get_closest_img_fpath(lid, cam, ts)
                assert img is not None and img.is_file()
                cam_ns = int(img.stem)
                assert cam_ns == ts + CAMERA_OFFSET_NS[cam] and abs(cam_ns - ts) <= 25_000_000
                loader.get_city_SE3_ego(lid, cam_ns)
        for cam in RING_CAMERAS:
            pin = loader.get_log_pinhole_camera(lid, cam)
            portrait = cam == "ring_front_center"
            assert (pin.height_px > pin.width_px) == portrait
            assert (pin.width_px, pin.height_px) == ((266, 352) if portrait else (352, 266))
            K, w, h = ring_camera(cam, 352)
            np.testing.assert_array_equal(pin.intrinsics.K, K)
            np.testing.assert_allclose(pin.ego_SE3_cam.transform_matrix, AV2_RIG[cam].ego_from_sensor, atol=1e-12)
            from PIL import Image

            with Image.open(loader.get_closest_img_fpath(lid, cam, lidar_ns[0])) as im:
                assert im.size == (w, h)


@pytest.mark.realdata
def test_tables_have_the_real_logs_columns_and_types(av2_tiny, av2_sensor_log):
    import pyarrow.feather as pf

    ours = av2_tiny / "val" / log_id(0, SCENES["val"])
    real_sweep = sorted((av2_sensor_log / "sensors" / "lidar").glob("*.feather"))[0]
    our_sweep = sorted((ours / "sensors" / "lidar").glob("*.feather"))[0]
    for mine, real in (
        (ours / "city_SE3_egovehicle.feather", av2_sensor_log / "city_SE3_egovehicle.feather"),
        (ours / "annotations.feather", av2_sensor_log / "annotations.feather"),
        (ours / "calibration" / "egovehicle_SE3_sensor.feather", av2_sensor_log / "calibration" / "egovehicle_SE3_sensor.feather"),
        (ours / "calibration" / "intrinsics.feather", av2_sensor_log / "calibration" / "intrinsics.feather"),
        (our_sweep, real_sweep),
    ):  # fmt: skip
        a, b = pf.read_table(mine).schema, pf.read_table(real).schema
        assert list(zip(a.names, a.types)) == list(zip(b.names, b.types)), mine.name
    # the ring cameras' calibration is the real log's, K scaled by 352 / 2048
    real_ext = pf.read_feather(av2_sensor_log / "calibration" / "egovehicle_SE3_sensor.feather").set_index(
        "sensor_name"
    )
    real_int = pf.read_feather(av2_sensor_log / "calibration" / "intrinsics.feather").set_index("sensor_name")
    our_ext = pf.read_feather(ours / "calibration" / "egovehicle_SE3_sensor.feather").set_index("sensor_name")
    our_int = pf.read_feather(ours / "calibration" / "intrinsics.feather").set_index("sensor_name")
    cols = ["qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"]
    for name in (*RING_CAMERAS, "up_lidar", "down_lidar"):
        np.testing.assert_array_equal(our_ext.loc[name, cols].to_numpy(float), real_ext.loc[name, cols].to_numpy(float))
    s = 352 / 2048
    for cam in RING_CAMERAS:
        k = ["fx_px", "fy_px", "cx_px", "cy_px"]
        np.testing.assert_allclose(
            our_int.loc[cam, k].to_numpy(float), real_int.loc[cam, k].to_numpy(float) * s, rtol=1e-15
        )
        assert our_int.loc[cam, "width_px"] == round(real_int.loc[cam, "width_px"] * s)
        assert our_int.loc[cam, "height_px"] == round(real_int.loc[cam, "height_px"] * s)


# ---------------------------------------------------------------------------------------------
# Our adapter


def test_adapter_lists_logs_keyframes_and_cameras(ds, av2_tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing images, no unswept labels
        assert ds.scenes() == [log_id(0, SCENES["train"]), log_id(0, SCENES["val"])]
        assert ds.scenes("val") == [log_id(0, SCENES["val"])]
        for lid in ds.scenes():
            frames = ds.keyframes(lid)
            t0 = log_meta(av2_tiny, lid)["t0_ns"]
            assert [_ns(f.token) for f in frames] == [t0 + k * SWEEP_NS for k in range(N_SWEEPS)]
            assert len(ds.sweeps(lid)) == N_SWEEPS and all(s.is_key for s in ds.sweeps(lid))
            for f in frames:
                assert [c.name for c in f.cameras] == list(RING_CAMERAS)
                assert all(c.has_image for c in f.cameras)
                assert [(c.width, c.height) for c in f.cameras] == [(266, 352)] + [(352, 266)] * 6
                for c in f.cameras:
                    assert _ns(c.token) == _ns(f.token) + CAMERA_OFFSET_NS[c.name]
                assert len(f.prev_sweeps) == f.index and f.boxes.detection_class == f.boxes.category


def test_keyframe_boxes_are_the_worlds_boxes_in_the_ego_frame(ds, worlds):
    for lid in ds.scenes():
        w, _, rec = worlds[lid]
        agent = {track_uuid(0, rec["name"], i): i for i in range(len(w.agents))}
        for f in ds.keyframes(lid):
            t = (_ns(f.token) - rec["t0_ns"]) * 1e-9
            b = f.boxes.boxes
            idx = np.array([agent[u] for u in f.boxes.instance_id])
            assert len(idx) == len(set(idx)) > 50
            wb = w.boxes(t, idx)
            ego_from_global = invert_transform(w.global_from_ego(t))
            np.testing.assert_allclose(f.lidar.global_from_ego, w.global_from_ego(t), atol=1e-9)
            np.testing.assert_allclose(b[:, :3], transform_points(ego_from_global, wb[:, :3]), atol=1e-3)
            np.testing.assert_allclose(b[:, 3:6], wb[:, 3:6], atol=1e-3)
            assert np.abs(wrap_angle(b[:, 6] - (wb[:, 6] - w.ego_pose(t)[2]))).max() < 1e-3
            assert list(f.boxes.category) == [AV2_CATEGORY[w.agents[i].cls] for i in idx]
            # every agent within the annotation range is annotated
            ex, ey, _ = w.ego_pose(t)
            allb = w.boxes(t)
            near = np.nonzero(np.hypot(allb[:, 0] - ex, allb[:, 1] - ey) <= 80.0)[0]
            assert set(near) <= set(idx)
            # velocity (the adapter's track differences) vs the world's, both in this ego frame
            v_world = wb[:, 7:9] @ w.global_from_ego(t)[:2, :2]  # R^T v per row
            ok = ~np.isnan(b[:, 7])
            assert ok.mean() > 0.9 and np.abs(b[ok, 7:9] - v_world[ok]).max() < 0.3
            # num_lidar_pts is the number of sweep points we count in each box
            pts = ds.load_points(f.lidar)
            counts = points_in_boxes(pts[:, :3], b).sum(0)
            np.testing.assert_array_equal(counts, f.boxes.num_lidar_pts)
            assert (counts > 0).sum() > 20


def test_sweep_points_land_on_the_worlds_geometry(ds, worlds):
    """In the city frame (adapter pose), every point is on the ground, the scenery or an agent posed then."""
    import open3d as o3d

    def off_surface(w, renderer, pts_city, t):  # distance of each point to the nearest surface
        q = o3d.core.Tensor(pts_city.astype(np.float32))
        d = np.abs(pts_city[:, 2])  # the ground plane z = 0
        for sc in (renderer.static, renderer.dynamic_scene(t, pts_city.mean(0))):
            if sc.scene is not None:
                d = np.minimum(d, sc.scene.compute_distance(q).numpy())
        return d

    for lid in ds.scenes():
        w, renderer, rec = worlds[lid]
        for f in ds.keyframes(lid)[::3]:
            t = (_ns(f.token) - rec["t0_ns"]) * 1e-9
            pts = ds.load_points(f.lidar)[:, :3].astype(np.float64)
            np.testing.assert_array_equal(f.lidar.ego_from_lidar, np.eye(4))
            city = transform_points(f.lidar.global_from_ego @ f.lidar.ego_from_lidar, pts)
            d = off_surface(w, renderer, city, t)
            assert d.max() < 0.06, d.max()  # float16 storage: <= 3.1 cm per coordinate up to 128 m
            above = city[:, 2] > 0.1
            assert above.sum() > 2000
            # a pose 2 degrees and 30 cm off puts most off-ground points off the surfaces: the check can fail
            wrong = f.lidar.global_from_ego.copy()
            wrong[:3, :3] = wrong[:3, :3] @ rot_z(np.deg2rad(2.0))
            wrong[:3, 3] += wrong[:3, :3] @ np.array([0.0, 0.3, 0.0])
            d_wrong = off_surface(w, renderer, transform_points(wrong, pts), t)
            assert (d_wrong[above] < 0.06).mean() < 0.5


def test_images_and_the_portrait_front_camera_projection(ds, av2_tiny, worlds):
    """Re-rendering with the adapter's calibration and poses gives the stored images; a GT box centre that
    the front camera sees projects onto that object, the same pixel by av2 and by our K / ego_from_cam."""
    from PIL import Image

    lid = log_id(0, SCENES["val"])
    w, renderer, rec = worlds[lid]
    loader = _av2_loader(av2_tiny / "val")
    agent = {track_uuid(0, rec["name"], i): i for i in range(len(w.agents))}
    seen_total = 0
    for f in ds.keyframes(lid)[1::2]:
        lidar_ns = _ns(f.lidar.token)
        for cam in (f.cameras[0], f.cameras[3]):  # ring_front_center (portrait), ring_side_left
            cam_ns = _ns(cam.token)
            t_cam = (cam_ns - rec["t0_ns"]) * 1e-9
            rgb, obj, _ = renderer.camera(cam.global_from_ego @ cam.ego_from_cam, camera_rays(cam.K, cam.width, cam.height),
                                          cam.width, cam.height, t_cam)  # fmt: skip
            with Image.open(cam.image_path) as im:
                stored = np.asarray(im.convert("RGB")).astype(np.int16)
            assert stored.shape == rgb.shape == (cam.height, cam.width, 3)
            err = np.abs(stored - rgb).mean()
            assert err < 2.0  # JPEG quality 90: ~1.6
            if cam.name != "ring_front_center":
                continue
            assert cam.height > cam.width
            # the camera's own time and pose matter: rendered at the sweep's (10 ms earlier), the image differs more
            t_lidar = (lidar_ns - rec["t0_ns"]) * 1e-9
            early, _, _ = renderer.camera(f.lidar.global_from_ego @ cam.ego_from_cam, camera_rays(cam.K, cam.width, cam.height),
                                          cam.width, cam.height, t_lidar)  # fmt: skip
            assert np.abs(stored - early).mean() > err + 0.5
            # static objects: their box at the LiDAR time is where they are at the camera time
            static = np.array([m for m, u in enumerate(f.boxes.instance_id) if w.agents[agent[u]].static])
            centres = f.boxes.boxes[static, :3]
            uv_av2, _, valid = loader.project_ego_to_img_motion_compensated(centres, cam.name, cam_ns, lidar_ns, lid)
            cam_from_ego_lidar = (
                invert_transform(cam.ego_from_cam) @ invert_transform(cam.global_from_ego) @ f.lidar.global_from_ego
            )
            uv, depth, inside = project_points(centres, cam_from_ego_lidar, cam.K, (cam.width, cam.height))
            assert valid.any()
            np.testing.assert_allclose(uv[valid], uv_av2[valid], atol=1e-6)
            assert (inside[valid]).all()
            # without motion compensation too: av2's PinholeCamera and our K / ego_from_cam
            pin = loader.get_log_pinhole_camera(lid, cam.name)
            uv2_av2, _, valid2 = pin.project_ego_to_img(centres)
            uv2, _, _ = project_points(centres, invert_transform(cam.ego_from_cam), cam.K, (cam.width, cam.height))
            np.testing.assert_allclose(uv2[valid2], uv2_av2[valid2], atol=1e-6)
            px = np.floor(uv[valid]).astype(int)
            hit = obj[px[:, 1], px[:, 0]] == np.array([agent[f.boxes.instance_id[m]] for m in static[valid]])
            assert hit.any()  # the rendered image shows that object at its centre's pixel (others are occluded)
            seen_total += int(hit.sum())
    assert seen_total >= 4


# ---------------------------------------------------------------------------------------------
# Writing: bytes, staging, the command line, generation on first use


def micro(**kw) -> SynthConfig:
    """One val log of 2 sweeps, a coarse LiDAR, thumbnail images, no traffic: a few seconds."""
    cfg = dict(train_scenes=0, val_scenes=1, keyframes=2, image_width=64, lidar={"azimuth_steps": 180},
               traffic_density=0.0)  # fmt: skip
    return SynthConfig.from_preset("tiny", **{**cfg, **kw})


def test_same_config_same_bytes_through_the_command_line(tmp_path, compose_labels):
    from pipelines.synth import run_synth

    a = generate_av2(micro(), tmp_path / "a", log=lambda m: None)
    lid = log_id(0, SCENES["val"])
    assert (a / "val" / lid / "sensors" / "cameras" / "ring_front_center").is_dir() and not staging_dir(a).exists()
    overrides = ["format=av2", "preset=tiny", "preset.train_scenes=0", "preset.keyframes=2", "preset.image_width=64",
                 "+preset.lidar={azimuth_steps:180}", "+preset.traffic_density=0.0", "workers=1"]  # fmt: skip
    run_synth(compose_labels([*overrides, f"out={tmp_path / 'b'}"], config_name="synth"))
    assert _tree_hashes(a) == _tree_hashes(tmp_path / "b")
    # overwrite: only what a previous run wrote goes
    (a / "notes.txt").write_text("keep me")
    (a / "val" / "stale").mkdir()
    with pytest.raises(OutputDirError, match="not empty; pass overwrite=true"):
        generate_av2(micro(), a, log=lambda m: None)
    generate_av2(micro(), a, overwrite=True, log=lambda m: None)
    assert (a / "notes.txt").read_text() == "keep me" and not (a / "val" / "stale").exists()
    assert sorted(p.name for p in a.iterdir()) == sorted([*OWN_PATHS_AV2[1:], "notes.txt"])  # no train/ here
    # an unknown format stops before any work
    with pytest.raises(SystemExit, match="format='kitti': unknown dataset format; known: \\['av2', 'nuscenes'\\]"):
        run_synth(compose_labels(["format=kitti", "preset=tiny", f"out={tmp_path / 'c'}"], config_name="synth"))
    assert not (tmp_path / "c").exists()


def test_default_output_folder_is_where_the_av2_dataset_config_looks(monkeypatch, compose_labels):
    monkeypatch.delenv("BEVLABELS_DATA", raising=False)
    synth = compose_labels(["format=av2", "preset=tiny", "seed=7"], config_name="synth")
    assert synth.out == "data/synthetic/av2-tiny-seed7"
    assert compose_labels(["preset=tiny", "seed=7"], config_name="synth").out == "data/synthetic/tiny-seed7"
    labels = compose_labels(["dataset=av2_synthetic", "dataset.generate.preset=tiny", "dataset.generate.seed=7"])
    assert labels.dataset.root == synth.out and labels.dataset.generate.format == "av2"
    assert list(labels.dataset.class_names) == list(AV2_CLASSES)
    assert labels.dataset.adapter._target_ == "bevlabels.datasets.av2.AV2Dataset"


def test_ensure_dataset_generates_a_missing_world_in_its_format(tmp_path, monkeypatch, av2_tiny):
    import importlib

    from bevlabels.synthetic.config import SynthConfigError
    from pipelines.labels import ensure_dataset

    av2_generate = importlib.import_module("bevlabels.synthetic.av2_generate")
    # (the package exports a function of that module's name)
    nusc_generate = importlib.import_module("bevlabels.synthetic.generate")
    calls = []
    monkeypatch.setattr(
        av2_generate, "generate_av2", lambda cfg, out, **kw: calls.append(("av2", cfg.name, cfg.seed, out))
    )
    monkeypatch.setattr(
        nusc_generate, "generate", lambda cfg, out, **kw: calls.append(("nuscenes", cfg.name, cfg.seed, out))
    )
    gen = {"format": "av2", "preset": "tiny", "seed": 3, "workers": 1}
    ensure_dataset({"name": "av2_synthetic", "root": str(av2_tiny), "version": "sensor", "generate": gen})
    assert calls == []  # a world is there
    ensure_dataset({"name": "mine", "root": str(tmp_path / "w"), "version": "sensor", "generate": gen})
    assert calls == [("av2", "tiny", 3, tmp_path / "w")]
    ensure_dataset({"name": "synthetic", "root": str(tmp_path / "n"), "version": "v1.0-mini",
                    "generate": {"preset": "tiny", "seed": 0, "workers": 1}})  # fmt: skip
    assert calls[-1] == ("nuscenes", "tiny", 0, tmp_path / "n")
    ensure_dataset({"name": "av2", "root": str(tmp_path / "x"), "version": "sensor"})  # no generate section
    assert len(calls) == 2
    with pytest.raises(SynthConfigError, match="unknown dataset format"):
        ensure_dataset({"name": "s", "root": str(tmp_path / "y"), "version": "v", "generate": {"format": "kitti"}})


def test_keyframe_tokens_come_from_the_log_index_alone(ds):
    """AV2Dataset.keyframe_tokens (what the evaluation's coverage check reads) equals the keyframes' own tokens."""
    for scene in ds.scenes():
        assert ds.keyframe_tokens(scene) == [f.token for f in ds.keyframes(scene)]
