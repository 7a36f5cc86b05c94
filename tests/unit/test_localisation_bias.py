"""trainer.analysis.localisation_bias (scripts/localisation_bias.py): boxes moved by a known amount along the ego ray
read back as that radial bias."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.analysis import localisation_bias


def _results(nusc, shift_m: float) -> dict:
    """Every car of every keyframe as a detection, moved ``shift_m`` metres away from the ego along its ray."""
    from pyquaternion import Quaternion

    out = {}
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        rot, t = Quaternion(pose["rotation"]).rotation_matrix, np.asarray(pose["translation"])
        dets = []
        for a in sample["anns"]:
            ann = nusc.get("sample_annotation", a)
            if not ann["category_name"].startswith("vehicle.car"):
                continue
            g = np.asarray(ann["translation"])
            ray = rot.T @ (g - t)
            ray[2] = 0.0
            moved = g + rot @ (shift_m * ray / np.linalg.norm(ray))
            dets.append({"translation": moved.tolist(), "detection_name": "car", "detection_score": 0.9})
        out[sample["token"]] = dets
    return {"results": out}


@pytest.mark.parametrize("shift", [0.0, 0.5, -0.8])
def test_a_known_radial_shift_is_read_back(synth_tiny, tmp_path, shift):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", str(synth_tiny), verbose=False)
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps(_results(nusc, shift)))
    report = localisation_bias.main([str(path), "--root", str(synth_tiny), "--classes", "car"])
    car = report["car"]
    assert car["pairs"] > 10
    assert car["mean_radial_m"] == pytest.approx(shift, abs=1e-6)
    assert car["median_planar_m"] == pytest.approx(abs(shift), abs=1e-6)
