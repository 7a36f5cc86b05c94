"""av2's own tracking evaluation (``av2.evaluation.tracking``, TrackEval's HOTA and CLEAR) of our tracks, on the
synthetic AV2 world (conftest's ``av2_tiny``: its val log, 4 sweeps at 10 Hz, no map so no ROI filter).

GT boxes written as tracks with their true ids (through the global frame and back, as a tracker's output travels)
must score perfectly; two tracks whose ids are swapped halfway must cost identity (IDSW, AssA, HOTA) and nothing
else; the frame av2 is handed (ego, or the city) must not change its numbers; GT boxes as detections without ids,
tracked by ``tracker=kalman`` (:func:`trainer.eval.av2_tracking.track_and_score_av2`), must score high.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("av2")
pytest.importorskip("trackeval")

from bevlabels.datasets.av2 import AV2_CLASSES, AV2Dataset  # noqa: E402
from trainer.eval import av2_tracking  # noqa: E402
from trainer.eval.av2_tracking import run_av2_tracking_eval, track_and_score_av2  # noqa: E402
from trainer.nusc_results import sample_results  # noqa: E402

RANGE = av2_tracking.MAX_RANGE_M


@pytest.fixture(scope="module")
def val(av2_tiny):
    ds = AV2Dataset(av2_tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds, ds.keyframes(ds.scenes("val")[0])


def _scored(f):
    """The keyframe's GT boxes av2 scores: one of its 26 categories, a LiDAR point."""
    b = f.boxes
    return b.select(np.array([c is not None for c in b.detection_class]) & (b.num_lidar_pts > 0))


def _detections(frames):
    """Each keyframe's scored GT boxes as detection results (global frame, score 1, no velocity)."""
    out = {}
    for f in frames:
        sel = _scored(f)
        boxes = sel.boxes.copy()
        boxes[:, 7:9] = 0.0
        labels = np.array([AV2_CLASSES.index(c) for c in sel.detection_class], dtype=np.int64)
        out[f.token] = sample_results(f.token, boxes, np.ones(len(sel)), labels, f.global_from_ego, AV2_CLASSES)
    return out


def _tracks(frames, ids=lambda k, f, ids: ids):
    """The scored GT boxes as tracking results, each with its instance id (``ids(k, frame, ids)`` may change them)."""
    dets = _detections(frames)
    out = {}
    for k, f in enumerate(frames):
        tids = ids(k, f, list(_scored(f).instance_id))
        out[f.token] = [
            {**d, "tracking_id": t, "tracking_name": d["detection_name"], "tracking_score": d["detection_score"]}
            for d, t in zip(dets[f.token], tids)
        ]
    return out


def _in_range(f):
    sel = _scored(f)
    return sel.select(np.hypot(sel.boxes[:, 0], sel.boxes[:, 1]) <= RANGE)


@pytest.fixture(scope="module")
def perfect(val, tmp_path_factory):
    ds, frames = val
    out = tmp_path_factory.mktemp("av2_tracking_gt")
    return run_av2_tracking_eval(ds, "val", frames, _tracks(frames), out), out


