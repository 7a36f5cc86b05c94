#!/usr/bin/env python
"""Leak, own class and coverage of an oracle label store, per keyframe and overall (bevlabels.leak).

    python scripts/label_leak.py data/labels/oracle.zarr
    python scripts/label_leak.py data/labels/oracle.zarr --per-keyframe --json leak.json
    python scripts/label_leak.py data/labels/new.zarr --before data/labels/old.zarr --png leak.png   # one keyframe, both
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
    p.add_argument("--png", type=Path, default=None, help="draw one keyframe's argmax classes in BEV with its boxes")
    p.add_argument("--row", type=int, default=None, help="the keyframe --png draws (default: the leakiest one)")
    p.add_argument("--before", type=Path, default=None, help="another store of the same keyframes, drawn beside it")
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
    from bevlabels.cache import StoreError
    from bevlabels.leak import NotAnOracleStoreError, measure_store

    args = parse(argv)
    try:
        res = measure_store(args.store, rows=rows_of(args.rows), margin=args.margin)
    except (NotAnOracleStoreError, StoreError, FileNotFoundError, ValueError) as e:
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
    if args.png:
        print(f"figure       {draw(args, res)}")


def draw(args, res) -> Path:
    """The ``--png`` figure: the argmax classes of one keyframe, of ``--before`` beside this store's."""
    from bevlabels.cache import LabelStoreReader
    from bevlabels.leak import dataset_of, keyframe_leak, oracle_directions
    from bevlabels.viz import ORACLE_COLOURS, bev_rgb_figure, oracle_rgb

    stores = [LabelStoreReader(p) for p in ([args.before] if args.before else []) + [args.store]]
    if args.row is not None:
        token = str(stores[-1].sample_tokens[args.row])
    else:
        ref = measure_before(args) if args.before else res
        token = max((r for r in ref.rows if r.outside), key=lambda r: r.leak).token
    frame = dataset_of(stores[-1].attrs, str(args.store)).frame(token)
    b = frame.boxes
    panels = []
    for st in stores:
        s = st.index_of(token)
        feat, count = st.dino_feat(s).astype("float32"), st.dino_count(s)
        oracle = oracle_directions(st.attrs["feature_model"], str(st.path))
        k = keyframe_leak(feat, count, b.boxes, b.detection_class, st.grid, oracle, num_lidar_pts=b.num_lidar_pts)
        vis = (st.attrs.get("params") or {}).get("visibility") or {}
        how = "box occluders" if vis.get("box_occluders") else f"{vis.get('zbuffer_px', '?')} px z-buffer only"
        panels.append(
            (
                f"{Path(st.path).name} ({how}; schema {st.attrs.get('schema_version')})\n"
                f"leak {pct(k.leak)}, own class {pct(k.own_class)}, {k.occupied} occupied cells",
                oracle_rgb(feat, count, oracle),
            )
        )
    legend = {c: ORACLE_COLOURS[c] for c in oracle.classes}
    title = f"oracle argmax per BEV cell (empty: black), GT boxes in white; {frame.scene} {token}"
    fig = bev_rgb_figure(panels, stores[-1].grid, boxes=b.boxes, title=title, legend=legend)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110, bbox_inches="tight")
    return args.png


def measure_before(args):
    from bevlabels.leak import measure_store

    return measure_store(args.before, rows=rows_of(args.rows), margin=args.margin)


if __name__ == "__main__":
    main()
