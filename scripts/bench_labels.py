#!/usr/bin/env python
"""Benchmark the label stage: throughput, where the time goes, memory, store size, BEV coverage.

    python scripts/bench_labels.py                                # the `small` synthetic world, 2 workers x 1 thread
    python scripts/bench_labels.py --preset tiny --json bench.json
    python scripts/bench_labels.py --preset fullsize --image-height 518     # the nuScenes-sized world (issue 15)
    python scripts/bench_labels.py --n-workers 4 --threads 2 --image-height 224 --limit-scenes 2
    python scripts/bench_labels.py features.local_path=/models/dinov2-small   # extra Hydra overrides
    make bench ARGS="--preset tiny"

Generates the synthetic world of ``--preset`` first when it is missing (timed apart, not part of the
figures), then runs the real label stage (``pipelines.labels.run`` with ``conf/labels.yaml``: a dask
LocalCluster of worker processes, the default features ``weights=auto``, which without local DINOv2
weights falls back to a randomly initialised ViT-S/14, the same compute as the pretrained one) into
a fresh store (``overwrite=true``), and prints:

- keyframes/s and wall time (stage start to summary, cluster start-up included);
- the per-part breakdown of the task time summed over workers, in seconds and %: dataset read,
  LiDAR accumulation, image decode, DINOv2, projection + pooling, lidar_px, store write; and how
  much of ``n_workers x wall`` the tasks filled (the rest is start-up, scheduling and idle workers).
  Decode and the keyframe sweep's read run ahead in a prefetch thread and store writes in a writer
  thread (``pipelines.labels.label_scene``), so the parts may add up to more than a task's wall time;
- peak RSS per worker, store size on disk (total and per keyframe), mean BEV coverage;
- the DINOv2-only floor, measured in the same run (:func:`dino_floor`: the feature model alone on
  ``--floor-keyframes`` keyframes, per worker, times the workers), the end-to-end rate as a share of it,
  and DINOv2's share of the workers' wall time (``n_workers x wall``: what issue 15 asks to reach 90%).

``--json PATH`` writes the same figures, the environment and the resolved config as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

#: the stage's timers, in pipeline order, with the names this report prints
PARTS = {
    "read": "dataset/sweep read",
    "accumulate": "LiDAR accumulation",
    "decode": "image decode",
    "features": "DINOv2 (features)",
    "project_pool": "projection + pooling",
    "lidar_px": "lidar_px",
    "write": "store write",
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench_labels.py",
        description=__doc__,
        epilog="Positional key=value arguments are passed to the label stage's Hydra config as overrides.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="small", help="synthetic world preset: tiny, small (default), medium")
    p.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    p.add_argument("--n-workers", type=int, default=2, help="dask worker processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument(
        "--image-height", type=int, default=None, help="DINOv2 input height (default: the images' own height)"
    )
    p.add_argument("--limit-scenes", type=int, default=None, help="label only the first n scenes")
    p.add_argument(
        "--out", type=Path, default=None, help="store path (replaced); default <data>/bench/labels-<preset>.zarr"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--floor-keyframes", type=int, default=4, help="keyframes timed for the DINOv2-only floor (default 4)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra Hydra overrides of conf/labels.yaml")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    return args


def compose(args: argparse.Namespace):
    """The label stage's config (``conf/labels.yaml``) with the benchmark's overrides, resolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bevlabels.conf import CONF_DIR, plain

    data = os.environ.get("BEVLABELS_DATA", "data")
    out = args.out or Path(data) / "bench" / f"labels-{args.preset}.zarr"
    overrides = [
        "dataset=synthetic",
        f"dataset.generate.preset={args.preset}",
        f"dataset.generate.seed={args.seed}",
        f"out={out}",
        "overwrite=true",
        f"cluster.n_workers={args.n_workers}",
        f"cluster.threads_per_worker={args.threads}",
        "cluster.processes=true",
        f"limit_scenes={args.limit_scenes if args.limit_scenes else 'null'}",
    ]
    if args.image_height:
        overrides.append(f"features.image_height={args.image_height}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="labels", overrides=overrides + list(args.overrides))
    return plain(cfg)


def ensure_world(cfg: dict, workers: int) -> float:
    """Seconds spent generating the synthetic world at ``dataset.root`` (0 when it exists), scenes in parallel:
    only the scenes the run labels (``--limit-scenes``), as the label stage itself would."""
    from bevlabels.synthetic.formats import ensure_world as ensure
    from pipelines.labels import scenes_to_render
    from pipelines.synth import dask_map

    ds_cfg = cfg["dataset"]
    t0 = time.perf_counter()
    generated = ensure(
        ds_cfg,
        map_fn=dask_map(workers) if workers > 1 else None,
        scenes=scenes_to_render(ds_cfg, cfg.get("scenes"), cfg.get("limit_scenes")),
    )
    return time.perf_counter() - t0 if generated else 0.0


def dir_size(path: Path) -> tuple[int, int]:
    """``(bytes, files)`` of every file under ``path`` (apparent size, as ``du --apparent-size``)."""
    total = files = 0
    for root, _, names in os.walk(path):
        for n in names:
            total += os.stat(os.path.join(root, n)).st_size
            files += 1
    return total, files


def environment() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "load_avg_1m_at_start": os.getloadavg()[0],
    }


