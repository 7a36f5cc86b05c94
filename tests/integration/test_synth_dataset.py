"""The synthetic world on disk is an ordinary nuScenes dataset: the devkit loads, checks and scores it.

Runs on the session's `tiny` world (tests/conftest.py::synth_tiny): scene-0061 (mini_train) and
scene-0103 (mini_val), 4 keyframes each. The full `small` preset is checked the same way by the
`slow` tests at the end.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bevlabels.synthetic import SynthConfig, generate
from bevlabels.synthetic.catalog import CLASSES, VEHICLES
from bevlabels.synthetic.generate import load_world, read_meta
from bevlabels.synthetic.rig import CAMERA_NAMES, camera_intrinsics

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def nusc(synth_tiny):
    from nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(synth_tiny), verbose=False)


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, tok = [], scene["first_sample_token"]
    while tok:
        out.append(nusc.get("sample", tok))
        tok = out[-1]["next"]
    return out


def _chain(nusc, sd_token: str) -> list[dict]:
    """All sample_data of one channel in a scene: back to the first, then forward to the last."""
    sd = nusc.get("sample_data", sd_token)
    while sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
    out = [sd]
    while out[-1]["next"]:
        out.append(nusc.get("sample_data", out[-1]["next"]))
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def test_the_devkit_loads_all_13_tables(nusc, synth_tiny):
    from nuscenes.utils.splits import create_splits_scenes

    assert sorted(p.stem for p in (synth_tiny / VERSION).glob("*.json")) == sorted(nusc.table_names)
    assert len(nusc.table_names) == 13
    splits = create_splits_scenes()
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    assert "scene-0061" in splits["mini_train"] and "scene-0103" in splits["mini_val"]
    assert len(nusc.sample) == 8 and {len(v) for v in nusc.category} and len(nusc.visibility) == 4
    for s in nusc.sample:
        assert set(s["data"]) == {"LIDAR_TOP", *CAMERA_NAMES}
    for log in nusc.log:  # each scene's map mask exists and is readable by the devkit
        mask = nusc.get("map", log["map_token"])["mask"]
        assert mask.mask().max() == 255


def test_sweeps_chain_between_keyframes(nusc, synth_tiny):
    cfg = SynthConfig.from_dict(read_meta(synth_tiny)["config"])
    S = cfg.sweeps_per_keyframe
    for scene in nusc.scene:
        samples = _scene_samples(nusc, scene)
        assert len(samples) == scene["nbr_samples"] == cfg.keyframes
        chain = _chain(nusc, samples[0]["data"]["LIDAR_TOP"])
        assert len(chain) == (cfg.keyframes - 1) * S + 1
        ts = np.array([sd["timestamp"] for sd in chain])
        np.testing.assert_array_equal(np.diff(ts), 50_000)  # 20 Hz
        assert [sd["is_key_frame"] for sd in chain] == [j % S == 0 for j in range(len(chain))]
        for j, sd in enumerate(chain):
            k = -(-j // S)  # non-key sweeps belong to the next keyframe
            assert sd["sample_token"] == samples[k]["token"]
            assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
            assert (synth_tiny / sd["filename"]).stat().st_size % 20 == 0
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            assert pose["timestamp"] == sd["timestamp"]
        for k, s in enumerate(samples):
            assert s["timestamp"] == chain[k * S]["timestamp"]
        for cam in CAMERA_NAMES:  # one image per keyframe, fired a few ms before the LiDAR keyframe
            cams = _chain(nusc, samples[0]["data"][cam])
            assert [c["sample_token"] for c in cams] == [s["token"] for s in samples]
            assert all(-50_000 < c["timestamp"] - s["timestamp"] <= 0 for c, s in zip(cams, samples))
            assert (cams[0]["width"], cams[0]["height"]) == (cfg.image_width, cfg.image_height)


def test_instances_keep_their_token_across_keyframes(nusc):
    by_inst: dict[str, list[dict]] = {}
    for ann in nusc.sample_annotation:
        by_inst.setdefault(ann["instance_token"], []).append(ann)
    assert len(by_inst) == len(nusc.instance)
    multi = 0
    for inst in nusc.instance:
        chain, tok = [], inst["first_annotation_token"]
        while tok:
            chain.append(nusc.get("sample_annotation", tok))
            tok = chain[-1]["next"]
        assert len(chain) == inst["nbr_annotations"] == len(by_inst[inst["token"]])
        assert chain[-1]["token"] == inst["last_annotation_token"]
        samples = [nusc.get("sample", a["sample_token"]) for a in chain]
        assert len({s["scene_token"] for s in samples}) == 1
        for s0, s1 in zip(samples[:-1], samples[1:]):  # contiguous: consecutive keyframes
            assert s0["next"] == s1["token"]
        if len(chain) > 1:
            multi += 1
            assert np.isfinite(nusc.box_velocity(chain[0]["token"])).all()
    assert multi > 0.8 * len(nusc.instance)


def test_attributes_and_visibility_are_plausible(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    seen_attr, seen_vis = set(), set()
    for ann in nusc.sample_annotation:
        cls = category_to_detection_name(ann["category_name"])
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        seen_vis.add(nusc.get("visibility", ann["visibility_token"])["level"])
        if cls in ("traffic_cone", "barrier"):
            assert attrs == []
            continue
        assert len(attrs) == 1
        prefix = {"pedestrian": "pedestrian.", "bicycle": "cycle.", "motorcycle": "cycle."}.get(cls, "vehicle.")
        assert attrs[0].startswith(prefix), (cls, attrs)
        seen_attr.add(attrs[0])
        speed = np.linalg.norm(nusc.box_velocity(ann["token"])[:2])
        if attrs[0] in ("vehicle.parked", "pedestrian.standing", "cycle.without_rider") and np.isfinite(speed):
            assert speed < 0.3
        if attrs[0] in ("vehicle.moving", "pedestrian.moving") and np.isfinite(speed):
            assert speed > 0.1
    assert {"vehicle.moving", "vehicle.parked", "pedestrian.moving", "pedestrian.standing", "cycle.with_rider",
            "cycle.without_rider"} <= seen_attr  # fmt: skip
    assert {"v0-40", "v80-100"} <= seen_vis  # occluded and fully visible objects both occur


# ---------------------------------------------------------------------------------------------
# LiDAR


def test_points_are_nuscenes_hdl32_sweeps(nusc, synth_tiny):
    from bevlabels.datasets.base import read_float32_points

    for sd in nusc.sample_data[:40]:
        if sd["channel"] != "LIDAR_TOP":
            continue
        pts = read_float32_points(synth_tiny / sd["filename"], columns=5)
        assert pts.dtype == np.float32 and pts.shape[1] == 5 and len(pts) > 10_000
        r = np.linalg.norm(pts[:, :3], axis=1)
        assert r.min() >= 1.0 and r.max() <= 70.0 + 1e-3
        np.testing.assert_array_equal(pts[:, 4], np.round(pts[:, 4]))
        assert pts[:, 4].min() == 0 and pts[:, 4].max() == 31
        assert np.all(pts[:, 3] == np.round(pts[:, 3])) and 0 <= pts[:, 3].min() and pts[:, 3].max() <= 255


def test_num_lidar_pts_counts_the_keyframe_sweep(nusc, synth_tiny):
    """The devkit's own points_in_box, on the box moved into the LiDAR frame the devkit's way."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    checked = nonzero = 0
    for s in nusc.sample:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(str(synth_tiny / sd["filename"]))
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        for tok in s["anns"]:
            box = nusc.get_box(tok)
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            box.translate(-np.array(cs["translation"]))
            box.rotate(Quaternion(cs["rotation"]).inverse)
            n = int(points_in_box(box, pc.points[:3]).sum())
            assert n == nusc.get("sample_annotation", tok)["num_lidar_pts"], tok
            checked += 1
            nonzero += n > 0
    assert checked > 400 and nonzero > 0.4 * checked


