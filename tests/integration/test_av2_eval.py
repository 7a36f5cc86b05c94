"""av2's own detection evaluation of our predictions, on the real Argoverse 2 log (shared/realdata).

The log (``val/7fab2350-...``) has 2 LiDAR sweeps (our 2 keyframes), their annotations and the log's
map, no images. Its GT boxes, read through ``AV2Dataset`` and written as predictions through
``trainer.av2_results`` (score 1), must score AP 1 with ``av2.evaluation.detection.eval.evaluate``;
moved, turned or written in the wrong frame they must not. Only boxes av2 can evaluate are predicted
(``num_interior_pts > 0``: av2 drops GT without a LiDAR point, so a prediction of one is a false positive).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.realdata
pytest.importorskip("av2")

from bevlabels.datasets.av2 import AV2_CLASSES, AV2Dataset  # noqa: E402
from bevlabels.geometry import YAW, X, transform_boxes  # noqa: E402
from trainer.eval.av2_detection import run_av2_eval  # noqa: E402

N_JOBS = 1  # av2's spawn pool: one process is enough for 2 sweeps


def _frames(root: Path):
    ds = AV2Dataset(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no images; annotations without sweeps (see test_av2_realdata)
        return ds, ds.keyframes(ds.scenes()[0])


@pytest.fixture(scope="module")
def log_frames(av2_sensor_log: Path):
    return _frames(av2_sensor_log.parent)


def gt_predictions(frames, move=lambda boxes, frame: boxes):
    """Each keyframe's GT boxes that av2 evaluates (a benchmark class, a LiDAR point) as predictions, score 1."""
    preds = []
    for f in frames:
        b = f.boxes
        sel = b.select(np.array([c is not None for c in b.detection_class]) & (b.num_lidar_pts > 0))
        preds.append(
            {
                "sample_token": f.token,
                "boxes": move(sel.boxes.copy(), f),
                "scores": np.ones(len(sel)),
                "labels": np.array([AV2_CLASSES.index(c) for c in sel.detection_class], dtype=np.int64),
            }
        )
    return preds


@pytest.fixture(scope="module")
def gt_summary(log_frames):
    ds, frames = log_frames
    return run_av2_eval(ds, "val", frames, gt_predictions(frames), AV2_CLASSES, n_jobs=N_JOBS)


def test_gt_through_our_conversion_scores_perfectly(gt_summary, log_frames, av2_sensor_log):
    summary, detections = gt_summary
    _, frames = log_frames
    assert summary["roi"] == {"on": True, "reason": "on: every evaluated log has its map"}
    assert summary["config"]["dataset_dir"] == str(av2_sensor_log.parent)
    assert summary["evaluated"] == {
        "eval_set": "val",
        "partial": False,
        "scenes": [av2_sensor_log.name],
        "keyframes": 2,
        "split_scenes": 1,
        "split_keyframes": 2,
    }
    present = summary["gt_categories"]
    assert len(present) >= 5 and summary["num_gt"] > 100
    for cat in present:
        row = summary["per_category"][cat]
        assert row["AP"] >= 0.99 and row["CDS"] >= 0.99, (cat, row)
        assert row["ATE"] < 1e-3 and row["ASE"] < 1e-3 and row["AOE"] < 1e-3, (cat, row)
        assert row["num_dt"] == row["num_gt"], (cat, row)  # every evaluated prediction matched one GT
    assert summary["mean_over_gt_categories"]["AP"] >= 0.99
    # av2's own average runs over all 26 categories: the absent ones count with AP 0
    assert summary["config"]["categories"] == 26
    assert summary["AP"] == pytest.approx(len(present) / 26, abs=2e-3)
    # the detections were written in the ego frame: the adapter's boxes, as they are (scores tie: order kept)
    boxes = np.concatenate([p["boxes"] for p in gt_predictions(frames)])
    np.testing.assert_array_equal(detections[["tx_m", "ty_m", "tz_m"]].to_numpy(), boxes[:, :3])


def test_moved_or_turned_boxes_score_lower(log_frames, gt_summary):
    ds, frames = log_frames
    perfect = gt_summary[0]

    def shift(boxes, frame):
        boxes[:, X] += 1.5  # a true positive at the 2 and 4 m thresholds only: AP 0.5 at best
        return boxes

    def flip(boxes, frame):
        boxes[:, YAW] += np.pi
        return boxes

    shifted, _ = run_av2_eval(ds, "val", frames, gt_predictions(frames, shift), AV2_CLASSES, n_jobs=N_JOBS)
    m = shifted["mean_over_gt_categories"]
    assert m["AP"] <= 0.55 and 1.3 < m["ATE"] < 1.6, m
    assert all(shifted["per_category"][c]["AP"] <= 0.5 + 1e-6 for c in perfect["gt_categories"])

    flipped, _ = run_av2_eval(ds, "val", frames, gt_predictions(frames, flip), AV2_CLASSES, n_jobs=N_JOBS)
    m = flipped["mean_over_gt_categories"]
    assert m["AP"] >= 0.99 and m["AOE"] == pytest.approx(np.pi, abs=1e-2), m  # AP is centre-based
    assert m["CDS"] == pytest.approx(2 / 3, abs=1e-2)  # (1 + 1 + 0) / 3: the orientation measure is 0


