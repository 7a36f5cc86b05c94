"""Bad nuScenes input gives a DatasetError (or a warning) that names the file, never a devkit traceback.

Layout errors are checked before the devkit is imported, so those tests need neither the devkit
nor real data. The others build a temporary dataset root from the real demo's small tables (copied,
so they can be edited) and its sample folders (symlinked, read only), and break one thing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bevlabels.datasets.base import DatasetError
from bevlabels.datasets.nuscenes import TABLES, NuScenesDataset

SCENE = "scene-0061"


def demo_copy(demo: Path, dst: Path, drop: tuple[str, ...] = (), truncate_lidar: int = 0) -> Path:
    """A dataset root under ``dst``: the demo's tables copied, its sample folders symlinked.

    ``drop`` lists sample folders (channels) left out; ``truncate_lidar`` bytes are cut from a copy
    of the LIDAR_TOP file instead of linking its folder.
    """
    pytest.importorskip("nuscenes")
    root = dst / "nuscenes"
    shutil.copytree(demo / "v1.0-mini", root / "v1.0-mini")
    (root / "samples").mkdir()
    for chan in sorted(p.name for p in (demo / "samples").iterdir()):
        if chan in drop:
            continue
        if chan == "LIDAR_TOP" and truncate_lidar:
            (root / "samples" / chan).mkdir()
            for f in (demo / "samples" / chan).iterdir():
                (root / "samples" / chan / f.name).write_bytes(f.read_bytes()[:-truncate_lidar])
        else:
            (root / "samples" / chan).symlink_to(demo / "samples" / chan, target_is_directory=True)
    return root


def edit_table(root: Path, table: str, edit) -> None:
    """Rewrite ``root/v1.0-mini/<table>.json`` with ``edit(records) -> records``."""
    path = root / "v1.0-mini" / f"{table}.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


# -- layout: no devkit, no real data -------------------------------------------------------------


def test_missing_root(tmp_path):
    root = tmp_path / "no-such-root"
    with pytest.raises(DatasetError, match="root not found") as err:
        NuScenesDataset(root, version="v1.0-mini")
    assert str(root) in str(err.value)


def test_missing_version_folder(tmp_path):
    (tmp_path / "v1.0-trainval").mkdir()
    with pytest.raises(DatasetError, match="version folder not found") as err:
        NuScenesDataset(tmp_path, version="v1.0-mini")
    assert str(tmp_path / "v1.0-mini") in str(err.value) and "v1.0-trainval" in str(err.value)


@pytest.mark.parametrize("missing", TABLES)
def test_missing_table_is_named(tmp_path, missing):
    (tmp_path / "v1.0-mini").mkdir()
    for t in TABLES:
        if t != missing:
            (tmp_path / "v1.0-mini" / f"{t}.json").write_text("[]")
    with pytest.raises(DatasetError, match=rf"missing in .*v1\.0-mini: {missing}\.json$"):
        NuScenesDataset(tmp_path, version="v1.0-mini")


# -- the demo's tables, broken one way each ----------------------------------------------------


@pytest.mark.realdata
def test_missing_table_in_demo_copy(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path)
    (root / "v1.0-mini" / "visibility.json").unlink()
    with pytest.raises(DatasetError, match="visibility.json") as err:
        NuScenesDataset(root, version="v1.0-mini")
    assert str(root / "v1.0-mini") in str(err.value)


@pytest.mark.realdata
def test_unreadable_table_is_wrapped_and_chained(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path)
    (root / "v1.0-mini" / "sample.json").write_text('[{"token": ')
    with pytest.raises(DatasetError, match="sample.json") as err:
        NuScenesDataset(root, version="v1.0-mini")
    assert str(root) in str(err.value) and "v1.0-mini" in str(err.value)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


@pytest.mark.realdata
def test_dangling_token_is_wrapped_and_chained(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path)
    edit_table(root, "instance", lambda recs: recs[1:])  # an annotation now points nowhere
    with pytest.raises(DatasetError, match=r"token .* not found in .*instance\.json") as err:
        NuScenesDataset(root, version="v1.0-mini")
    assert isinstance(err.value.__cause__, KeyError)


@pytest.mark.realdata
@pytest.mark.parametrize("truncate", [3, 0], ids=["truncated", "missing"])
def test_bad_point_file_is_named(nuscenes_demo, tmp_path, truncate):
    root = demo_copy(nuscenes_demo, tmp_path, truncate_lidar=truncate, drop=() if truncate else ("LIDAR_TOP",))
    ds = NuScenesDataset(root, version="v1.0-mini")
    (frame,) = ds.keyframes(SCENE)
    with pytest.raises(DatasetError, match="truncated" if truncate else "not found") as err:
        ds.load_points(frame.lidar)
    assert frame.lidar.path.name in str(err.value) and frame.lidar.path.name.endswith(".pcd.bin")


@pytest.mark.realdata
def test_missing_image_warns_and_has_image_false(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path, drop=("CAM_FRONT",))
    ds = NuScenesDataset(root, version="v1.0-mini")
    with pytest.warns(UserWarning, match=r"image not found: .*__CAM_FRONT__\d+\.jpg") as record:
        (frame,) = ds.keyframes(SCENE)
    assert len(record) == 1
    assert [c.has_image for c in frame.cameras] == [False, True, True, True, True, True]
    assert frame.cameras[0].name == "CAM_FRONT" and frame.cameras[0].K.shape == (3, 3)


@pytest.mark.realdata
def test_scene_without_annotations_warns_and_boxes_are_empty(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path)
    edit_table(root, "sample_annotation", lambda recs: [])
    ds = NuScenesDataset(root, version="v1.0-mini")
    with pytest.warns(UserWarning, match=f"scene {SCENE} has no annotations"):
        (frame,) = ds.keyframes(SCENE)
    assert len(frame.boxes) == 0 and frame.boxes.boxes.shape == (0, 9)
    assert np.array_equal(ds.load_points(frame.lidar).shape, (34688, 5))


@pytest.mark.realdata
def test_dangling_token_at_keyframe_time_is_named(nuscenes_demo, tmp_path):
    root = demo_copy(nuscenes_demo, tmp_path)
    edit_table(root, "ego_pose", lambda recs: recs[1:])  # the devkit only looks ego poses up on demand
    ds = NuScenesDataset(root, version="v1.0-mini")
    with pytest.raises(DatasetError, match=rf"scene {SCENE}: .* not found in .*ego_pose\.json") as err:
        ds.keyframes(SCENE)
    assert isinstance(err.value.__cause__, KeyError)


# -- hand-written tables: keyframe and sweep walks, scene boundaries, velocities ----------------


def write_two_scene_tables(root: Path, samples: int = 2, per_sample: int = 3) -> None:
    """A two-scene nuScenes table set with one LIDAR_TOP chain running through both scenes.

    Each scene has ``samples`` keyframes, a keyframe every ``per_sample`` sweeps (20 Hz), so its
    sweeps are ``s*n .. s*n + n - 1`` with ``n = samples * per_sample`` (tokens ``lidar-<j>``)
    and sweep ``j`` is a keyframe when ``j % per_sample == per_sample - 1``. Non-key sweeps belong
    to the next keyframe's sample, as in nuScenes. The ego heads along global +y (yaw 90 deg) at
    10 m/s from the origin; each scene has one car moving along global +x at 2 m/s from (0, 20, 1),
    annotated at every keyframe. CAM_FRONT fires 10 ms before each keyframe sweep. No point
    files; empty image files.
    """
    t0, dt = 1_000_000, 50_000  # microseconds: 20 Hz
    n = samples * per_sample
    sec = lambda ts: (ts - t0) * 1e-6  # noqa: E731

    def quat_z(yaw):
        return [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def sample_data(token, sample, pose, cs, ts, key, filename, prev="", next="", wh=(0, 0)):
        return dict(token=token, sample_token=sample, ego_pose_token=pose, calibrated_sensor_token=cs,
                    timestamp=ts, fileformat=filename.split(".")[-1], is_key_frame=key, width=wh[0],
                    height=wh[1], filename=filename, prev=prev, next=next)  # fmt: skip

    t = {
        "log": [dict(token="log", logfile="l", vehicle="v", date_captured="d", location="singapore-onenorth")],
        "map": [dict(token="map", log_tokens=["log"], category="semantic_prior", filename="")],
        "sensor": [
            dict(token="s-lidar", channel="LIDAR_TOP", modality="lidar"),
            dict(token="s-cam", channel="CAM_FRONT", modality="camera"),
        ],
        "calibrated_sensor": [
            dict(token="cs-lidar", sensor_token="s-lidar", translation=[0.9, 0.0, 1.8],
                 rotation=quat_z(-np.pi / 2), camera_intrinsic=[]),
            dict(token="cs-cam", sensor_token="s-cam", translation=[1.5, 0.0, 1.5],
                 rotation=[0.5, -0.5, 0.5, -0.5], camera_intrinsic=[[1000, 0, 800], [0, 1000, 450], [0, 0, 1]]),
        ],
        "category": [dict(token="cat-car", name="vehicle.car", description="", index=0)],
        "attribute": [dict(token="att-moving", name="vehicle.moving", description="")],
        "visibility": [dict(token="4", level="v80-100", description="")],
        "scene": [], "sample": [], "sample_data": [], "ego_pose": [], "instance": [], "sample_annotation": [],
    }  # fmt: skip
    for j in range(2 * n):  # one ego pose per sweep and per camera image
        for token, ts in ((f"pose-lidar-{j}", t0 + j * dt), (f"pose-cam-{j}", t0 + j * dt - 10_000)):
            t["ego_pose"].append(dict(token=token, timestamp=ts, rotation=quat_z(np.pi / 2),
                                      translation=[0.0, 10 * sec(ts), 0.0]))  # fmt: skip
    (root / "samples" / "CAM_FRONT").mkdir(parents=True)
    for s in range(2):
        keys = [s * n + i * per_sample + per_sample - 1 for i in range(samples)]  # keyframe sweeps
        t["scene"].append(dict(token=f"scene-{s}", log_token="log", nbr_samples=samples, name=f"scene-{s}",
                               first_sample_token=f"sample-{keys[0]}", last_sample_token=f"sample-{keys[-1]}",
                               description=""))  # fmt: skip
        t["instance"].append(dict(token=f"inst-{s}", category_token="cat-car", nbr_annotations=samples,
                                  first_annotation_token=f"ann-{keys[0]}", last_annotation_token=f"ann-{keys[-1]}"))  # fmt: skip
        for i, j in enumerate(keys):
            ts = t0 + j * dt
            prev = keys[i - 1] if i > 0 else None
            nxt = keys[i + 1] if i + 1 < len(keys) else None
            link = lambda k, kind: f"{kind}-{k}" if k is not None else ""  # noqa: E731
            t["sample"].append(dict(token=f"sample-{j}", timestamp=ts, scene_token=f"scene-{s}",
                                    prev=link(prev, "sample"), next=link(nxt, "sample")))  # fmt: skip
            t["sample_annotation"].append(dict(
                token=f"ann-{j}", sample_token=f"sample-{j}", instance_token=f"inst-{s}", visibility_token="4",
                attribute_tokens=["att-moving"], size=[1.8, 4.5, 1.6], translation=[2.0 * sec(ts), 20.0, 1.0],
                rotation=[1.0, 0.0, 0.0, 0.0], prev=link(prev, "ann"), next=link(nxt, "ann"),
                num_lidar_pts=7, num_radar_pts=0,
            ))  # fmt: skip
            (root / f"samples/CAM_FRONT/cam-{j}.jpg").write_bytes(b"")
            t["sample_data"].append(sample_data(f"cam-{j}", f"sample-{j}", f"pose-cam-{j}", "cs-cam", ts - 10_000,
                                                True, f"samples/CAM_FRONT/cam-{j}.jpg", wh=(1600, 900)))  # fmt: skip
    for j in range(2 * n):  # the LIDAR_TOP chain, through both scenes
        owner = j + (per_sample - 1 - j % per_sample)  # the next keyframe sweep (itself if a keyframe)
        t["sample_data"].append(sample_data(
            f"lidar-{j}", f"sample-{owner}", f"pose-lidar-{j}", "cs-lidar", t0 + j * dt, j == owner,
            f"sweeps/LIDAR_TOP/lidar-{j}.pcd.bin", prev=f"lidar-{j - 1}" if j else "",
            next=f"lidar-{j + 1}" if j < 2 * n - 1 else "",
        ))  # fmt: skip
    (root / "v1.0-mini").mkdir()
    for name, records in t.items():
        (root / "v1.0-mini" / f"{name}.json").write_text(json.dumps(records))


def test_keyframe_and_sweep_walks_stay_in_their_scene(tmp_path):
    pytest.importorskip("nuscenes")
    write_two_scene_tables(tmp_path)  # scene-0: sweeps 0-5, keys 2, 5; scene-1: sweeps 6-11, keys 8, 11
    ds = NuScenesDataset(tmp_path, version="v1.0-mini", n_prev_sweeps=4)
    assert ds.scenes() == ["scene-0", "scene-1"]
    frames = ds.keyframes("scene-1")
    assert [f.token for f in frames] == ["sample-8", "sample-11"] and [f.index for f in frames] == [0, 1]
    assert [f.lidar.token for f in frames] == ["lidar-8", "lidar-11"] and all(f.lidar.is_key for f in frames)
    assert [f.timestamp for f in frames] == [1_000_000 + 8 * 50_000, 1_000_000 + 11 * 50_000]
    # Newest first, stopping at the scene start (sweep 5 is scene-0's) or after n_prev_sweeps.
    assert [s.token for s in frames[0].prev_sweeps] == ["lidar-7", "lidar-6"]
    assert [s.token for s in frames[1].prev_sweeps] == ["lidar-10", "lidar-9", "lidar-8", "lidar-7"]
    assert [s.is_key for s in frames[1].prev_sweeps] == [False, False, True, False]
    assert [s.token for s in ds.sweeps("scene-0")] == [f"lidar-{j}" for j in range(6)]
    assert [s.token for s in ds.sweeps("scene-1")] == [f"lidar-{j}" for j in range(6, 12)]
    assert ds.frame("sample-5").scene == "scene-0" and ds.frame("sample-11") is frames[1]
    with pytest.raises(KeyError, match="no scene"):
        ds.keyframes("scene-9")


def test_boxes_velocity_and_camera_time_in_keyframe_ego(tmp_path):
    pytest.importorskip("nuscenes")
    write_two_scene_tables(tmp_path)
    ds = NuScenesDataset(tmp_path, version="v1.0-mini")
    f = ds.frame("sample-11")  # at 0.55 s: ego at global (0, 5.5), heading +y; the car at (1.1, 20)
    (box,) = f.boxes.boxes  # (9,)
    np.testing.assert_allclose(box[:3], [20.0 - 5.5, -1.1, 1.0], atol=1e-9)  # ahead, to the right
    np.testing.assert_allclose(box[3:6], [4.5, 1.8, 1.6])  # wlh (1.8, 4.5, 1.6) -> L, W, H
    np.testing.assert_allclose(box[6], -np.pi / 2, atol=1e-9)  # heading global +x = ego -y
    np.testing.assert_allclose(box[7:], [0.0, -2.0], atol=1e-9)  # 2 m/s along global +x = ego -y
    assert f.boxes.attribute == ("vehicle.moving",) and f.boxes.detection_class == ("car",)
    np.testing.assert_array_equal(f.boxes.num_lidar_pts, [7])
    # CAM_FRONT fired 10 ms earlier: 0.1 m behind the keyframe ego at 10 m/s.
    np.testing.assert_allclose(f.key_ego_from_cam(0)[:3, 3], [1.5 - 0.1, 0.0, 1.5], atol=1e-9)