def report(summary: dict, cfg: dict, extra: dict) -> dict:
    """The benchmark's figures from the stage's summary (``pipelines.labels.run``) and the store."""
    seconds = summary["seconds"]
    task_total = sum(seconds.values())
    parts = {
        k: {"name": PARTS.get(k, k), "s": seconds.get(k, 0.0), "pct": 100 * seconds.get(k, 0.0) / (task_total or 1)}
        for k in list(PARTS) + [k for k in seconds if k not in PARTS]
    }
    size, files = dir_size(Path(summary["store"]))
    n_workers = int(cfg["cluster"]["n_workers"])
    done = summary["keyframes_done_now"]
    return {
        "keyframes": done,
        "keyframes_failed": summary["keyframes_failed"],
        "wall_s": summary["wall_s"],
        "keyframes_per_s": summary["keyframes_per_s"],
        "task_s": task_total,
        "worker_utilisation": task_total / (n_workers * summary["wall_s"]) if summary["wall_s"] else None,
        "parts": parts,
        "peak_rss_mb_per_worker": summary["peak_rss_mb_per_worker"],
        "peak_gpu_mb_per_worker": summary.get("peak_gpu_mb_per_worker", 0.0),
        "store_bytes": size,
        "store_files": files,
        "store_bytes_per_keyframe": size / done if done else None,
        "coverage": summary["coverage"],
        "failures": summary["failures"],
        **extra,
    }


def print_report(r: dict) -> None:
    fm = r["feature_model"]
    lines = [
        "",
        f"label benchmark: {r['dataset']} ({r['scenes']} scenes, {r['keyframes']} keyframes, images {r['image_size']})",
        f"  features        {fm['name']} weights={fm['weights']} C={fm['out_channels']} "
        f"input height={fm.get('image_height') or 'native'} dtype={fm['dtype']}",
        f"  cluster         {r['n_workers']} worker processes x {r['threads']} thread(s); "
        f"{r['environment']['cpu_count']} CPUs, load {r['environment']['load_avg_1m_at_start']:.1f} at start, "
        f"{r['environment']['load_avg_1_5_15m_at_end'][2]:.1f} over the last 15 min",
        f"  throughput      {r['keyframes_per_s']:.3f} keyframes/s ({1 / max(r['keyframes_per_s'], 1e-12):.2f} s per "
        "keyframe)",
        f"  wall time       {r['wall_s']:.1f} s ("
        + (f"world generation {r['generate_s']:.1f} s, not counted)" if r["generate_s"] else "world already on disk)"),
        f"  task time       {r['task_s']:.1f} s summed over workers = {100 * (r['worker_utilisation'] or 0):.0f}% of "
        "workers x wall",
    ]
    for p in r["parts"].values():
        lines.append(f"    {p['name']:<22} {p['s']:8.1f} s  {p['pct']:5.1f} %")
    fl = r.get("dino_floor")
    if fl:
        lines += [
            f"  DINOv2 floor    {fl['keyframes_per_s']:.3f} keyframes/s ({fl['s_per_keyframe']:.2f} s per keyframe alone, "
            f"{fl['threads']} thread(s), x {fl['n_workers']} workers; {fl['keyframes_timed']} keyframes timed); "
            f"end to end = {100 * r['ratio_to_floor']:.0f}% of it",
            f"  DINOv2 share    {r['features_pct_of_worker_wall']:.1f}% of the workers' wall time "
            f"(n_workers x wall); everything else {100 - r['features_pct_of_worker_wall']:.1f}%",
        ]
        if "peak_gpu_mb" in fl:
            lines.append(f"  peak GPU mem    {fl['peak_gpu_mb']:.0f} MB (the feature model alone)")
    lines += [
        f"  peak RSS        {r['peak_rss_mb_per_worker']:.0f} MB per worker"
        + (f", peak GPU {r['peak_gpu_mb_per_worker']:.0f} MiB allocated" if r.get("peak_gpu_mb_per_worker") else ""),
        f"  store size      {r['store_bytes'] / 2**20:.1f} MiB in {r['store_files']} files "
        f"({(r['store_bytes_per_keyframe'] or 0) / 2**20:.2f} MiB per keyframe)  {r['store']}",
        f"  BEV coverage    {100 * (r['coverage'] or 0):.1f}% of cells have pooled points (mean over keyframes)",
    ]
    for scene, err in r["failures"].items():
        lines.append(f"  FAILED          {scene}: {err}")
    print("\n".join(lines), flush=True)


