"""Has a detector learned velocity? Its speeds on the moving and the static GT boxes it finds.

    python -m trainer.analysis.velocity outputs/bench_train/dvd4d-3000-s1/dvd4d/eval/results_nusc.json \
        --root data/synthetic/small-seed0 [--version v1.0-mini] [--classes car pedestrian] [--min-score 0.2]

mAVE alone hides a detector that predicts zero for everything (on the small world's ``mini_val`` that gives 2.28 m/s,
no better than the models that "learned" velocity). This pairs detections with GT boxes as the devkit's matching does
(per keyframe and detection class, detections by descending score, each taking the nearest unpaired GT box within
``--max-dist`` metres of centre distance, the devkit's ``center_distance``; the devkit's AVE uses 2 m) and prints, per
class:

- the moving GT boxes (the devkit's ``box_velocity`` speed above ``--moving`` m/s) that were paired: their median true
  speed, the paired detections' median predicted speed, and its ratio to the truth (1: velocity learned, ~0: none);
- the median velocity error ``|v_pred - v_gt|`` over the moving and over the static pairs.

Velocities are the devkit's (global frame, from the annotations of neighbouring keyframes); the detections' are the
results file's. Written as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def speed_pairs(
    results: dict, nusc, classes: set[str], min_score: float, max_dist: float
) -> dict[str, dict[str, np.ndarray]]:
    """``{class: {"gt": (P, 2), "pred": (P, 2)}}``: the global velocities of each GT box and the detection paired
    with it (devkit-style greedy matching by score, centre distance at most ``max_dist``); GT of unknown velocity
    is skipped."""
    from nuscenes.eval.common.utils import center_distance
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.utils import category_to_detection_name

    out: dict[str, dict[str, list]] = {c: {"gt": [], "pred": []} for c in classes}
    for token, dets in results.items():
        sample = nusc.get("sample", token)
        gts: dict[str, list] = {}
        for a in sample["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_detection_name(ann["category_name"])
            if name in classes:
                box = DetectionBox(sample_token=token, translation=ann["translation"], size=ann["size"],
                                   rotation=ann["rotation"], detection_name=name)  # fmt: skip
                gts.setdefault(name, []).append((box, nusc.box_velocity(a)[:2]))
        taken: set[tuple[str, int]] = set()
        for d in sorted(dets, key=lambda d: -d["detection_score"]):
            name = d["detection_name"]
            if name not in gts or d["detection_score"] < min_score:
                continue
            pred = DetectionBox(sample_token=token, translation=d["translation"], size=d["size"],
                                rotation=d["rotation"], detection_name=name)  # fmt: skip
            best, best_d = None, max_dist
            for j, (g, _) in enumerate(gts[name]):
                dist = center_distance(g, pred)
                if (name, j) not in taken and dist <= best_d:
                    best, best_d = j, dist
            if best is None:
                continue
            taken.add((name, best))
            v_gt = np.asarray(gts[name][best][1], dtype=float)
            if np.isfinite(v_gt).all():
                out[name]["gt"].append(v_gt)
                out[name]["pred"].append(np.asarray(d["velocity"][:2], dtype=float))
    return {c: {k: np.asarray(v, dtype=float).reshape(-1, 2) for k, v in p.items()} for c, p in out.items()}


def summarise(pairs: dict[str, np.ndarray], moving: float) -> dict[str, float]:
    """Counts and medians of one class's pairs (see the module docstring)."""
    gt_speed = np.linalg.norm(pairs["gt"], axis=1)
    pred_speed = np.linalg.norm(pairs["pred"], axis=1)
    err = np.linalg.norm(pairs["pred"] - pairs["gt"], axis=1)
    mv = gt_speed > moving
    out = {"pairs": int(len(gt_speed)), "moving_pairs": int(mv.sum()), "static_pairs": int((~mv).sum())}
    if mv.any():
        out.update(
            moving_median_true_mps=float(np.median(gt_speed[mv])),
            moving_median_pred_mps=float(np.median(pred_speed[mv])),
            moving_median_error_mps=float(np.median(err[mv])),
        )
        out["moving_speed_ratio"] = out["moving_median_pred_mps"] / out["moving_median_true_mps"]
    if (~mv).any():
        out.update(
            static_median_pred_mps=float(np.median(pred_speed[~mv])), static_median_error_mps=float(np.median(err[~mv]))
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a results_nusc.json (trainer.evaluate writes one per run)")
    p.add_argument("--root", type=Path, required=True, help="the nuScenes-format dataset root")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--classes", nargs="+", default=["car", "pedestrian"])
    p.add_argument("--min-score", type=float, default=0.2, help="detections below it are not paired")
    p.add_argument("--max-dist", type=float, default=2.0, help="metres of centre distance (the devkit's AVE: 2)")
    p.add_argument("--moving", type=float, default=1.0, help="m/s: GT boxes faster than this count as moving")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = p.parse_args(argv)
    from nuscenes.nuscenes import NuScenes

    if not a.results.is_file():
        sys.exit(f"{a.results}: no such results file (trainer.evaluate writes <eval dir>/results_nusc.json)")
    results = json.loads(a.results.read_text())["results"]
    nusc = NuScenes(a.version, str(a.root), verbose=False)
    report: dict = {"results": str(a.results), "min_score": a.min_score, "max_dist": a.max_dist, "moving": a.moving}
    for c, pairs in speed_pairs(results, nusc, set(a.classes), a.min_score, a.max_dist).items():
        if not len(pairs["gt"]):
            print(f"{c:>12}: no detection within {a.max_dist} m of a GT box")
            continue
        r = report[c] = summarise(pairs, a.moving)
        line = f"{c:>12}: {r['pairs']} pairs ({r['moving_pairs']} moving > {a.moving} m/s)"
        if r["moving_pairs"]:
            line += (
                f"; moving: true {r['moving_median_true_mps']:.2f}, predicted {r['moving_median_pred_mps']:.2f} m/s "
                f"median (ratio {r['moving_speed_ratio']:.2f}), error {r['moving_median_error_mps']:.2f} m/s"
            )
        if r["static_pairs"]:
            line += f"; static: predicted {r['static_median_pred_mps']:.2f} m/s median"
        print(line)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