def test_gt_tracks_score_perfectly(perfect, val):
    summary, out = perfect
    _, frames = val
    in_range = [_in_range(f) for f in frames]
    present = sorted({c for b in in_range for c in b.detection_class})
    assert summary["gt_categories"] == [c for c in av2_tracking.av2_categories() if c in present]
    assert len(present) >= 8
    for cat in present:
        row = summary["per_category"][cat]
        for key in ("HOTA", "HOTA_recall_mean", "AMOTA", "MOTA", "DetA", "AssA"):
            assert row[key] == pytest.approx(1.0, abs=1e-9), (cat, key, row)
        assert row["IDSW"] == row["CLR_FP"] == row["CLR_FN"] == 0, (cat, row)
    for key in ("HOTA", "AMOTA", "MOTA", "AssA", "DetA"):
        assert summary[key] == pytest.approx(1.0, abs=1e-9), key
    assert summary["IDSW"] == 0 and summary["combined"]["IDSW"] == 0
    # av2 scored exactly the GT within its 50 m of the ego (the ego frame: ranges measured from the origin)
    assert summary["num_gt"] == summary["CLR_TP"] == sum(len(b) for b in in_range)
    assert summary["num_gt_tracks"] == len({i for b in in_range for i in b.instance_id})
    # over av2's 26 categories, those without GT count 0
    assert summary["over_all_categories"]["HOTA"] == pytest.approx(len(present) / 26)
    assert summary["roi"]["on"] is False and "no usable map" in summary["roi"]["reason"]
    assert summary["evaluated"]["keyframes"] == 4 and not summary["evaluated"]["partial"]
    assert json.loads((out / "metrics_summary.json").read_text())["HOTA"] == summary["HOTA"]
    # what av2 was handed: ego-frame tracks equal to the annotation table's cuboids, box for box
    preds = pickle.loads((out / av2_tracking.PREDICTIONS_FILE).read_bytes())
    labels = pickle.loads((out / av2_tracking.LABELS_FILE).read_bytes())
    assert list(preds) == list(labels) == [frames[0].scene]
    for p, g in zip(preds[frames[0].scene], labels[frames[0].scene]):
        assert p["timestamp_ns"] == g["timestamp_ns"] and p["ego_translation_m"] == [0.0, 0.0, 0.0]
        pi, gi = np.argsort(p["track_id"]), np.argsort(g["track_id"])
        np.testing.assert_array_equal(p["track_id"][pi], g["track_id"][gi])
        np.testing.assert_allclose(p["translation_m"][pi], g["translation_m"][gi], atol=1e-6)
        np.testing.assert_allclose(p["size"][pi], g["size"][gi], atol=1e-6)
        np.testing.assert_allclose(np.cos(p["yaw"][pi] - g["yaw"][gi]), 1.0, atol=1e-9)


def _swap_pair(frames):
    """Two tracks of one category scored (in range, with a LiDAR point) at every keyframe."""
    per = [dict(zip(b.instance_id, b.detection_class)) for b in (_in_range(f) for f in frames)]
    common = sorted(set.intersection(*(set(p) for p in per)))
    by_class: dict[str, list] = {}
    for i in common:
        by_class.setdefault(per[0][i], []).append(i)
    cat, ids = max(by_class.items(), key=lambda kv: len(kv[1]))
    assert len(ids) >= 2, by_class
    return cat, ids[0], ids[1]


@pytest.fixture(scope="module")
def swapped(val, tmp_path_factory):
    ds, frames = val
    cat, a, b = _swap_pair(frames)
    half = len(frames) // 2

    def swap(k, f, ids):
        return [{a: b, b: a}.get(i, i) if k >= half else i for i in ids]

    out = tmp_path_factory.mktemp("av2_tracking_swapped")
    return run_av2_tracking_eval(ds, "val", frames, _tracks(frames, swap), out), out, cat


def test_swapped_ids_cost_identity_only(swapped, perfect):
    summary, _, cat = swapped
    row, best = summary["per_category"][cat], perfect[0]["per_category"][cat]
    assert row["IDSW"] == 2 and summary["IDSW"] == 2  # each of the two GT tracks switches once
    assert row["AssA"] < best["AssA"] - 0.05 and row["HOTA"] < best["HOTA"] - 0.02, row
    assert row["MOTA"] == pytest.approx(1 - 2 / row["num_gt"]) and row["AMOTA"] < 1.0
    assert row["DetA"] == pytest.approx(1.0) and row["CLR_FP"] == row["CLR_FN"] == 0  # the boxes are all right
    assert summary["HOTA"] < perfect[0]["HOTA"] and summary["AssA"] < perfect[0]["AssA"]
    others = [c for c in summary["gt_categories"] if c != cat]
    assert all(summary["per_category"][c]["HOTA"] == pytest.approx(1.0) for c in others)


