"""The tracking result chain scored by the devkit's TrackingEval: GT tracks score perfectly, a broken track shows.

GT boxes with their instance ids go through our chain (ego frame -> track_predictions with tracker=bank, the
model's own ids -> TrackingEval) and must score AMOTA >= 0.99 with no identity switch; swapping the ids of two
tracks halfway through a scene must raise IDS (so the check can fail). The greedy and Kalman trackers, fed the GT
boxes without their ids, must recover the tracks (their ids come from association alone).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _scenes_and_gt(synth_tiny, split="mini_val"):
    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES, NuScenesDataset
    from bevlabels.grid import GridSpec
    from trainer.data.common import gt_for_frame

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    grid = GridSpec.from_dict({"xbound": [-60.0, 60.0, 0.8], "ybound": [-60.0, 60.0, 0.8], "zbound": [-5, 3, 8]})
    scenes, preds, ids_of = [], [], {}
    for scene in ds.scenes(split):
        frames = ds.keyframes(scene)
        scenes.append(frames)
        for f in frames:
            b, lab, idx = gt_for_frame(f, NUSCENES_CLASSES, grid, return_index=True)
            inst = [f.boxes.instance_id[i] for i in idx.tolist()]
            ids_of.setdefault(scene, {})
            for name in inst:
                ids_of[scene].setdefault(name, len(ids_of[scene]))
            preds.append(
                {
                    "sample_token": f.token,
                    "boxes": b,
                    "scores": torch.ones(len(b)),
                    "labels": lab,
                    "instance": inst,
                    "track_ids": torch.tensor([ids_of[scene][n] for n in inst], dtype=torch.long),
                }
            )
    return ds, scenes, preds, NUSCENES_CLASSES


def _score(ds, preds, scenes, classes, tmp_path, tracker="bank"):
    from trainer.eval.nusc_tracking import run_tracking_eval
    from trainer.nusc_results import result_meta, write_results
    from trainer.tracking import track_predictions

    results = track_predictions(scenes, preds, classes, tracker, meta=result_meta(False, True))
    path = write_results(tmp_path / "tracking.json", results)
    return run_tracking_eval(ds.nusc, path, "mini_val", tmp_path / "eval")


def test_gt_tracks_score_perfectly_and_a_swapped_track_shows(synth_tiny, tmp_path):
    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    s = _score(ds, preds, scenes, classes, tmp_path / "gt")
    assert s["amota"] >= 0.99 and s["ids"] == 0, (s["amota"], s["ids"])
    # swap the ids of the two first cars of the first scene from its middle keyframe on
    first = [p for p in preds if p["sample_token"] in {f.token for f in scenes[0]}]
    cars = [i for i, lab in enumerate(first[0]["labels"].tolist()) if classes[lab] == "car"]
    a, b = (int(first[0]["track_ids"][i]) for i in cars[:2])
    for p in first[len(first) // 2 :]:
        t = p["track_ids"].clone()
        t[p["track_ids"] == a], t[p["track_ids"] == b] = b, a
        p["track_ids"] = t
    broken = _score(ds, preds, scenes, classes, tmp_path / "swapped")
    assert broken["ids"] >= 2, broken["ids"]


@pytest.mark.parametrize("tracker", ["greedy", "kalman"])
def test_trackers_recover_the_gt_tracks(synth_tiny, tmp_path, tracker):
    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    for p in preds:
        del p["track_ids"]
    s = _score(ds, preds, scenes, classes, tmp_path, tracker)
    assert s["amota"] >= 0.95 and s["ids"] <= 2, (s["amota"], s["ids"])
    assert np.isfinite(s["amotp"])


def test_bank_refuses_detections_without_model_ids(synth_tiny, tmp_path):
    from trainer.tracking import NoModelIdsError

    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    for p in preds:
        del p["track_ids"]
    with pytest.raises(NoModelIdsError, match="tracker=kalman"):
        _score(ds, preds, scenes, classes, tmp_path, "bank")


def test_scene_track_picture(synth_tiny, tmp_path):
    """The per-scene PNG: predicted tracks beside the GT's (a real image with drawn pixels)."""
    from PIL import Image

    from trainer.tracking import render_scene_tracks, track_predictions

    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    results = track_predictions(scenes, preds, classes, "bank")["results"]
    path = render_scene_tracks(scenes[0], results, tmp_path / "scene.png", tracker="bank", note="AMOTA 1.000")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[0] > 300 and img.shape[1] > 600 and (img < 128).mean() > 0.01


@pytest.mark.parametrize("tracker", ["greedy", "kalman"])
def test_any_tracker_can_replace_the_models_ids(synth_tiny, tracker):
    """``tracker=greedy|kalman`` on a model with its own ids: the model's ids are ignored, the tracker's used."""
    from trainer.tracking import track_predictions

    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    for p in preds:  # a model that gives every box the same id
        p["track_ids"] = torch.full_like(p["track_ids"], 7)
    own = track_predictions(scenes, preds, classes, "bank")["results"]
    other = track_predictions(scenes, preds, classes, tracker)["results"]
    some = next(t for t, boxes in own.items() if len(boxes) > 1)
    assert {b["tracking_id"] for b in own[some]} == {"7"}
    ids = [b["tracking_id"] for b in other[some]]
    assert len(set(ids)) == len(ids) > 1  # one track per box within a keyframe