def test_points_inside_a_box_are_that_objects_own_returns(synth_tiny):
    """Re-rendering the keyframe sweeps gives the stored points, and every point in a box hit that box's mesh."""
    from bevlabels.geometry import points_in_boxes
    from bevlabels.synthetic.render import Renderer
    from bevlabels.synthetic.rig import RIG, LidarSpec

    meta = read_meta(synth_tiny)
    for scene in ("scene-0061", "scene-0103"):
        world = load_world(synth_tiny, scene)
        renderer = Renderer(world)
        dirs, ring = LidarSpec().ray_directions()
        for t in (0.0, 1.5):
            g_from_l = world.global_from_ego(t) @ RIG["LIDAR_TOP"].ego_from_sensor
            boxes = world.boxes(t)
            pts, obj = renderer.lidar(g_from_l, dirs, ring, t, 1.0, 70.0, boxes)
            p_global = pts[:, :3].astype(np.float64) @ g_from_l[:3, :3].T + g_from_l[:3, 3]
            inside = points_in_boxes(p_global, boxes)  # (N, M)
            n, m = np.nonzero(inside)
            np.testing.assert_array_equal(obj[n], m)
            assert len(n) > 500
    assert meta["generator"].startswith("bevlabels.synthetic")


# ---------------------------------------------------------------------------------------------
# Cameras


