#!/usr/bin/env python
"""Render one keyframe of a label store as a PNG: PCA-RGB of dino/feat, dino/count, accumulated LiDAR, GT boxes.

    python scripts/inspect_labels.py store=data/labels/synthetic.zarr sample=0 out=label.png
    python scripts/inspect_labels.py store=... sample=<sample_token> points=false   # skip re-accumulation

Arguments (key=value):
    store    path of the zarr store (required)
    sample   store row (int) or sample token (default 0)
    out      PNG path (default <store>/../inspect_<row>.png)
    points   re-accumulate the scene's LiDAR (with the store's own settings) to draw it (default true)
    before   another store of the same keyframe: instead of the sheet, both stores' dino/feat side by side,
             PCA colours fitted on both at once (one colour, one feature), the boxes on each
             (e.g. the same data labelled under two visibility settings)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def parse(argv: list[str]) -> dict:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        sys.exit(0)
    args = {"sample": "0", "out": None, "points": "true", "before": None}
    for a in argv:
        if "=" not in a:
            sys.exit(f"expected key=value, got {a!r}; see --help")
        k, v = a.split("=", 1)
        if k not in ("store", "sample", "out", "points", "before"):
            sys.exit(f"unknown argument {k!r}; see --help")
        args[k] = v
    if "store" not in args:
        sys.exit("store=PATH is required; see --help")
    return args


def main(argv: list[str]) -> Path:
    from bevlabels.cache import LabelStoreReader
    from bevlabels.viz import label_sheet

    args = parse(argv)
    store = LabelStoreReader(args["store"])
    s = int(args["sample"]) if args["sample"].isdigit() else store.index_of(args["sample"])
    token = str(store.sample_tokens[s])
    feat = store.dino_feat(s).astype(np.float32)
    count = store.dino_count(s)
    boxes = points = dynamic = None
    cfg = store.attrs.get("config") or {}
    adapter = (cfg.get("dataset") or {}).get("adapter")
    if adapter:
        from bevlabels.viz import reaccumulate
        from pipelines.labels import get_dataset

        ds = get_dataset(adapter)
        frame = ds.frame(token)
        boxes = frame.boxes.boxes
        if args["points"].lower() in ("1", "true", "yes") and not args["before"]:
            cloud = reaccumulate(ds, frame, cfg["accumulation"])
            points, dynamic = cloud.points, cloud.box_index >= 0
    out = Path(args["out"]) if args["out"] else Path(args["store"]).resolve().parent / f"inspect_{s}.png"
    if args["before"]:
        return compare(LabelStoreReader(args["before"]), store, token, boxes, out)
    fig = label_sheet(
        feat, count, store.grid, boxes=boxes, points=points, point_is_dynamic=dynamic,
        title=f"{Path(args['store']).name}  row {s}  scene {store.scenes[s]}  token {token}  "
        f"({store.attrs['feature_model'].get('name')}, {store.attrs['feature_model'].get('weights')})",
    )  # fmt: skip
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


def compare(before, after, token: str, boxes, out: Path) -> Path:
    """Two stores' ``dino/feat`` of keyframe ``token`` side by side in one PCA colouring, with their visibility."""
    from bevlabels.viz import bev_rgb_figure, joint_pca_rgb

    stores = [before, after]
    rows = [st.index_of(token) for st in stores]
    feats = [st.dino_feat(r).astype(np.float32) for st, r in zip(stores, rows)]
    counts = [st.dino_count(r) for st, r in zip(stores, rows)]
    rgbs = joint_pca_rgb(feats, counts)
    panels = []
    for st, c, rgb in zip(stores, counts, rgbs):
        vis = (st.attrs.get("params") or {}).get("visibility") or {}
        how = "GT boxes as occluders" if vis.get("box_occluders") else f"{vis.get('zbuffer_px', '?')} px z-buffer only"
        panels.append(
            (f"{Path(st.path).name}: {how}, schema {st.attrs.get('schema_version')}; {(c > 0).sum()} cells", rgb)
        )
    fm = after.attrs["feature_model"]
    title = f"dino/feat, PCA of both panels' occupied cells -> RGB; {token} ({fm.get('name')}, {fm.get('weights')})"
    fig = bev_rgb_figure(panels, after.grid, boxes=boxes, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
