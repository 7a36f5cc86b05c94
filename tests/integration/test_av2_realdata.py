"""AV2Dataset against av2's own API on one real Argoverse 2 sensor log (shared/realdata).

The log (``val/7fab2350-...``) has 2 LiDAR sweeps on disk, annotations for 156 timestamps of the
whole log (154 without a sweep file), calibration of 9 cameras and no images. Every expectation
below is read from av2 itself (``AV2SensorDataLoader``, ``Sweep``, ``PinholeCamera``, ``Cuboid``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from bevlabels.datasets.av2 import RING_CAMERAS, AV2Dataset, ns_to_us
from bevlabels.datasets.base import DatasetError
from bevlabels.geometry import VX, VY, YAW, box_corners, points_in_boxes, project_points

pytestmark = pytest.mark.realdata
pytest.importorskip("av2")

N_SWEEPS = 2  # sweep files of the log
N_ANNOTATED = 156  # annotated timestamps of the log


@pytest.fixture(scope="module")
def loader(av2_sensor_log: Path):
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader

    return AV2SensorDataLoader(data_dir=av2_sensor_log.parent, labels_dir=av2_sensor_log.parent)


@pytest.fixture(scope="module")
def ds(av2_sensor_log: Path) -> AV2Dataset:
    return AV2Dataset(av2_sensor_log.parent)


@pytest.fixture(scope="module")
def frames(ds: AV2Dataset, av2_sensor_log: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ds.keyframes(av2_sensor_log.name)
    messages = [str(w.message) for w in caught]
    # No images: one warning naming every missing camera folder; sweep-less labels: one warning.
    assert sum("has no images in" in m for m in messages) == 1, messages
    assert all(f"sensors/cameras/{c}" in " ".join(messages) for c in RING_CAMERAS)
    assert any(f"{N_ANNOTATED - N_SWEEPS} of {N_ANNOTATED} annotated timestamps" in m for m in messages)
    return out


@pytest.fixture(scope="module")
def annotations(av2_sensor_log: Path):
    from av2.utils.io import read_feather

    return read_feather(av2_sensor_log / "annotations.feather")


def test_root_layouts(av2_sensor_log: Path):
    log_id, val = av2_sensor_log.name, av2_sensor_log.parent
    top = val.parent
    assert AV2Dataset(val).scenes() == [log_id]  # a folder of logs
    assert AV2Dataset(val).scenes("val") == [log_id]  # its own name is its split
    assert AV2Dataset(top, split="val").scenes() == [log_id]  # top folder, split chosen
    assert AV2Dataset(top).scenes() == [log_id]  # top folder, every split present
    with pytest.raises(DatasetError, match=r"split 'train' not found.*available: \['val'\]"):
        AV2Dataset(top, split="train")
    with pytest.raises(DatasetError, match="no AV2 log 'not-a-log'"):
        AV2Dataset(val).keyframes("not-a-log")


def test_keyframes_are_the_annotated_sweeps(ds: AV2Dataset, frames, loader, av2_sensor_log: Path):
    log_id = av2_sensor_log.name
    lidar_ns = loader.get_ordered_log_lidar_timestamps(log_id)
    assert len(lidar_ns) == N_SWEEPS and len(frames) == N_SWEEPS
    for i, (f, ts) in enumerate(zip(frames, lidar_ns)):
        assert f.token == f"{log_id}:{ts}" and f.scene == log_id and f.index == i
        assert f.timestamp == ts // 1000 == f.lidar.timestamp  # ns -> us (AV2 stamps are whole us)
        assert f.lidar.is_key and f.lidar.path == loader.get_lidar_fpath(log_id, ts)
        np.testing.assert_array_equal(f.lidar.ego_from_lidar, np.eye(4))  # sweeps are in the ego frame
        assert ds.frame(f.token) is f
    # Every AV2 sweep is annotated, so the previous sweep of keyframe 1 is keyframe 0's, newest first.
    assert frames[0].prev_sweeps == ()
    assert [s.token for s in frames[1].prev_sweeps] == [frames[0].lidar.token]
    sweeps = ds.sweeps(log_id)
    assert [s.token for s in sweeps] == [f.lidar.token for f in frames]
    assert all(s.is_key for s in sweeps)


def test_points_equal_av2_sweep_reader(ds: AV2Dataset, frames):
    from av2.structures.sweep import Sweep

    for f in frames:
        ours = ds.load_points(f.lidar)
        ref = Sweep.from_feather(Path(f.lidar.path))
        assert ours.dtype == np.float32 and ours.shape == (len(ref), 5) and len(ref) > 90_000
        np.testing.assert_array_equal(ours[:, :3], ref.xyz)  # float16 on disk: float32 is exact
        np.testing.assert_array_equal(ours[:, 3], ref.intensity)
        np.testing.assert_array_equal(ours[:, 4], ref.laser_number)


def test_ego_poses_equal_loader(frames, loader, av2_sensor_log: Path):
    for sweep in [f.lidar for f in frames] + [s for f in frames for s in f.prev_sweeps]:
        ts = int(sweep.token.rsplit(":", 1)[1])
        ref = loader.get_city_SE3_ego(av2_sensor_log.name, ts).transform_matrix
        np.testing.assert_allclose(sweep.global_from_ego, ref, rtol=0, atol=1e-12)


def test_boxes_equal_av2_cuboids(frames, loader, annotations, av2_sensor_log: Path):
    for f in frames:
        ts = int(f.token.rsplit(":", 1)[1])
        cuboids = loader.get_labels_at_lidar_timestamp(av2_sensor_log.name, ts)
        b = f.boxes
        assert len(b) == len(cuboids) > 50
        np.testing.assert_allclose(b.boxes[:, :3], cuboids.xyz_center_m, atol=1e-9)
        np.testing.assert_allclose(b.boxes[:, 3:6], cuboids.dims_lwh_m, atol=1e-9)
        R = np.stack([c.dst_SE3_object.rotation for c in cuboids.cuboids])
        np.testing.assert_allclose(b.boxes[:, YAW], np.arctan2(R[:, 1, 0], R[:, 0, 0]), atol=1e-9)
        # av2's vertex order (+x face first, y: +,-,-,+, z: +,+,-,-) is the devkit's: compare 1:1.
        # Only yaw is kept, so tilted cuboids differ by their (small) pitch/roll: 2 cm bound.
        np.testing.assert_allclose(box_corners(b.boxes), cuboids.vertices_m, atol=0.02)
        assert list(b.category) == cuboids.categories
        rows = annotations[annotations["timestamp_ns"] == ts]  # same file order as the CuboidList
        assert list(b.instance_id) == rows["track_uuid"].tolist()
        np.testing.assert_array_equal(b.num_lidar_pts, rows["num_interior_pts"].to_numpy())
        assert all(d == (c if c in AV2Dataset.classes else None) for c, d in zip(b.category, b.detection_class))


def test_boxes_and_points_share_the_ego_frame(ds: AV2Dataset, frames):
    # The strongest check that sweeps and cuboids are both in the ego frame at the sweep time and
    # that our box layout is right: points inside each box == AV2's own num_interior_pts, exactly.
    from scipy.spatial import cKDTree

    for f in frames:
        points = ds.load_points(f.lidar)
        tree = cKDTree(points[:, :3])  # candidates within each box's circumradius: fast and exact
        counts = []
        for box in f.boxes.boxes:
            near = tree.query_ball_point(box[:3], r=0.5 * np.linalg.norm(box[3:6]) + 1e-3)
            counts.append(int(points_in_boxes(points[near], box[None]).sum()))
        np.testing.assert_array_equal(counts, f.boxes.num_lidar_pts)


def test_cameras_equal_pinhole_cameras(frames, loader, av2_sensor_log: Path):
    log_id = av2_sensor_log.name
    for f in frames:
        assert f.camera_names == RING_CAMERAS
        for cam in f.cameras:
            pin = loader.get_log_pinhole_camera(log_id, cam.name)
            np.testing.assert_array_equal(cam.K, pin.intrinsics.K)
            np.testing.assert_array_equal(cam.ego_from_cam, pin.ego_SE3_cam.transform_matrix)
            assert (cam.width, cam.height) == (pin.width_px, pin.height_px)
            # No images in this log: the path the image would have, the LiDAR time and pose.
            lidar_ns = f.token.rsplit(":", 1)[1]
            assert cam.image_path == av2_sensor_log / "sensors" / "cameras" / cam.name / f"{lidar_ns}.jpg"
            assert not cam.has_image
            assert cam.timestamp == f.timestamp
            np.testing.assert_array_equal(cam.global_from_ego, f.global_from_ego)
    assert (frames[0].cameras[0].width, frames[0].cameras[0].height) == (1550, 2048)  # portrait


def test_projection_equals_av2(ds: AV2Dataset, frames, loader, av2_sensor_log: Path):
    # av2: uv = (K p_cam)[:2] / z with no half-pixel offset; we pass K unchanged, so uv agree.
    f = frames[0]
    pts = np.concatenate([f.boxes.boxes[:, :3], ds.load_points(f.lidar)[::50, :3].astype(np.float64)])
    n_boxes_seen = 0
    for j, cam in enumerate(f.cameras):
        pin = loader.get_log_pinhole_camera(av2_sensor_log.name, cam.name)
        uv_ref, pts_cam_ref, valid_ref = pin.project_ego_to_img(pts)
        uv, depth, mask = project_points(pts, f.cam_from_key_ego(j), cam.K, (cam.width, cam.height))
        np.testing.assert_allclose(depth, pts_cam_ref[:, 2], atol=1e-9)
        assert valid_ref.sum() > 100, cam.name
        assert np.all(mask[valid_ref])  # av2 keeps [0, W-1) x [0, H-1); we keep [0, W) x [0, H)
        np.testing.assert_allclose(uv[mask], uv_ref[mask], rtol=0, atol=0.01)
        n_boxes_seen += int(mask[: len(f.boxes)].sum())
    assert n_boxes_seen > 20  # cuboid centres, not only LiDAR points, were compared


def test_velocities(frames, annotations, loader, av2_sensor_log: Path):
    track_len = annotations.groupby("track_uuid").size()
    for f in frames:
        b = f.boxes
        n_obs = track_len.loc[list(b.instance_id)].to_numpy()
        v = b.boxes[:, VX : VY + 1]
        assert np.isfinite(v[n_obs >= 2]).all() and np.isnan(v[n_obs == 1]).all()
        speed = np.hypot(v[:, 0], v[:, 1])
        assert np.nanmax(speed) < 50.0
        static = np.isin(b.category, ["BOLLARD", "CONSTRUCTION_CONE"])
        assert static.any() and np.nanmax(speed[static]) < 0.5  # annotation jitter only

    # Reference for the fastest boxes: central difference of the city-frame centre, av2 poses.
    f = frames[1]
    ts = int(f.token.rsplit(":", 1)[1])
    all_ts = np.unique(annotations["timestamp_ns"].to_numpy())
    k = int(np.searchsorted(all_ts, ts))
    t_prev, t_next = int(all_ts[k - 1]), int(all_ts[k + 1])
    ego = {t: loader.get_city_SE3_ego(av2_sensor_log.name, t) for t in (ts, t_prev, t_next)}
    speed = np.nan_to_num(np.hypot(f.boxes.boxes[:, VX], f.boxes.boxes[:, VY]))
    for i in np.argsort(-speed)[:5]:
        rows = annotations[annotations["track_uuid"] == f.boxes.instance_id[i]].set_index("timestamp_ns")
        xyz = rows[["tx_m", "ty_m", "tz_m"]].to_numpy(float)
        centre = {t: ego[t].transform_point_cloud(xyz[rows.index == t])[0] for t in (t_prev, t_next)}
        v_city = (centre[t_next] - centre[t_prev]) / ((t_next - t_prev) * 1e-9)
        v_ego = ego[ts].rotation.T @ v_city
        np.testing.assert_allclose(f.boxes.boxes[i, VX : VY + 1], v_ego[:2], atol=1e-6)
    assert speed.max() > 3.0  # the log has moving vehicles: the check above is not vacuous


def _symlink_log(src: Path, dst: Path) -> None:
    """A copy of log ``src`` at ``dst`` made of symlinks, with a real ``sensors/cameras`` to write into."""
    (dst / "sensors" / "cameras").mkdir(parents=True)
    for p in src.iterdir():
        if p.name != "sensors":
            os.symlink(p, dst / p.name)
    for p in (src / "sensors").iterdir():
        os.symlink(p, dst / "sensors" / p.name)


def test_images_in_a_copy_of_the_log(tmp_path: Path, loader, av2_sensor_log: Path):
    from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader
    from av2.utils.io import read_feather
    from PIL import Image

    log_id = av2_sensor_log.name
    _symlink_log(av2_sensor_log, tmp_path / "val" / log_id)
    lidar_ns = loader.get_ordered_log_lidar_timestamps(log_id)[0]
    pose_ns = np.sort(read_feather(av2_sensor_log / "city_SE3_egovehicle.feather")["timestamp_ns"].to_numpy())
    # ring_front_center: an image at a pose-table time 5..16 ms after the sweep (exact pose lookup);
    # ring_side_left: 3 ms before it, at a time the pose table lacks (interpolated pose).
    near = pose_ns[(pose_ns > lidar_ns + 5_000_000) & (pose_ns < lidar_ns + 16_000_000)]
    assert near.size, "no pose 5-16 ms after the sweep"
    stamps = {"ring_front_center": int(near[0]), "ring_side_left": lidar_ns - 3_000_001}
    assert stamps["ring_side_left"] not in set(pose_ns.tolist())
    for cam, ts in stamps.items():
        pin = loader.get_log_pinhole_camera(log_id, cam)
        (tmp_path / "val" / log_id / "sensors" / "cameras" / cam).mkdir()
        Image.new("RGB", (pin.width_px, pin.height_px)).save(
            tmp_path / "val" / log_id / "sensors" / "cameras" / cam / f"{ts}.jpg"
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AV2Dataset(tmp_path, split="val")
        f = ds.keyframes(log_id)[0]
    (msg,) = [str(w.message) for w in caught if "has no images in" in str(w.message)]
    missing = [c for c in RING_CAMERAS if c not in stamps]
    assert all(f"sensors/cameras/{c}" in msg for c in missing)
    assert not any(f"sensors/cameras/{c}" in msg for c in stamps)

    copy_loader = AV2SensorDataLoader(data_dir=tmp_path / "val", labels_dir=tmp_path / "val")
    cams = {c.name: c for c in f.cameras}
    for cam, ts in stamps.items():
        c = cams[cam]
        assert c.has_image and c.image_path == copy_loader.get_closest_img_fpath(log_id, cam, lidar_ns)
        assert c.timestamp == ns_to_us(ts) == round(ts / 1000) and c.token == f"{log_id}:{cam}:{ts}"
    # Exact pose at the image's own time, as av2's get_city_SE3_ego gives it.
    np.testing.assert_allclose(
        cams["ring_front_center"].global_from_ego,
        loader.get_city_SE3_ego(log_id, stamps["ring_front_center"]).transform_matrix,
        atol=1e-12,
    )
    # Interpolated pose: translation between the bracketing poses, not equal to the sweep's.
    ts = stamps["ring_side_left"]
    i = int(np.searchsorted(pose_ns, ts))
    a, b = (loader.get_city_SE3_ego(log_id, int(pose_ns[j])).translation for j in (i - 1, i))
    w = (ts - pose_ns[i - 1]) / (pose_ns[i] - pose_ns[i - 1])
    np.testing.assert_allclose(cams["ring_side_left"].global_from_ego[:3, 3], (1 - w) * a + w * b, atol=1e-9)
    assert not np.allclose(cams["ring_side_left"].global_from_ego, f.global_from_ego, atol=1e-6)
    # key_ego_from_cam chains through the image's own ego pose (a few cm at urban speed).
    front = cams["ring_front_center"]
    shift = np.linalg.norm(f.key_ego_from_cam(front)[:3, 3] - front.ego_from_cam[:3, 3])
    assert 0 < shift < 0.5
    for cam in missing:
        assert not cams[cam].has_image and cams[cam].timestamp == f.timestamp