def test_projected_boxes_enclose_each_objects_pixels(nusc, synth_tiny):
    """Per camera image: every annotated object's rendered pixels lie inside its projected GT box.

    The object masks come from re-rendering each camera with the scene's world (the JPEG on disk
    is checked to be that render). A camera fires a few ms before the keyframe, so the GT box is
    first moved by its velocity over that interval, as a consumer of the dataset would.
    """
    from PIL import Image

    from bevlabels.geometry import box_corners, invert_transform, project_points, transform_from_pose
    from bevlabels.synthetic.generate import camera_rays
    from bevlabels.synthetic.render import Renderer

    checked = 0
    for scene in nusc.scene:
        world = load_world(synth_tiny, scene["name"])
        renderer = Renderer(world)
        samples = _scene_samples(nusc, scene)
        t0 = samples[0]["timestamp"]
        for s in samples[::3]:
            # which agent each annotation is: the one whose box centre it is
            agent_boxes = world.boxes((s["timestamp"] - t0) * 1e-6)
            agent_of = {}
            for tok in s["anns"]:
                d = np.linalg.norm(agent_boxes[:, :3] - nusc.get("sample_annotation", tok)["translation"], axis=1)
                assert d.min() < 1e-6
                agent_of[tok] = int(d.argmin())
            for ch in CAMERA_NAMES:
                sd = nusc.get("sample_data", s["data"][ch])
                cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                pose = nusc.get("ego_pose", sd["ego_pose_token"])
                K, w, h = np.asarray(cs["camera_intrinsic"]), sd["width"], sd["height"]
                np.testing.assert_allclose(K, camera_intrinsics(ch, w, h))
                g_from_cam = transform_from_pose(pose["translation"], pose["rotation"]) @ transform_from_pose(
                    cs["translation"], cs["rotation"])  # fmt: skip
                rgb, obj, _ = renderer.camera(g_from_cam, camera_rays(K, w, h), w, h, (sd["timestamp"] - t0) * 1e-6)
                stored = np.asarray(Image.open(synth_tiny / sd["filename"]), dtype=np.float32)
                assert np.abs(stored - rgb).mean() < 4.0  # the JPEG is this render
                dt = (sd["timestamp"] - s["timestamp"]) * 1e-6
                for tok in s["anns"]:
                    vv, uu = np.nonzero(obj == agent_of[tok])
                    if len(uu) == 0:
                        continue
                    b = nusc.get_box(tok)
                    centre = np.asarray(b.center) + np.r_[np.nan_to_num(nusc.box_velocity(tok)[:2]) * dt, 0.0]
                    box = np.r_[centre, b.wlh[1], b.wlh[0], b.wlh[2], b.orientation.yaw_pitch_roll[0], 0, 0][None]
                    uv, depth, _ = project_points(box_corners(box)[0], invert_transform(g_from_cam), K, (w, h))
                    if (depth <= 0.05).any():  # straddles the camera plane: its corners do not bound its image
                        continue
                    lo, hi = uv.min(0) - 1.0, uv.max(0) + 1.0  # one pixel of rasterisation slack
                    px_lo, px_hi = np.array([uu.min(), vv.min()]) + 0.5, np.array([uu.max(), vv.max()]) + 0.5
                    assert (px_lo >= lo).all() and (px_hi <= hi).all(), (b.name, tok, px_lo, px_hi, lo, hi)
                    checked += 1
    assert checked > 100


# ---------------------------------------------------------------------------------------------
# The devkit's evaluations


