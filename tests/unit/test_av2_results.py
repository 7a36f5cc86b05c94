"""trainer.av2_results: our ego-frame boxes as av2's detection table, headings as av2 reads them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av2")

from bevlabels.geometry import YAW, boxes_from_av2_cuboids, wrap_angle, yaw_to_quat  # noqa: E402
from trainer import av2_results as A  # noqa: E402

LOG = "0000-log"
CLASSES = ("REGULAR_VEHICLE", "PEDESTRIAN", "BOLLARD")


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = np.zeros((n, 9))
    b[:, :3] = rng.uniform(-50, 50, (n, 3))
    b[:, 3:6] = rng.uniform(0.3, 6.0, (n, 3))
    b[:, YAW] = rng.uniform(-3 * np.pi, 3 * np.pi, n)  # any angle, also beyond +-pi
    b[:, 7:] = np.nan  # velocity unknown: not part of av2's format
    return b


def test_yaw_to_quaternion_round_trips_through_av2s_own_reading():
    from av2.evaluation.detection.constants import DistanceType
    from av2.evaluation.detection.utils import distance
    from av2.geometry.geometry import mat_to_xyz, quat_to_mat

    yaw = np.concatenate([np.linspace(-np.pi, np.pi, 181), _boxes(50)[:, YAW]])
    q = A.yaw_to_quat_wxyz(yaw)  # (N, 4)
    assert q.shape == (len(yaw), 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    read = mat_to_xyz(quat_to_mat(q))[:, 2]  # what av2's AOE reads (utils.distance, ORIENTATION)
    np.testing.assert_allclose(np.cos(read - yaw), 1.0, atol=1e-12)
    np.testing.assert_allclose(A.quat_wxyz_to_yaw(q), read)
    # the same rotation as our own (w, x, y, z) quaternion, up to the sign of q
    ours = yaw_to_quat(yaw)
    np.testing.assert_allclose(np.abs((q * ours).sum(1)), 1.0, atol=1e-12)
    # av2's orientation error: 0 against itself, pi for the opposite heading, the angle between otherwise
    np.testing.assert_allclose(distance(q, q, DistanceType.ORIENTATION), 0.0, atol=1e-9)
    flipped = A.yaw_to_quat_wxyz(yaw + np.pi)
    np.testing.assert_allclose(distance(flipped, q, DistanceType.ORIENTATION), np.pi, atol=1e-9)
    turned = A.yaw_to_quat_wxyz(yaw + 0.3)
    np.testing.assert_allclose(distance(turned, q, DistanceType.ORIENTATION), 0.3, atol=1e-9)


def test_detection_table_is_av2s_format_in_the_ego_frame():
    from av2.evaluation.detection.eval import DETECTION_UUID_COLUMNS, DTS_COLUMNS
    from av2.structures.cuboid import Cuboid

    assert A.DETECTION_COLUMNS == tuple(DETECTION_UUID_COLUMNS) + tuple(DTS_COLUMNS)
    boxes, scores, labels = _boxes(6), np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.3]), np.array([0, 1, 2, 0, 1, 2])
    preds = [
        {"sample_token": f"{LOG}:100", "boxes": boxes, "scores": scores, "labels": labels},
        {"sample_token": f"{LOG}:200", "boxes": np.zeros((0, 9)), "scores": np.zeros(0), "labels": np.zeros(0)},
    ]
    df = A.make_detections(preds, CLASSES)
    assert tuple(df.columns) == A.DETECTION_COLUMNS and len(df) == 6
    assert df["timestamp_ns"].dtype == np.int64 and set(df["timestamp_ns"]) == {100} and set(df["log_id"]) == {LOG}
    order = np.argsort(-scores, kind="stable")  # best first
    np.testing.assert_array_equal(df["score"], scores[order])
    assert list(df["category"]) == [CLASSES[k] for k in labels[order]]
    # no pose applied: av2's centre, size and heading are our ego-frame box's, exactly
    np.testing.assert_array_equal(df[["tx_m", "ty_m", "tz_m"]].to_numpy(), boxes[order, :3])
    np.testing.assert_array_equal(df[["length_m", "width_m", "height_m"]].to_numpy(), boxes[order, 3:6])
    # and av2's own Cuboid of each row is our box again (boxes_from_av2_cuboids: the adapter's reader)
    params = df[list(A.CUBOID_COLUMNS)].to_numpy()
    back = boxes_from_av2_cuboids([Cuboid.from_numpy(p, "x", 100) for p in params])
    np.testing.assert_allclose(back[:, :6], boxes[order, :6], atol=1e-9)
    np.testing.assert_allclose(wrap_angle(back[:, YAW] - boxes[order, YAW]), 0.0, atol=1e-9)

    empty = A.make_detections([], CLASSES)
    assert tuple(empty.columns) == A.DETECTION_COLUMNS and len(empty) == 0


def test_tokens_and_bad_predictions_are_refused():
    assert A.parse_token(f"{LOG}:315966265259836000") == (LOG, 315966265259836000)
    for bad in ("no-timestamp", ":123", f"{LOG}:12a"):
        with pytest.raises(ValueError, match="not an AV2 keyframe token"):
            A.parse_token(bad)
    b = _boxes(2)
    b[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        A.make_detections([{"sample_token": f"{LOG}:1", "boxes": b, "scores": [1, 1], "labels": [0, 0]}], CLASSES)
    with pytest.raises(ValueError, match="labels outside"):
        A.make_detections([{"sample_token": f"{LOG}:1", "boxes": _boxes(1), "scores": [1], "labels": [3]}], CLASSES)


def test_map_files_av2s_roi_filter_needs(tmp_path):
    log_dir = tmp_path / LOG
    assert len(A.map_files_missing(log_dir)) == 3
    (log_dir / "map").mkdir(parents=True)
    (log_dir / "map" / f"log_map_archive_{LOG}____PIT_city_1.json").write_text("{}")
    (log_dir / "map" / f"{LOG}_ground_height_surface____PIT.npy").write_bytes(b"")
    assert A.map_files_missing(log_dir) == ["map/*___img_Sim2_city.json"]
    ok, why = A.logs_have_maps(tmp_path, [LOG])
    assert not ok and LOG in why and "img_Sim2_city" in why
    (log_dir / "map" / f"{LOG}___img_Sim2_city.json").write_text("{}")
    assert A.logs_have_maps(tmp_path, [LOG]) == (True, "")
