"""AV2Dataset on tiny hand-made AV2 logs: bad input, and velocities with hand-computed answers.

The log written by :func:`write_log` has 3 sweeps 0.1 s apart. The ego drives along city +y with
heading 90 deg (its x axis is city +y), so a city-frame velocity ``(vx, vy)`` reads ``(vy, -vx)``
in the ego frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from bevlabels.datasets.av2 import AV2_CLASSES, RING_CAMERAS, AV2Dataset
from bevlabels.datasets.base import DatasetError
from bevlabels.geometry import VX, VY, YAW

pd = pytest.importorskip("pandas")
pytest.importorskip("av2")
# These hand-made logs have no images (and some no labels); tests that care record the warnings.
pytestmark = pytest.mark.filterwarnings("ignore:AV2 log:UserWarning")

LOG = "00000000-0000-0000-0000-000000000001"
T0 = 315_966_265_000_000_000  # ns
DT = 100_000_000  # 0.1 s between sweeps
EGO_SPEED = 5.0  # m/s along city +y
YAW_EGO = np.pi / 2


def _feather(path: Path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_feather(path)


def _quat_z(yaw: float) -> tuple[float, float, float, float]:
    return np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)


def ego_pose(ts: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` of city_from_ego at ``ts``."""
    c, s = np.cos(YAW_EGO), np.sin(YAW_EGO)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), np.array([100.0, EGO_SPEED * (ts - T0) * 1e-9, 0.0])


def write_log(
    root: Path,
    *,
    annotations: bool = True,
    n_sweeps: int = 3,
    tracks: dict[str, list[tuple[int, tuple[float, float, float]]]] | None = None,
) -> Path:
    """A minimal AV2 log under ``root/LOG``; ``tracks`` maps a track id to ``[(sweep index, city xyz)]``."""
    log = root / LOG
    stamps = [T0 + k * DT for k in range(n_sweeps)]
    qw, qx, qy, qz = _quat_z(YAW_EGO)
    _feather(
        log / "city_SE3_egovehicle.feather",
        {
            "timestamp_ns": stamps,
            "qw": [qw] * n_sweeps, "qx": [qx] * n_sweeps, "qy": [qy] * n_sweeps, "qz": [qz] * n_sweeps,
            "tx_m": [ego_pose(t)[1][0] for t in stamps], "ty_m": [ego_pose(t)[1][1] for t in stamps],
            "tz_m": [0.0] * n_sweeps,
        },
    )  # fmt: skip
    n_cam = len(RING_CAMERAS)
    _feather(
        log / "calibration" / "intrinsics.feather",
        {
            "sensor_name": list(RING_CAMERAS), "fx_px": [1000.0] * n_cam, "fy_px": [1000.0] * n_cam,
            "cx_px": [1024.0] * n_cam, "cy_px": [775.0] * n_cam, "k1": [0.0] * n_cam, "k2": [0.0] * n_cam,
            "k3": [0.0] * n_cam, "height_px": [1550] * n_cam, "width_px": [2048] * n_cam,
        },
    )  # fmt: skip
    sensors = list(RING_CAMERAS) + ["up_lidar", "down_lidar"]
    n = len(sensors)
    _feather(
        log / "calibration" / "egovehicle_SE3_sensor.feather",
        {
            "sensor_name": sensors, "qw": [0.5] * n, "qx": [-0.5] * n, "qy": [0.5] * n, "qz": [-0.5] * n,
            "tx_m": [1.5] * n, "ty_m": [0.0] * n, "tz_m": [1.4] * n,
        },
    )  # fmt: skip
    for ts in stamps:
        _feather(
            log / "sensors" / "lidar" / f"{ts}.feather",
            {
                "x": np.array([1.0, 2.0, 3.0], np.float16), "y": np.array([0.5, 0.0, -0.5], np.float16),
                "z": np.array([0.1, 0.2, 0.3], np.float16), "intensity": np.array([0, 128, 255], np.uint8),
                "laser_number": np.array([0, 31, 63], np.uint8), "offset_ns": np.array([0, 1, 2], np.int32),
            },
        )  # fmt: skip
    if annotations:
        rows = {c: [] for c in ("timestamp_ns", "track_uuid", "category", "tx_m", "ty_m", "tz_m")}
        for track, obs in (tracks or {}).items():
            for k, xyz_city in obs:
                R, t = ego_pose(stamps[k])
                x, y, z = R.T @ (np.asarray(xyz_city) - t)  # annotations are in the ego frame
                for c, val in zip(rows, (stamps[k], track, "REGULAR_VEHICLE", x, y, z)):
                    rows[c].append(val)
        m = len(rows["track_uuid"])
        yaw = np.pi / 6 - YAW_EGO  # every object heads 30 deg from city +x
        rows.update(
            length_m=[4.0] * m, width_m=[2.0] * m, height_m=[1.5] * m,
            qw=[_quat_z(yaw)[0]] * m, qx=[0.0] * m, qy=[0.0] * m, qz=[_quat_z(yaw)[3]] * m,
            num_interior_pts=list(range(m)),
        )  # fmt: skip
        if m:
            rows["category"][-1] = "ANIMAL"  # annotated, but not a benchmark class
        _feather(log / "annotations.feather", rows)
    return log