def _gt_results(nusc, split: str, shift: float = 0.0, tracking: bool = False) -> dict:
    """The split's GT boxes as a nuScenes result file (only the boxes the benchmark keeps: >= 1 point).

    Boxes with no LiDAR point are dropped from the GT by the devkit; as predictions they would be
    false positives. ``shift`` moves every box that many metres along global x.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.eval.tracking.utils import category_to_tracking_name
    from nuscenes.utils.splits import create_splits_scenes

    names = set(create_splits_scenes()[split])
    results = {}
    for s in nusc.sample:
        if nusc.get("scene", s["scene_token"])["name"] not in names:
            continue
        boxes = []
        for tok in s["anns"]:
            a = nusc.get("sample_annotation", tok)
            name = (category_to_tracking_name if tracking else category_to_detection_name)(a["category_name"])
            if name is None or a["num_lidar_pts"] == 0:
                continue
            v = np.nan_to_num(nusc.box_velocity(tok)[:2]).tolist()
            box = {"sample_token": s["token"], "translation": [a["translation"][0] + shift, *a["translation"][1:]],
                   "size": a["size"], "rotation": a["rotation"], "velocity": v}  # fmt: skip
            if tracking:
                box.update(tracking_name=name, tracking_id=a["instance_token"], tracking_score=1.0)
            else:
                attr = nusc.get("attribute", a["attribute_tokens"][0])["name"] if a["attribute_tokens"] else ""
                box.update(detection_name=name, detection_score=1.0, attribute_name=attr)
            boxes.append(box)
        results[s["token"]] = boxes
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def _detection_eval(nusc, results: dict, tmp_path: Path, split: str) -> dict:
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    ev = DetectionEval(
        nusc, config_factory("detection_cvpr_2019"), str(path), split, str(tmp_path / "eval"), verbose=False
    )
    metrics, _ = ev.evaluate()
    return metrics.serialize()


def _check_gt_scores_perfectly(nusc, tmp_path: Path, split: str) -> None:
    m = _detection_eval(nusc, _gt_results(nusc, split), tmp_path, split)
    assert m["nd_score"] >= 0.99
    assert set(m["mean_dist_aps"]) == set(CLASSES)
    for cls, ap in m["mean_dist_aps"].items():
        assert ap >= 0.99, f"AP({cls}) = {ap}"
    shifted = _detection_eval(nusc, _gt_results(nusc, split, shift=1.5), tmp_path / "shifted", split)
    # 1.5 m misses the 0.5 m and 1 m matching thresholds: mAP ~0.5; the translation error is ~1.5 m
    # (a little less where a shifted box lands nearer to a neighbouring object of its class)
    assert shifted["mean_ap"] < 0.6 and shifted["nd_score"] < 0.75
    assert 1.3 < shifted["tp_errors"]["trans_err"] <= 1.5 + 1e-6


def _check_gt_tracks_score_perfectly(root: Path, version: str, nusc, tmp_path: Path, split: str) -> None:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.tracking.evaluate import TrackingEval

    path = tmp_path / "tracks.json"
    path.write_text(json.dumps(_gt_results(nusc, split, tracking=True)))
    ev = TrackingEval(config_factory("tracking_nips_2019"), str(path), split, str(tmp_path / "track_eval"), version,
                      str(root), verbose=False)  # fmt: skip
    m = ev.evaluate()[0].serialize()
    assert m["amota"] >= 0.99
    assert all(v >= 0.99 for v in m["label_metrics"]["amota"].values()), m["label_metrics"]["amota"]


def test_gt_boxes_score_nds_1_and_shifted_boxes_score_lower(nusc, tmp_path):
    _check_gt_scores_perfectly(nusc, tmp_path, "mini_val")


def test_gt_tracks_score_amota_1(nusc, synth_tiny, tmp_path):
    _check_gt_tracks_score_perfectly(synth_tiny, VERSION, nusc, tmp_path, "mini_val")


def test_trainval_naming_evaluates_on_the_val_split(tmp_path):
    """`medium` writes v1.0-trainval with names from the devkit's train/val splits: one val scene here."""
    from nuscenes import NuScenes

    cfg = SynthConfig.from_preset("tiny", version="v1.0-trainval", train_scenes=0, val_scenes=1, keyframes=3)
    root = generate(cfg, tmp_path / "trainval", log=lambda m: None)
    nusc = NuScenes(version="v1.0-trainval", dataroot=str(root), verbose=False)
    assert [s["name"] for s in nusc.scene] == ["scene-0003"]  # the first name of splits.val
    _check_gt_scores_perfectly(nusc, tmp_path, "val")


def test_every_class_has_points_in_range_in_the_val_scene(synth_tiny):
    meta = read_meta(synth_tiny)
    val = [s for s in meta["scenes"] if s["split"] == "mini_val"]
    assert len(val) == 1 and all(n > 0 for n in val[0]["annotations_in_range_with_points"].values())


