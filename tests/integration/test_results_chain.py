"""The GT chain through our own code scores perfectly with the devkit: adapter -> gt_for_frame -> make_results -> DetectionEval.

The teacher and the student are scored by this chain. Feeding it the GT boxes (ego frame, as the
models are trained on them) must give AP 1 and TP errors 0 for translation, scale, orientation and
velocity; a wrong heading convention, a velocity left in the ego frame or a size order (l, w vs
w, l) would show here. With a BEV augmentation applied to the GT and undone on the way out (what a
test-time-augmented model would do), the scores must stay perfect too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _score(ds, split, boxes_of, tmp_path):
    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES
    from trainer.eval.nusc_detection import run_detection_eval
    from trainer.nusc_results import make_results, write_results

    preds, poses, tokens = [], {}, []
    for scene in ds.scenes(split):
        for f in ds.keyframes(scene):
            b, lab = boxes_of(f)
            preds.append({"sample_token": f.token, "boxes": b, "scores": torch.ones(len(b)), "labels": lab})
            poses[f.token] = f.global_from_ego
            tokens.append(f.token)
    results = make_results(preds, poses, NUSCENES_CLASSES, use_lidar=True, all_tokens=tokens)
    path = write_results(tmp_path / "results.json", results)
    summary, _ = run_detection_eval(ds.nusc, path, split, tmp_path / "eval")
    return summary


@pytest.mark.parametrize("augmented", [False, True])
def test_gt_through_our_result_chain_scores_perfectly(synth_tiny, tmp_path, augmented):
    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES, NuScenesDataset
    from bevlabels.grid import GridSpec
    from trainer.data.common import augment_boxes, bev_aug_matrix, gt_for_frame

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    grid = GridSpec.from_dict({"xbound": [-60.0, 60.0, 0.8], "ybound": [-60.0, 60.0, 0.8], "zbound": [-5, 3, 8]})
    aug = bev_aug_matrix(rot=0.3, scale=1.0, flip_x=True) if augmented else None

    def boxes_of(frame):
        b, lab = gt_for_frame(frame, NUSCENES_CLASSES, grid, aug_from_ego=aug)
        if aug is not None:
            b = augment_boxes(b, torch.linalg.inv(aug))  # back to the ego frame, as a model's decoder would
        return b, lab

    s = _score(ds, "mini_val", boxes_of, tmp_path)
    assert s["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    for cls, ap in s["mean_dist_aps"].items():
        assert ap == pytest.approx(1.0, abs=1e-6), cls
    tp = s["tp_errors"]
    assert tp["trans_err"] < 1e-3 and tp["scale_err"] < 1e-4
    assert tp["orient_err"] < 1e-3 and tp["vel_err"] < 1e-3
    # attributes come from a rule (class and speed), not from GT: the one error allowed
    assert s["nd_score"] == pytest.approx(0.9 + 0.1 * (1 - min(1.0, tp["attr_err"])), abs=1e-3)


def test_a_turned_heading_shows_in_the_orientation_error(synth_tiny, tmp_path):
    """The check above can fail: the same chain with every heading turned by 90 degrees scores mAOE ~ pi/2."""
    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES, NuScenesDataset
    from bevlabels.geometry import YAW
    from bevlabels.grid import GridSpec
    from trainer.data.common import gt_for_frame

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    grid = GridSpec.from_dict({"xbound": [-60.0, 60.0, 0.8], "ybound": [-60.0, 60.0, 0.8], "zbound": [-5, 3, 8]})

    def turned(frame):
        b, lab = gt_for_frame(frame, NUSCENES_CLASSES, grid)
        b[:, YAW] += math.pi / 2
        return b, lab

    s = _score(ds, "mini_val", turned, tmp_path)
    aoe = [v["orient_err"] for c, v in s["label_tp_errors"].items() if c not in ("traffic_cone", "barrier")]
    assert np.allclose(aoe, math.pi / 2, atol=0.05)