def _recording(fn, *args, **kwargs):
    """``fn(*args)`` with warnings recorded: returns ``(result, [warning messages])``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught]


# -- bad input ----------------------------------------------------------------------------------


def test_classes_are_the_av2_benchmark_categories():
    from av2.evaluation import SensorCompetitionCategories

    assert AV2Dataset.classes == AV2_CLASSES == tuple(c.value for c in SensorCompetitionCategories)
    assert len(AV2_CLASSES) == 26 and AV2Dataset.name == "av2"


def test_missing_root_names_it(tmp_path: Path):
    with pytest.raises(DatasetError, match=f"AV2 root not found.*{tmp_path / 'nope'}"):
        AV2Dataset(tmp_path / "nope")


def test_root_without_logs(tmp_path: Path):
    (tmp_path / "val" / "not-a-log").mkdir(parents=True)  # no pose table, no sensors folder
    (tmp_path / "README.txt").write_text("hi")
    with pytest.raises(DatasetError, match=f"no AV2 logs under {tmp_path}"):
        AV2Dataset(tmp_path)


def test_split_rules(tmp_path: Path):
    write_log(tmp_path / "val")
    assert AV2Dataset(tmp_path).scenes() == [LOG]
    assert AV2Dataset(tmp_path, split="val").scenes() == [LOG]
    assert AV2Dataset(tmp_path / "val").scenes() == [LOG]
    with pytest.raises(DatasetError, match=r"split 'test' not found.*\['val'\]"):
        AV2Dataset(tmp_path, split="test")
    with pytest.raises(DatasetError, match="no AV2 log 'other'"):
        AV2Dataset(tmp_path).keyframes("other")
    with pytest.raises(KeyError, match="no keyframe with token 'other:1'"):
        AV2Dataset(tmp_path).frame("other:1")


def test_log_without_images_warns_once_and_uses_placeholders(tmp_path: Path):
    log_dir = write_log(tmp_path, tracks={"a": [(0, (110.0, 20.0, 0.5))]})
    ds = AV2Dataset(tmp_path)
    frames, messages = _recording(ds.keyframes, LOG)
    (msg,) = [m for m in messages if "has no images in" in m]
    assert LOG in msg and all(f"sensors/cameras/{c}" in msg for c in RING_CAMERAS)
    _, again = _recording(ds.keyframes, LOG)
    assert again == []  # once per log
    (f,) = frames  # only sweep 0 is annotated
    for cam in f.cameras:
        assert cam.image_path == log_dir / "sensors" / "cameras" / cam.name / f"{T0}.jpg"
        assert not cam.has_image and cam.timestamp == f.timestamp == T0 // 1000
        np.testing.assert_array_equal(cam.global_from_ego, f.global_from_ego)
        assert (cam.width, cam.height) == (2048, 1550)


def test_missing_annotations_warns_and_gives_empty_boxes(tmp_path: Path):
    write_log(tmp_path, annotations=False)
    frames, messages = _recording(AV2Dataset(tmp_path).keyframes, LOG)
    assert any(f"AV2 log {LOG} has no annotations" in m and "annotations.feather" in m for m in messages)
    assert len(frames) == 3 and all(len(f.boxes) == 0 and f.lidar.is_key for f in frames)


def test_unannotated_sweep_is_not_a_keyframe(tmp_path: Path):
    write_log(tmp_path, tracks={"a": [(0, (110.0, 20.0, 0.5)), (2, (110.0, 20.0, 0.5))]})
    ds = AV2Dataset(tmp_path)
    frames, _ = _recording(ds.keyframes, LOG)
    assert [f.timestamp for f in frames] == [T0 // 1000, (T0 + 2 * DT) // 1000]
    assert [s.is_key for s in ds.sweeps(LOG)] == [True, False, True]
    # prev_sweeps: every earlier sweep, newest first, key or not.
    assert [s.timestamp for s in frames[1].prev_sweeps] == [(T0 + DT) // 1000, T0 // 1000]
    assert AV2Dataset(tmp_path, n_prev_sweeps=1).keyframes(LOG)[1].prev_sweeps[0].timestamp == (T0 + DT) // 1000


def test_load_points_columns_and_errors(tmp_path: Path):
    log_dir = write_log(tmp_path, annotations=False)
    ds = AV2Dataset(tmp_path)
    sweeps = ds.sweeps(LOG)
    pts = ds.load_points(sweeps[0])
    assert pts.dtype == np.float32 and pts.shape == (3, 5)
    np.testing.assert_array_equal(pts[:, 3:], [[0, 0], [128, 31], [255, 63]])  # intensity, ring

    path = log_dir / "sensors" / "lidar" / f"{T0 + DT}.feather"
    path.write_bytes(b"not a feather file")
    with pytest.raises(DatasetError, match=f"cannot read AV2 LiDAR sweep {path}"):
        ds.load_points(sweeps[1])
    _feather(path, {"x": [1.0], "y": [2.0], "z": [3.0]})
    with pytest.raises(DatasetError, match=r"lacks columns \['intensity', 'laser_number'\]"):
        ds.load_points(sweeps[1])
    path.unlink()
    with pytest.raises(DatasetError, match=f"AV2 LiDAR sweep not found: {path}"):
        ds.load_points(sweeps[1])


def test_missing_pose_table_or_calibration_names_the_file(tmp_path: Path):
    log_dir = write_log(tmp_path / "a", annotations=False)
    (log_dir / "city_SE3_egovehicle.feather").unlink()
    with pytest.raises(DatasetError, match="AV2 file not found: .*city_SE3_egovehicle.feather"):
        AV2Dataset(tmp_path / "a").keyframes(LOG)

    log_dir = write_log(tmp_path / "b", annotations=False)
    (log_dir / "calibration" / "intrinsics.feather").unlink()
    with pytest.raises(
        DatasetError, match=f"no calibration for camera 'ring_front_center' in {log_dir / 'calibration'}"
    ):
        AV2Dataset(tmp_path / "b").keyframes(LOG)

    log_dir = write_log(tmp_path / "c", annotations=False)
    for p in (log_dir / "sensors" / "lidar").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="has no LiDAR sweeps: no \\*.feather in .*sensors/lidar"):
        AV2Dataset(tmp_path / "c").keyframes(LOG)

    log_dir = write_log(tmp_path / "d")
    (log_dir / "annotations.feather").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read AV2 table .*annotations.feather"):
        AV2Dataset(tmp_path / "d").keyframes(LOG)


def test_pose_between_table_entries_is_interpolated(tmp_path: Path):
    log_dir = write_log(tmp_path, annotations=False)
    _feather(log_dir / "sensors" / "lidar" / f"{T0 + DT // 4}.feather", {c: [] for c in ("x", "y", "z")})
    sweeps = AV2Dataset(tmp_path).sweeps(LOG)
    np.testing.assert_allclose(sweeps[1].global_from_ego[:3, 3], ego_pose(T0 + DT // 4)[1], atol=1e-9)
    np.testing.assert_allclose(sweeps[1].global_from_ego[:3, :3], ego_pose(T0)[0], atol=1e-12)

    far = T0 + 10 * DT  # 0.8 s after the last pose: refused, not extrapolated
    _feather(log_dir / "sensors" / "lidar" / f"{far}.feather", {c: [] for c in ("x", "y", "z")})
    with pytest.raises(DatasetError, match=f"no ego pose near timestamp {far} ns"):
        AV2Dataset(tmp_path).sweeps(LOG)


# -- boxes and velocities, hand-computed ------------------------------------------------------


def test_boxes_and_velocities(tmp_path: Path):
    tracks = {
        # 2 m/s along city +x: every difference (forward, central, backward) gives (2, 0) in city.
        "steady": [(0, (110.0, 20.0, 0.5)), (1, (110.2, 20.0, 0.5)), (2, (110.4, 20.0, 0.5))],
        # accelerating along city +y: x(t) = 10 t^2 at t = 0, 0.1, 0.2 s -> 0, 0.1, 0.4 m.
        "accel": [(0, (90.0, 30.0, 0.5)), (1, (90.0, 30.1, 0.5)), (2, (90.0, 30.4, 0.5))],
        "parked": [(0, (95.0, 5.0, 0.5)), (1, (95.0, 5.0, 0.5)), (2, (95.0, 5.0, 0.5))],
        "once": [(1, (105.0, 12.0, 0.5))],
    }
    write_log(tmp_path, tracks=tracks)
    frames, _ = _recording(AV2Dataset(tmp_path).keyframes, LOG)
    to_ego = lambda v: (v[1], -v[0])  # noqa: E731  city (vx, vy) -> ego (vx, vy), ego heading 90 deg
    expected = {  # per keyframe: track -> city velocity
        0: {"steady": (2, 0), "accel": (0, 1.0), "parked": (0, 0)},  # forward differences
        1: {"steady": (2, 0), "accel": (0, 2.0), "parked": (0, 0), "once": (np.nan, np.nan)},  # central
        2: {"steady": (2, 0), "accel": (0, 3.0), "parked": (0, 0)},  # backward differences
    }
    for k, f in enumerate(frames):
        b = f.boxes
        assert set(b.instance_id) == set(expected[k])
        for i, track in enumerate(b.instance_id):
            np.testing.assert_allclose(b.boxes[i, [VX, VY]], to_ego(expected[k][track]), atol=1e-9)
            city_xyz = dict(tracks[track])[k]
            R, t = ego_pose(T0 + k * DT)
            np.testing.assert_allclose(b.boxes[i, :3], R.T @ (np.asarray(city_xyz) - t), atol=1e-9)
        np.testing.assert_allclose(b.boxes[:, YAW], np.pi / 6 - YAW_EGO, atol=1e-12)
        np.testing.assert_allclose(b.boxes[:, 3:6], [[4.0, 2.0, 1.5]] * len(b))
        assert b.detection_class == tuple(None if c == "ANIMAL" else c for c in b.category)
        assert b.token == tuple(f"{LOG}:{T0 + k * DT}:{u}" for u in b.instance_id)
    assert frames[1].boxes.category[-1] == "ANIMAL"  # the last row of the file

    # A neighbour further apart than max_velocity_gap_s is not used.
    frames, _ = _recording(AV2Dataset(tmp_path, max_velocity_gap_s=0.05).keyframes, LOG)
    assert np.isnan(frames[1].boxes.boxes[:, VX]).all()


def test_log_cache_is_bounded_and_warnings_stay_once_per_log(tmp_path: Path):
    import pickle

    write_log(tmp_path / "val")
    second = tmp_path / "val" / "00000000-0000-0000-0000-000000000002"
    (tmp_path / "val" / LOG).rename(second)
    write_log(tmp_path / "val")
    ds = AV2Dataset(tmp_path, cached_logs=1)
    _, first_pass = _recording(lambda: [ds.keyframes(s) for s in ds.scenes()])
    _, second_pass = _recording(lambda: [ds.keyframes(s) for s in ds.scenes()])  # re-indexed: evicted
    assert len(ds._logs) == 1 and len(first_pass) == 2 and second_pass == []  # images warning per log
    clone = pickle.loads(pickle.dumps(ds))  # as a dask worker gets it: without the log caches
    assert len(clone._logs) == 0 and [f.token for f in clone.keyframes(LOG)] == [f.token for f in ds.keyframes(LOG)]