def test_predictions_in_the_city_frame_collapse(log_frames):
    """av2 scores ego-frame cuboids: the same boxes written in the city frame (a frame bug) score nothing."""
    ds, frames = log_frames

    def to_city(boxes, frame):
        return transform_boxes(frame.global_from_ego, boxes)

    summary, detections = run_av2_eval(ds, "val", frames, gt_predictions(frames, to_city), AV2_CLASSES, n_jobs=N_JOBS)
    assert len(detections) > 100
    assert summary["mean_over_gt_categories"]["AP"] == 0.0 and summary["num_dt"] == 0


def test_a_log_with_a_keyframe_missing_is_refused(log_frames):
    ds, frames = log_frames
    with pytest.raises(ValueError, match=r"miss 1 of the 2 keyframes of scene 7fab2350"):
        run_av2_eval(ds, "val", frames[:1], gt_predictions(frames[:1]), AV2_CLASSES, n_jobs=N_JOBS)
    with pytest.raises(KeyError, match="not among the evaluated keyframes"):
        run_av2_eval(ds, "val", frames[:1], gt_predictions(frames), AV2_CLASSES, n_jobs=N_JOBS)


def test_without_a_map_the_roi_filter_is_off(av2_sensor_log, tmp_path, gt_summary):
    """The same log without its ``map/`` (linked in place): scored without the ROI filter, which says so."""
    log_dir = tmp_path / "val" / av2_sensor_log.name
    log_dir.mkdir(parents=True)
    for child in av2_sensor_log.iterdir():
        if child.name != "map":
            (log_dir / child.name).symlink_to(child)
    ds, frames = _frames(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="needs each log's map"):
        run_av2_eval(ds, "val", frames, gt_predictions(frames), AV2_CLASSES, roi=True, n_jobs=N_JOBS)
    summary, _ = run_av2_eval(ds, "val", frames, gt_predictions(frames), AV2_CLASSES, n_jobs=N_JOBS)
    assert summary["roi"]["on"] is False and "no usable map" in summary["roi"]["reason"]
    assert summary["config"]["eval_only_roi_instances"] is False
    assert summary["mean_over_gt_categories"]["AP"] >= 0.99
    # the ROI filter drops GT outside the map's region of interest: more GT without it
    assert summary["num_gt"] > gt_summary[0]["num_gt"]


def test_evaluate_on_av2_writes_and_prints_its_scores(monkeypatch, tmp_path, log_frames, capsys):
    """``trainer.evaluate.evaluate`` on an AV2 data module (checkpoint and prediction stubbed: GT as predictions)."""
    import trainer.eval.av2_detection as av2_detection
    import trainer.eval.predict
    import trainer.evaluate as ev
    from trainer.lit_base import LoadedCheckpoint

    ds, frames = log_frames

    class Model:
        class_names, use_camera, use_lidar = AV2_CLASSES, False, True

    class DataModule:
        adapter = ds

        def prepare_data(self):
            pass

        def setup(self, stage=None):
            pass

        def split_name(self, split):
            return {"val": "val"}[split]

        def frames(self, split):
            return frames

    loaded = LoadedCheckpoint(tmp_path / "last.ckpt", {"data": {}}, Model(), "", 3, 42)
    monkeypatch.setattr(ev, "load_checkpoint", lambda ckpt: loaded)
    monkeypatch.setattr(trainer.eval.predict, "build_datamodule", lambda config, **kw: DataModule())
    monkeypatch.setattr(av2_detection, "predict", lambda model, dm, split, *a, **kw: gt_predictions(frames))
    out = ev.evaluate("last.ckpt", split="val", n_jobs=N_JOBS)
    printed = capsys.readouterr().out

    out_dir = tmp_path / "eval-last-val"
    assert out["out_dir"] == str(out_dir) and out["keyframes"] == 2
    assert out["mean_over_gt_categories"]["AP"] >= 0.99
    # GT boxes with velocity 0 tracked by the Kalman tracker and scored by av2's tracking evaluation
    assert out["tracking"]["tracker"] == "kalman" and out["tracking"]["HOTA"] >= 0.9, out["tracking"]
    assert (out_dir / "tracking" / "metrics_summary.json").is_file()
    on_disk = json.loads((out_dir / "metrics_summary.json").read_text())
    assert on_disk["AP"] == out["AP"] and on_disk["evaluated"]["keyframes"] == 2
    assert set(on_disk["per_category"]) == set(AV2_CLASSES)
    import pandas as pd

    written = pd.read_feather(out_dir / "detections_av2.feather")
    assert len(written) == sum(len(p["boxes"]) for p in gt_predictions(frames))
    for line in ("evaluated: 2 of 2 keyframes, 1 of 1 scenes", "mAOE", "REGULAR_VEHICLE", "av2.evaluation.tracking"):
        assert line in printed, printed
