#!/usr/bin/env python
"""Leak, own class and coverage of an oracle label store, per keyframe and overall (bevlabels.leak).

    python scripts/label_leak.py data/labels/oracle.zarr
    python scripts/label_leak.py data/labels/oracle.zarr --per-keyframe --json leak.json
    make leak ARGS="data/labels/oracle.zarr"

The store must be made with the synthetic oracle's features
(``make labels ARGS="features=synthetic_oracle out=data/labels/oracle.zarr"``): its patch features are
known mixes of class directions, so each BEV cell's class is its argmax over them. Boxes come from the
dataset the store records (the devkit's boxes of each keyframe). Figures (``bevlabels.leak``):

  leak        occupied cells outside every GT box (boxes enlarged --margin m) whose class is an object class
  behind      of those, the share with a GT box nearer on the same bearing (leakage through an object)
  own class   occupied cells inside a GT box whose class is the box's
  coverage    occupied cells, as a share of the grid and per keyframe; GT boxes with LiDAR points that own an
              occupied cell, and how many cells they own

Exit status 0; a store without oracle features or without its dataset stops with a message naming them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    from bevlabels.leak import LEAK_MARGIN

    p = argparse.ArgumentParser(
        prog="scripts/label_leak.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("store", type=Path, help="an oracle label store (zarr)")
    p.add_argument("--margin", type=float, default=LEAK_MARGIN, help=f"box enlargement, m (default {LEAK_MARGIN})")
    p.add_argument("--rows", type=str, default=None, help="store rows, e.g. 0:20 or 3,7,9 (default all done)")
    p.add_argument("--per-keyframe", action="store_true", help="print one line per keyframe too")
    p.add_argument("--json", type=Path, default=None, help="write every figure (per keyframe too) as JSON here")
    return p.parse_args(argv)


def rows_of(spec: str | None):
    if not spec:
        return None
    if ":" in spec:
        a, b = spec.split(":")
        return list(range(int(a or 0), int(b)))
    return [int(x) for x in spec.split(",")]


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def report(res) -> str:
    o = res.overall
    vis = res.visibility or {}
    lines = [
        f"store        {res.store}",
        "visibility   " + (", ".join(f"{k}={v}" for k, v in vis.items()) if vis else "(not recorded)"),
        f"keyframes    {o['keyframes']}",
        f"leak         {pct(o['leak'])} of {o['total_outside']} occupied cells outside every box "
        f"(per keyframe: median {pct(o['leak_median_keyframe'])}, worst {pct(o['leak_worst_keyframe'])})",
        f"  behind     {pct(o['leak_behind_object'])} of the leaked cells have a GT box nearer on the same bearing",
        f"own class    {pct(o['own_class'])} of {o['total_inside']} occupied cells inside boxes "
        f"(per keyframe median {pct(o['own_class_median_keyframe'])})",
        f"coverage     {pct(o['coverage'])} of BEV cells, {o['occupied_per_keyframe']:.0f} per keyframe; "
        f"{pct(o['boxes_covered'])} of {o['boxes_with_points']} boxes with points own an occupied cell, "
        f"{o['cells_per_box']:.1f} cells each",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    from bevlabels.leak import NotAnOracleStoreError, measure_store

    args = parse(argv)
    try:
        res = measure_store(args.store, rows=rows_of(args.rows), margin=args.margin)
    except (NotAnOracleStoreError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"label_leak: {e}") from None
    if not res.rows:
        raise SystemExit(f"label_leak: {args.store} has no done keyframes among the rows asked for")
    if args.per_keyframe:
        print("row  token                             leak    own     occupied")
        for i, r in enumerate(res.rows):
            print(f"{i:<4d} {r.token:<33s} {pct(r.leak):>6s}  {pct(r.own_class):>6s}  {r.occupied}")
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res.to_dict(), indent=1, default=float))


if __name__ == "__main__":
    main()
