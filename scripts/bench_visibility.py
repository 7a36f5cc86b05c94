#!/usr/bin/env python
"""Compare visibility tests of the label stage on the synthetic world's oracle features: leak, own class, coverage, cost.

    python scripts/bench_visibility.py                                   # every variant, every keyframe of `small`
    python scripts/bench_visibility.py --scenes 2 --every 4 --variants zbuffer4 boxes
    python scripts/bench_visibility.py --variant "mine:method=splat,splat_scale=0.5,box_occluders=true"
    make bench-visibility ARGS="--scenes 3"

Per scene, the LiDAR is accumulated once (the label stage's ``accumulation`` settings of
``conf/labels.yaml``) and each keyframe's oracle patch features computed once
(``features=synthetic_oracle``); then every variant's :class:`bevlabels.lidar.project.VisibilityConfig`
pools the same cloud and the same features (:func:`~bevlabels.lidar.project.pool_bev`, timed), and
:func:`bevlabels.leak.keyframe_leak` reads the pooled grid back against the GT boxes. So the variants
differ by their visibility test alone, without writing a store per variant. The label stage itself
(``make labels``) and :mod:`scripts/label_leak.py` on its store give the same figures for the variant a
store was made with.

Printed (and written with ``--md``/``--json``): per variant the pooled leak, its per-keyframe median
and worst, the share of leaked cells with a GT box nearer on the same bearing, own class, coverage
(absolute and relative to the first variant), the share of GT boxes with points that own an occupied
cell, and the pooling time per keyframe (projection, visibility, sampling; not accumulation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

#: the variants measured by default: name -> VisibilityConfig fields over the config's ``visibility``
VARIANTS = {
    "zbuffer4": {"method": "zbuffer", "zbuffer_px": 4, "box_occluders": False},  # schema 1's test
    "zbuffer16": {"method": "zbuffer", "zbuffer_px": 16, "box_occluders": False},
    "splat": {"method": "splat", "zbuffer_px": 4, "box_occluders": False},
    "hpr": {"method": "hpr", "box_occluders": False},
    "boxes (4 px z-buffer)": {"box_occluders": True, "zbuffer_px": 4, "box_floor": 0},
    "boxes + 2 px": {"box_occluders": True, "zbuffer_px": 2, "box_floor": 0},
    "default (boxes + 2 px + floor 0.3 m)": {"box_occluders": True, "zbuffer_px": 2, "box_floor": 0.3},
    "default + margin 7 px": {"box_occluders": True, "zbuffer_px": 2, "box_floor": 0.3, "box_margin_px": 7},
    "default + clearance 0.5 m": {"box_occluders": True, "zbuffer_px": 2, "box_floor": 0.3, "box_clearance": 0.5},
    "splat + boxes + floor": {"method": "splat", "box_occluders": True, "zbuffer_px": 2, "box_floor": 0.3},
    "hpr + boxes + floor": {"method": "hpr", "box_occluders": True, "box_floor": 0.3},
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench_visibility.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", help="synthetic world preset (default small); generated if missing")
    p.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    p.add_argument("--scenes", type=int, default=None, help="only the first n scenes (default all)")
    p.add_argument("--every", type=int, default=1, help="every k-th keyframe of a scene (default 1: all)")
    p.add_argument("--variants", nargs="*", default=None, help=f"which of {list(VARIANTS)} (default all)")
    p.add_argument(
        "--variant", action="append", default=[], metavar="NAME:key=v,...", help="an extra variant (repeatable)"
    )
    p.add_argument("--md", type=Path, default=None, help="write the table and its provenance as Markdown here")
    p.add_argument("--json", type=Path, default=None, help="write every figure (per keyframe too) as JSON here")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be >= 1")
    return args


def variants_of(args) -> dict[str, dict]:
    chosen = {k: VARIANTS[k] for k in (args.variants if args.variants else VARIANTS)}
    for spec in args.variant:
        name, _, body = spec.partition(":")
        fields = {}
        for kv in filter(None, body.split(",")):
            k, _, v = kv.partition("=")
            fields[k] = {"true": True, "false": False}.get(v.lower(), v)
            if isinstance(fields[k], str):
                try:
                    fields[k] = float(v) if "." in v else int(v)
                except ValueError:
                    pass
        chosen[name] = fields
    return chosen


def compose(args) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bevlabels.conf import CONF_DIR, plain

    overrides = [
        "dataset=synthetic",
        f"dataset.generate.preset={args.preset}",
        f"dataset.generate.seed={args.seed}",
        "features=synthetic_oracle",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return plain(hydra_compose(config_name="labels", overrides=overrides))


def run(args) -> dict:
    import torch

    from bevlabels.features import get_extractor
    from bevlabels.grid import GridSpec
    from bevlabels.leak import keyframe_leak, oracle_directions, pooled
    from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene
    from bevlabels.lidar.project import CameraSet, VisibilityConfig, pool_bev
    from bevlabels.synthetic.formats import ensure_world
    from pipelines.scenes import get_dataset

    cfg = compose(args)
    ensure_world(cfg["dataset"])
    ds = get_dataset(cfg["dataset"]["adapter"])
    grid = GridSpec.from_dict(cfg["grid"])
    extractor = get_extractor(**cfg["features"])
    from bevlabels.cache.writer import feature_model_record

    oracle = oracle_directions(feature_model_record(extractor.describe(), extractor.out_channels))
    base = {k: v for k, v in cfg["visibility"].items()}
    variants = {name: VisibilityConfig(**{**base, **fields}) for name, fields in variants_of(args).items()}
    rows = {name: [] for name in variants}
    seconds = {name: 0.0 for name in variants}
    scenes = ds.scenes(cfg["dataset"].get("split"))[: args.scenes]
    from tqdm.auto import tqdm

    total = sum(len(ds.keyframes(s)[:: args.every]) for s in scenes)
    bar = tqdm(total=total, unit="kf", desc="visibility")
    for scene in scenes:
        frames = ds.keyframes(scene)
        keep = {f.token for f in frames[:: args.every]}
        for cloud in accumulate_scene(ds, scene, AccumulationConfig(**cfg["accumulation"]), frames=frames):
            frame = cloud.frame
            if frame.token not in keep:
                continue
            feats = extractor.encode_cameras(extractor.load_inputs(frame))
            cams = CameraSet.from_frame(frame)
            b = frame.boxes
            for name, vis in variants.items():
                t0 = time.perf_counter()
                pb = pool_bev(cloud.points, feats, cams, grid, vis, boxes=b.boxes if vis.box_occluders else None)
                seconds[name] += time.perf_counter() - t0
                rows[name].append(
                    keyframe_leak(
                        pb.feat.numpy(),
                        pb.count.numpy(),
                        b.boxes,
                        b.detection_class,
                        grid,
                        oracle,
                        num_lidar_pts=b.num_lidar_pts,
                        token=frame.token,
                    )
                )
            bar.update(1)
    bar.close()
    first = next(iter(variants))
    out = {}
    for name, vis in variants.items():
        o = pooled(rows[name])
        o["coverage_vs_first"] = o["coverage"] / pooled(rows[first])["coverage"]
        o["pool_s_per_keyframe"] = seconds[name] / max(len(rows[name]), 1)
        out[name] = {"visibility": vis.__dict__, "overall": o, "keyframes": [r.__dict__ for r in rows[name]]}
    return {
        "command": "python scripts/bench_visibility.py " + " ".join(os.sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "world": f"{args.preset} seed {args.seed}, {len(scenes)} scenes, every {args.every}. keyframe",
        "keyframes": total,
        "variants": out,
    }


def table(res: dict) -> str:
    lines = [
        "| variant | leak | leak median kf | leak worst kf | leaked cells behind a box | own class | coverage | "
        "coverage vs first | boxes covered | cells/box | pool s/kf |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in res["variants"].items():
        o = v["overall"]
        lines.append(
            f"| {name} | {100 * o['leak']:.1f}% | {100 * o['leak_median_keyframe']:.1f}% | "
            f"{100 * o['leak_worst_keyframe']:.1f}% | {100 * o['leak_behind_object']:.0f}% | "
            f"{100 * o['own_class']:.1f}% | {100 * o['coverage']:.1f}% | {100 * o['coverage_vs_first']:.0f}% | "
            f"{100 * o['boxes_covered']:.0f}% | {o['cells_per_box']:.1f} | {o['pool_s_per_keyframe']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse(argv)
    res = run(args)
    text = table(res)
    print(text)
    if args.md:
        head = [
            f"- command: `{res['command']}`",
            f"- date: {res['date']}; machine: {res['machine']}",
            f"- world: {res['world']} ({res['keyframes']} keyframes); features: the synthetic oracle",
            "",
        ]
        args.md.write_text("\n".join(head) + text + "\n")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
