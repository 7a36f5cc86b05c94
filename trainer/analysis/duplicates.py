"""How many detections have a same-class neighbour close by: ``python scripts/duplicates.py <eval folder> ...``.

    python scripts/duplicates.py outputs/bench_train/dvd-3000/dvd/eval
    python scripts/duplicates.py outputs/ablate/table7_oracle/dvd-s1/eval outputs/bench_train/dvd-3000/dvd/eval --radius 1.0

Reads ``results_nusc.json`` (what ``trainer.evaluate`` wrote: global frame, every keyframe) of each folder and
counts, per keyframe and class, the detections scoring at least ``--score`` whose centre lies within
``--radius`` metres (ground plane) of another such detection of the same class. A query head trained
with one-to-one matching is meant to leave one box per object, so this share is the duplicates it has
not learned to suppress; each duplicate is a false positive to the devkit's AP. This is what motivated
the optional decode-time NMS of the sparse head (``trainer.evaluate ... nms=circle``;
``results/bench_dvd_cpu_hour.md``). Printed as a markdown table, one row per folder and score threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def duplicate_share(results: dict, cls: str | None, score: float, radius: float) -> tuple[int, int]:
    """``(detections, detections with a neighbour)`` over every keyframe of ``results`` (``{token: [boxes]}``);
    ``cls`` None: every class (neighbours of the same class only)."""
    total = dup = 0
    for dets in results.values():
        by_class: dict[str, list] = {}
        for d in dets:
            if d["detection_score"] >= score and (cls is None or d["detection_name"] == cls):
                by_class.setdefault(d["detection_name"], []).append(d["translation"][:2])
        for xy in by_class.values():
            c = np.asarray(xy, dtype=float)
            total += len(c)
            if len(c) > 1:
                dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
                np.fill_diagonal(dist, np.inf)
                dup += int((dist.min(1) <= radius).sum())
    return total, dup


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evals", nargs="+", type=Path, help="trainer.evaluate output folders (with results_nusc.json)")
    p.add_argument("--cls", default="car", help="a detection_name, or 'all' (default: car)")
    p.add_argument("--score", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="score thresholds")
    p.add_argument("--radius", type=float, default=1.0, help="metres (default 1.0)")
    a = p.parse_args(argv)

    cls = None if a.cls == "all" else a.cls
    print(f"| evaluation | class | score >= | detections | with a neighbour <= {a.radius:g} m | share |")
    print("|---|---|---|---|---|---|")
    for ev in a.evals:
        path = ev / "results_nusc.json"
        if not path.is_file():
            raise SystemExit(f"duplicates: {path} does not exist (not a trainer.evaluate folder?)")
        results = json.loads(path.read_text())["results"]
        for s in a.score:
            n, d = duplicate_share(results, cls, s, a.radius)
            share = f"{d / n:.2f}" if n else "-"
            print(f"| {ev} | {a.cls} | {s:g} | {n} | {d} | {share} |")


if __name__ == "__main__":
    main()