def dino_floor(cfg: dict, frames: list, threads: int, n_workers: int) -> dict:
    """The DINOv2-only floor, measured in the same run: the feature model alone on keyframes of the store.

    Each keyframe's inputs are decoded first (not timed), then ``encode_cameras`` (one batch per image
    size, as the stage runs it) is timed with ``threads`` torch threads, as one worker has. The floor
    is ``n_workers`` such workers doing nothing else: ``n_workers / (seconds per keyframe)``.
    """
    import torch

    from bevlabels.features import get_extractor
    from pipelines.labels import resolve_keyframe_batch

    torch.set_num_threads(threads)
    extractor = get_extractor(**cfg["features"])
    keyframe_batch = resolve_keyframe_batch(cfg.get("keyframe_batch", "auto"), extractor.device)
    inputs = [extractor.load_inputs(f) for f in frames]
    # as the stage batches them (keyframe_batch): the cameras of kb keyframes in one call
    chunks = [[im for x in inputs[i : i + keyframe_batch] for im in x] for i in range(0, len(inputs), keyframe_batch)]
    extractor.encode_cameras(chunks[0])  # warm-up (allocations, first-call overheads)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x in chunks:
        extractor.encode_cameras(x)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    per_kf = (time.perf_counter() - t0) / len(inputs)
    out = {"s_per_keyframe": per_kf, "keyframes_timed": len(inputs), "threads": threads, "n_workers": n_workers,
           "keyframe_batch": keyframe_batch, "keyframes_per_s": n_workers / per_kf}  # fmt: skip
    if torch.cuda.is_available() and extractor.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str]) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from pipelines.labels import get_dataset, run

    cfg = compose(args)
    env = environment()
    generate_s = ensure_world(cfg, args.n_workers)  # now, so that the stage's timings exclude it
    summary = run(cfg)

    from bevlabels.cache import LabelStoreReader

    store = LabelStoreReader(summary["store"])
    frame = get_dataset(cfg["dataset"]["adapter"]).frame(str(store.sample_tokens[0]))
    from collections import Counter

    sizes = Counter((c.width, c.height) for c in frame.cameras)  # AV2: a portrait front camera beside landscape ones
    extra = {
        "dataset": f"synthetic {args.preset} seed {args.seed} ({cfg['dataset']['root']})",
        "scenes": len(set(store.scenes.tolist())),
        "image_size": " + ".join(f"{n} x {w}x{h}" for (w, h), n in sizes.items()),
        "n_workers": args.n_workers,
        "threads": args.threads,
        "generate_s": generate_s,
        "store": summary["store"],
        "feature_model": store.attrs["feature_model"],
        "environment": {**env, "load_avg_1_5_15m_at_end": os.getloadavg()},
        "argv": list(argv),
        "config": cfg,
    }
    ds = get_dataset(cfg["dataset"]["adapter"])
    timed = [ds.frame(str(t)) for t in store.sample_tokens[: args.floor_keyframes]]
    floor = dino_floor(cfg, timed, args.threads, args.n_workers)
    extra["dino_floor"] = floor
    r = report(summary, cfg, extra)
    r["ratio_to_floor"] = r["keyframes_per_s"] / floor["keyframes_per_s"]
    r["features_pct_of_worker_wall"] = (
        100 * r["parts"]["features"]["s"] / (args.n_workers * r["wall_s"]) if r["wall_s"] else None
    )
    print_report(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2, default=str))
        print(f"  results         {args.json}")
    if r["failures"] or r["keyframes_failed"]:
        sys.exit(1)
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