def test_the_frame_av2_is_handed_does_not_change_its_numbers(swapped, val, tmp_path):
    """av2's metrics compare boxes within a timestamp: the same tracks and GT moved to the city frame (with the
    ego's city position as ``ego_translation_m``, what the range filter subtracts) give the same numbers."""
    summary, out, _ = swapped
    _, frames = val
    pose = {f.token.rpartition(":")[2]: np.asarray(f.global_from_ego) for f in frames}

    def to_city(sequences):
        moved = {}
        for seq, fs in sequences.items():
            moved[seq] = []
            for fr in fs:
                T = pose[str(fr["timestamp_ns"])]
                yaw = np.arctan2(T[1, 0], T[0, 0])
                moved[seq].append(
                    {
                        **fr,
                        "translation_m": fr["translation_m"] @ T[:3, :3].T + T[:3, 3],
                        "yaw": fr["yaw"] + yaw,
                        "ego_translation_m": [float(v) for v in T[:3, 3]],
                    }
                )
        return moved

    preds = to_city(pickle.loads((out / av2_tracking.PREDICTIONS_FILE).read_bytes()))
    labels = to_city(pickle.loads((out / av2_tracking.LABELS_FILE).read_bytes()))
    tracking_eval, _, _ = av2_tracking._av2_tracking()
    with av2_tracking._inside(tmp_path, tmp_path / "log.txt"), av2_tracking._trackeval_plots(False):
        _, tuned, mean = tracking_eval.evaluate(preds, labels, "HOTA", RANGE, None, "city/summary.json")
    for cat, row in summary["per_category"].items():
        assert tuned[cat] == pytest.approx(row["HOTA"], abs=1e-12), cat
        assert mean[cat] == pytest.approx(row["HOTA_recall_mean"], abs=1e-12), cat


def test_kalman_on_gt_detections_scores_high(val, tmp_path):
    ds, frames = val
    summary = track_and_score_av2(ds, frames, _detections(frames), "kalman", tmp_path, "val")
    assert summary["tracker"] == "kalman" and summary["tracker_config"]["name"] == "kalman"
    # measured: HOTA 0.984 (the filtered boxes: LocA 0.985), AMOTA = MOTA 0.998 (one GT box missed), no IDSW
    assert summary["HOTA"] >= 0.95 and summary["AMOTA"] >= 0.95 and summary["MOTA"] >= 0.95, summary
    assert summary["IDSW"] == 0, summary
    table = av2_tracking.format_av2_tracking_table(summary)
    assert "av2.evaluation.tracking, kalman" in table and "REGULAR_VEHICLE" in table
    on_disk = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert on_disk["tracker"] == "kalman" and on_disk["HOTA"] == summary["HOTA"]
    tracks = json.loads((tmp_path / "results_av2_tracking.json").read_text())["results"]
    assert set(tracks) == {f.token for f in frames}
    assert (tmp_path / "png" / f"{frames[0].scene}.png").stat().st_size > 0
    # the oracle-id ceiling of GT boxes as detections: every box its own true id, a perfect score
    oracle = summary["oracle_ids"]
    assert oracle["AMOTA"] >= 0.999 and oracle["HOTA"] >= 0.999 and oracle["IDSW"] == 0, oracle
    assert "of the oracle-id ceiling" in table


def test_oracle_ids_take_the_nearest_gt_of_their_category(val):
    """A box beyond 2 m of every GT box, or of another category, or a second box on a taken GT box, gets an id of
    its own; the true boxes get their track_uuid."""
    ds, frames = val
    dets = _detections(frames[:1])
    tok = frames[0].token
    truth = [str(t) for t in _scored(frames[0]).instance_id]
    d0 = dets[tok][0]
    moved = {**d0, "translation": [d0["translation"][0] + 2.5, *d0["translation"][1:]], "detection_score": 0.5}
    twin = {**d0, "detection_score": 0.4}
    other = next(c for c in AV2_CLASSES if c != d0["detection_name"])
    wrong = {**d0, "detection_name": other, "detection_score": 0.3}
    res = av2_tracking.oracle_id_results_av2(frames[:1], {tok: dets[tok] + [moved, twin, wrong]})[tok]
    ids = [b["tracking_id"] for b in res]
    assert ids[: len(truth)] == truth
    assert all(i.startswith("unmatched-") for i in ids[len(truth) :])