# ---------------------------------------------------------------------------------------------
# Determinism, the adapter, the contact sheet


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(synth_tiny, tmp_path):
    again = generate(SynthConfig.from_preset("tiny", seed=0), tmp_path / "again", log=lambda m: None)
    a, b = _digest(synth_tiny), _digest(again)
    assert a.keys() == b.keys() and len(a) > 100
    assert [k for k in a if a[k] != b[k]] == []


def test_the_nuscenes_adapter_reads_the_world_unchanged(synth_tiny):
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from bevlabels.geometry import points_in_boxes, transform_points

    ds = NuScenesDataset(synth_tiny, version=VERSION)
    assert ds.scenes() == ["scene-0061", "scene-0103"] and ds.scenes("mini_val") == ["scene-0103"]
    for scene in ds.scenes():
        frames = ds.keyframes(scene)
        n_ann: dict[str, int] = {}
        for f in frames:
            for i in f.boxes.instance_id:
                n_ann[i] = n_ann.get(i, 0) + 1
        assert len(frames) == 4 and len(ds.sweeps(scene)) == 31
        assert [f.index for f in frames] == [0, 1, 2, 3] and all(f.scene == scene for f in frames)
        for f in frames:
            assert f.camera_names == CAMERA_NAMES and all(c.has_image for c in f.cameras)
            assert len(f.prev_sweeps) == (0 if f.index == 0 else 10)
            assert len(f.boxes) > 50 and set(f.boxes.detection_class) <= set(CLASSES)
            pts = ds.load_points(f.lidar)
            assert pts.shape[1] == 5 and pts.dtype == np.float32
            pts_ego = transform_points(f.key_ego_from_lidar(f.lidar), pts.astype(np.float64))
            np.testing.assert_array_equal(points_in_boxes(pts_ego, f.boxes.boxes).sum(0), f.boxes.num_lidar_pts)
            # the ego sits on the ground, boxes stand on it, moving agents have finite velocities
            assert np.abs(f.boxes.boxes[:, 2] - f.boxes.boxes[:, 5] / 2).max() < 1e-6
            # velocities are known for every instance annotated more than once, and match the attributes
            tracked = np.array([n_ann[i] > 1 for i in f.boxes.instance_id])
            assert np.isfinite(f.boxes.boxes[tracked, 7:9]).all()
            speed = np.linalg.norm(f.boxes.boxes[:, 7:9], axis=1)
            parked = np.array([a == "vehicle.parked" for a in f.boxes.attribute])
            assert np.all(speed[tracked & parked] < 1e-6)
    vehicles = [c for f in ds.frames() for c in f.boxes.detection_class if c in VEHICLES]
    assert len(vehicles) > 50


def test_contact_sheet_renders(synth_tiny, tmp_path):
    """scripts/render_frame.py as a user runs it."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "f.png"
    cmd = [sys.executable, "scripts/render_frame.py", "--root", str(synth_tiny), "--scene", "scene-0103"]
    cmd += ["--index", "2", "--out", str(out)]
    r = subprocess.run(cmd, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True)
    assert r.returncode == 0 and f"render_frame: {out}" in r.stdout, r.stdout + r.stderr
    from PIL import Image

    im = Image.open(out)
    assert im.size[0] > 1000 and im.size[1] > 200


# ---------------------------------------------------------------------------------------------
# The `small` preset (minutes): the same checks on 10 scenes, the evaluations on its 2 val scenes


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory):
    from pipelines.synth import dask_map

    out = tmp_path_factory.mktemp("synth_small") / "small"
    return generate(SynthConfig.from_preset("small", seed=0), out, map_fn=dask_map(2), log=lambda m: None)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # generating `small` takes ~4 min of wall time on 2 idle cores, more on a busy box
def test_small_preset_loads_and_scores_perfectly(synth_small, tmp_path):
    from nuscenes import NuScenes

    from bevlabels.datasets.nuscenes import NuScenesDataset

    nusc = NuScenes(version=VERSION, dataroot=str(synth_small), verbose=False)
    assert len(nusc.scene) == 10 and len(nusc.sample) == 200
    meta = read_meta(synth_small)
    for s in meta["scenes"]:
        assert all(n > 0 for n in s["annotations_in_range_with_points"].values()), s
    _check_gt_scores_perfectly(nusc, tmp_path, "mini_val")
    _check_gt_tracks_score_perfectly(synth_small, VERSION, nusc, tmp_path, "mini_val")
    ds = NuScenesDataset(synth_small, version=VERSION)
    assert ds.scenes("mini_val") == ["scene-0103", "scene-0916"]
    assert sum(len(ds.keyframes(s)) for s in ds.scenes()) == 200
