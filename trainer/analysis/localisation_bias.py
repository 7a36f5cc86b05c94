"""Where a detector's boxes sit relative to the truth: mean offset in the ego frame, radial bias, nearest anchor.

    python scripts/localisation_bias.py outputs/bench_train/dvd-1500/dvd/eval/results_nusc.json \
        --root data/synthetic/small-seed0 [--version v1.0-mini] [--classes car] [--min-score 0.2] [--max-dist 3]
    python scripts/localisation_bias.py RESULTS --root ... --anchors data/labels/anchors-<fingerprint>.npy

Each detection of the chosen classes (score >= ``--min-score``) is paired with the nearest GT box of the same
detection class (the devkit's category mapping, centre distance in the ground plane, at most ``--max-dist``
metres), and the offset ``prediction - GT`` is rotated into the keyframe's ego frame (the devkit's
``ego_pose`` of its LIDAR_TOP sample data). Printed per class:

- the mean offset (x forward, y left, z up) and the median planar distance;
- the *radial* bias: the planar offset along the ray from the ego to the GT box, negative when boxes sit
  nearer than the truth (the depth ambiguity of a camera detector shows up here);
- with ``--anchors`` (a head's ``(A, 11)`` anchors, e.g. the k-means cache beside the label store), the distance
  from each GT box of the evaluated keyframes (inside the anchors' reach) to its nearest anchor.

A systematic offset of a few decimetres is what the devkit's 0.5 m and 1 m thresholds punish first; this
separates "biased" from "noisy" before anyone tunes a loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def ego_offsets(results: dict, nusc, classes: set[str], min_score: float, max_dist: float) -> dict[str, np.ndarray]:
    """``{class: (P, 4)}``: per paired detection its ego-frame offset ``dx, dy, dz`` and the radial component."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from pyquaternion import Quaternion

    out: dict[str, list] = {c: [] for c in classes}
    for token, dets in results.items():
        sample = nusc.get("sample", token)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        rot = Quaternion(pose["rotation"]).rotation_matrix  # global_from_ego
        t = np.asarray(pose["translation"])
        gts: dict[str, list] = {}
        for a in sample["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_detection_name(ann["category_name"])
            if name in classes:
                gts.setdefault(name, []).append(ann["translation"])
        for d in dets:
            name = d["detection_name"]
            if name not in classes or d["detection_score"] < min_score or name not in gts:
                continue
            g = np.asarray(gts[name])  # (M, 3) global
            p = np.asarray(d["translation"])
            dist = np.linalg.norm(g[:, :2] - p[:2], axis=1)
            j = int(dist.argmin())
            if dist[j] > max_dist:
                continue
            off = rot.T @ (p - g[j])  # ego frame
            ray = (rot.T @ (g[j] - t))[:2]
            radial = float(ray @ off[:2] / max(np.linalg.norm(ray), 1e-6))
            out[name].append([*off, radial])
    return {c: np.asarray(v, dtype=float).reshape(-1, 4) for c, v in out.items()}


def nearest_anchor(results: dict, nusc, anchors: np.ndarray) -> np.ndarray:
    """Planar distance from every GT box of the evaluated keyframes, within the anchors' reach, to its nearest anchor."""
    from pyquaternion import Quaternion

    reach = np.abs(anchors[:, :2]).max(axis=0)
    out = []
    for token in results:
        sample = nusc.get("sample", token)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        rot = Quaternion(pose["rotation"]).rotation_matrix
        t = np.asarray(pose["translation"])
        for a in sample["anns"]:
            c = rot.T @ (np.asarray(nusc.get("sample_annotation", a)["translation"]) - t)
            if np.all(np.abs(c[:2]) <= reach):
                out.append(np.linalg.norm(anchors[:, :2] - c[:2], axis=1).min())
    return np.asarray(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a results_nusc.json (trainer.evaluate writes one per run)")
    p.add_argument("--root", type=Path, required=True, help="the nuScenes-format dataset root")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--classes", nargs="+", default=["car", "pedestrian", "barrier"])
    p.add_argument("--min-score", type=float, default=0.2)
    p.add_argument("--max-dist", type=float, default=3.0, help="metres: farther pairs are misses, not offsets")
    p.add_argument("--anchors", type=Path, default=None, help="(A, 11) .npy of a sparse head's anchors")
    a = p.parse_args(argv)
    from nuscenes.nuscenes import NuScenes

    if not a.results.is_file():
        sys.exit(f"{a.results}: no such results file (trainer.evaluate writes <eval dir>/results_nusc.json)")
    results = json.loads(a.results.read_text())["results"]
    nusc = NuScenes(a.version, str(a.root), verbose=False)
    report: dict = {}
    for c, v in ego_offsets(results, nusc, set(a.classes), a.min_score, a.max_dist).items():
        if not len(v):
            print(f"{c:>12}: no detection within {a.max_dist} m of a GT box")
            continue
        planar = np.linalg.norm(v[:, :2], axis=1)
        report[c] = {"pairs": len(v), "mean_offset_xyz": v[:, :3].mean(0).tolist(),
                     "median_planar_m": float(np.median(planar)), "mean_radial_m": float(v[:, 3].mean()),
                     "median_radial_m": float(np.median(v[:, 3]))}  # fmt: skip
        r = report[c]
        print(
            f"{c:>12}: {r['pairs']} pairs; mean ego offset x {r['mean_offset_xyz'][0]:+.2f} y "
            f"{r['mean_offset_xyz'][1]:+.2f} z {r['mean_offset_xyz'][2]:+.2f} m; median planar distance "
            f"{r['median_planar_m']:.2f} m; radial bias mean {r['mean_radial_m']:+.2f} m, median "
            f"{r['median_radial_m']:+.2f} m (negative: nearer than the truth)"
        )
    if a.anchors is not None:
        d = nearest_anchor(results, nusc, np.load(a.anchors))
        report["nearest_anchor_m"] = {"boxes": len(d), "mean": float(d.mean()), "median": float(np.median(d)),
                                      "p90": float(np.percentile(d, 90))}  # fmt: skip
        print(f"GT box to its nearest anchor: mean {d.mean():.2f} m, median {np.median(d):.2f} m, "
              f"90th percentile {np.percentile(d, 90):.2f} m over {len(d)} boxes")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