def test_missing_or_foreign_keyframes_are_refused(val, tmp_path):
    ds, frames = val
    tracks = _tracks(frames)
    with pytest.raises(ValueError, match=r"miss 1 of the 4 keyframes"):
        run_av2_tracking_eval(ds, "val", frames[:3], {t: tracks[t] for t in list(tracks)[:3]}, tmp_path)
    with pytest.raises(KeyError, match="not among the evaluated keyframes"):
        run_av2_tracking_eval(ds, "val", frames[:3], tracks, tmp_path)
    with pytest.raises(KeyError, match="no tracking result for keyframe"):
        run_av2_tracking_eval(ds, "val", frames, {t: tracks[t] for t in list(tracks)[:3]}, tmp_path)


@pytest.mark.realdata
def test_the_roi_filter_keeps_what_av2_detection_keeps(av2_sensor_log, tmp_path):
    """On the real log (with its map, the ego heading -32 deg): av2's tracking ROI filter, handed ego-frame boxes,
    keeps exactly the GT that av2's detection ROI mask (``compute_objects_in_roi_mask`` on the annotation cuboids
    and their ``city_SE3_ego``) keeps; handed city-frame boxes it would rotate them about the ego and keep others."""
    from av2.evaluation.detection.utils import compute_objects_in_roi_mask, load_mapped_avm_and_egoposes

    from trainer.av2_results import CUBOID_COLUMNS, read_gt

    root = av2_sensor_log.parent
    ds = AV2Dataset(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no images
        frames = ds.keyframes(ds.scenes()[0])
    summary = run_av2_tracking_eval(ds, "val", frames, _tracks(frames), tmp_path)
    assert summary["roi"] == {"on": True, "reason": "on: every evaluated log has its map"}
    assert summary["HOTA"] == pytest.approx(1.0) and summary["AMOTA"] == pytest.approx(1.0)

    log_id = frames[0].scene
    gts = read_gt(root, [f.token for f in frames])
    gts = gts[gts["category"].isin(av2_tracking.av2_categories()) & (gts["num_interior_pts"] > 0)]
    gts = gts[np.hypot(gts["tx_m"], gts["ty_m"]) <= RANGE]
    avms, poses = load_mapped_avm_and_egoposes([log_id], root)
    in_roi = sum(
        int(
            compute_objects_in_roi_mask(
                rows[list(CUBOID_COLUMNS)].to_numpy(), poses[log_id][int(ts)], avms[log_id]
            ).sum()
        )
        for ts, rows in gts.groupby("timestamp_ns")
    )
    assert 0 < in_roi < len(gts)
    assert summary["num_gt"] == summary["CLR_TP"] == in_roi

    tracking_eval, _, _ = av2_tracking._av2_tracking()
    labels = pickle.loads((tmp_path / av2_tracking.LABELS_FILE).read_bytes())
    pose = {f.token.rpartition(":")[2]: np.asarray(f.global_from_ego) for f in frames}
    city = {
        log_id: [
            {
                **fr,
                "translation_m": fr["translation_m"] @ pose[str(fr["timestamp_ns"])][:3, :3].T
                + pose[str(fr["timestamp_ns"])][:3, 3],
                "ego_translation_m": [float(v) for v in pose[str(fr["timestamp_ns"])][:3, 3]],
            }
            for fr in labels[log_id]
        ]
    }
    kept = tracking_eval.filter_drivable_area(tracking_eval.filter_max_dist(city, RANGE), str(root))
    assert sum(len(fr["translation_m"]) for fr in kept[log_id]) != in_roi, "av2 0.3.6's city-frame ROI bug is gone"
