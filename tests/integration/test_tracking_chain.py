"""The tracking result chain scored by the devkit's TrackingEval: GT tracks score perfectly, a broken track shows.

GT boxes with their instance ids go through our chain (ego frame -> make_tracking_results ->
TrackingEval) and must score AMOTA >= 0.99 with no identity switch; swapping the ids of two tracks
halfway through a scene must raise IDS (so the check can fail). The greedy tracker, fed the GT boxes
without their ids, must recover the tracks (its ids come from association alone).
"""

from __future__ import annotations

import numpy as np
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


def _score(ds, preds, scenes, classes, tmp_path, **kw):
    from trainer.nusc_results import write_results
    from trainer.tracking import make_tracking_results, run_tracking_eval

    results = make_tracking_results(scenes, preds, classes, use_lidar=True, **kw)
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


def test_greedy_tracker_recovers_the_gt_tracks(synth_tiny, tmp_path):
    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    for p in preds:
        del p["track_ids"]
    s = _score(ds, preds, scenes, classes, tmp_path)
    assert s["amota"] >= 0.95 and s["ids"] <= 2, (s["amota"], s["ids"])
    assert np.isfinite(s["amotp"])


def test_scene_track_picture(synth_tiny, tmp_path):
    """The per-scene PNG: predicted tracks beside the GT's (a real image with drawn pixels)."""
    from PIL import Image

    from trainer.tracking import make_tracking_results, render_scene_tracks

    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    results = make_tracking_results(scenes, preds, classes)["results"]
    path = render_scene_tracks(scenes[0], results, tmp_path / "scene.png")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[0] > 300 and img.shape[1] > 600 and (img < 128).mean() > 0.01


def test_greedy_can_replace_the_models_ids(synth_tiny):
    """``use_model_ids=False`` (evaluate's ``tracker=greedy``): the model's ids are ignored, the greedy tracker's used."""
    from trainer.tracking import make_tracking_results

    ds, scenes, preds, classes = _scenes_and_gt(synth_tiny)
    for p in preds:  # a model that gives every box the same id
        p["track_ids"] = torch.full_like(p["track_ids"], 7)
    own = make_tracking_results(scenes, preds, classes)["results"]
    greedy = make_tracking_results(scenes, preds, classes, use_model_ids=False)["results"]
    some = next(t for t, boxes in own.items() if len(boxes) > 1)
    assert {b["tracking_id"] for b in own[some]} == {"7"}
    ids = [b["tracking_id"] for b in greedy[some]]
    assert len(set(ids)) == len(ids) > 1  # one track per box within a keyframe
