"""``python -m trainer.analysis.velocity``: the speeds a detector predicts on the moving GT boxes it finds.

On the tiny synthetic world, detections made of the GT boxes themselves (through the devkit's tables) pair with
every GT box: with the true velocities the moving ones' speed ratio is 1 and the error 0; with velocity 0 (what the
single-frame models predict) the ratio is 0 and the error the true speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.analysis.velocity import main


def _gt_results(root, zero_velocity: bool) -> dict:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    results = {}
    for sample in nusc.sample:
        boxes = []
        for a in sample["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            v = np.nan_to_num(nusc.box_velocity(a)[:2])
            boxes.append({"sample_token": sample["token"], "translation": ann["translation"], "size": ann["size"],
                          "rotation": ann["rotation"], "velocity": [0.0, 0.0] if zero_velocity else v.tolist(),
                          "detection_name": name, "detection_score": 0.9, "attribute_name": ""})  # fmt: skip
        results[sample["token"]] = boxes
    return results


@pytest.mark.parametrize("zero_velocity", [False, True])
def test_speed_ratio_of_gt_detections(zero_velocity, synth_tiny, tmp_path):
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps({"meta": {}, "results": _gt_results(synth_tiny, zero_velocity)}))
    report = main(
        [str(path), "--root", str(synth_tiny), "--classes", "car", "pedestrian", "--json", str(tmp_path / "v.json")]
    )
    assert json.loads((tmp_path / "v.json").read_text())["car"] == report["car"]
    moving = [report[c] for c in ("car", "pedestrian") if c in report and report[c]["moving_pairs"]]
    assert moving, report
    for r in moving:
        if zero_velocity:
            assert r["moving_speed_ratio"] == 0.0
            assert r["moving_median_error_mps"] == pytest.approx(r["moving_median_true_mps"])
        else:
            assert r["moving_speed_ratio"] == pytest.approx(1.0)
            assert r["moving_median_error_mps"] == pytest.approx(0.0, abs=1e-9)
