"""Train camera detectors for a fixed wall-time budget each, evaluate them, and compare: ``make bench-train``.

    python scripts/bench_train.py                              # bevdepth vs bevdepth_dino, 1 h each, small world
    python scripts/bench_train.py --budget 00:00:05:00         # a short version
    python scripts/bench_train.py --experiments bevdepth_dino --budget 00:00:10:00 --out outputs/demo   # make demo
    python scripts/bench_train.py --model full                 # the configs' own model (ResNet-18 at 256x704)
    python scripts/bench_train.py --dataset av2_synthetic --experiments bevdepth --steps 600   # AV2 logs, av2's scores

Steps (each a command line of the project, run as a subprocess, so what is measured is what a user runs):

1. the synthetic world (``--preset``, seed 0) under ``data/synthetic/<preset>-seed0``, generated when missing
   (``--dataset av2_synthetic``: the same scenes as Argoverse 2 logs under ``data/synthetic/av2-<preset>-seed0``);
2. its label store on ``--grid`` (default: ``default``, BEVDepth's 102.4 m square) at ``--store``, made or
   finished by ``pipelines.labels`` unless complete (default features: DINOv2-S, random-init
   without local weights, which the store records and this script prints);
3. per experiment, ``trainer.train experiment=<name>`` with the same ``--seed``, ``trainer.max_time``
   = ``--budget`` (epochs unbounded), validation every ``--val-every`` epochs. With ``--steps N`` the run
   is N optimiser steps under a one-cycle schedule (``--lr`` peak, warm-up over 30%), so the schedule
   finishes inside the budget, which then only guards the wall time; without it the configs' own
   epoch-based schedule runs until the budget stops it;
4. ``trainer.evaluate`` of each run's ``last.ckpt`` on the val split (``DetectionEval`` + the
   foreground depth metrics of ``extra_eval``);
5. a comparison table (NDS, mAP, car AP, TP errors, foreground depth, steps, wall time, samples/s,
   peak RSS; on AV2 av2's AP and CDS over the categories with GT, REGULAR_VEHICLE AP and its TP errors),
   printed and written as ``comparison.md`` and ``comparison.json`` under ``--out``.

Seeds and resuming. ``--seeds 1 2 3`` trains every experiment once per seed (run folders
``<experiment>-s<seed>``) and adds a summary table: per experiment the mean and the spread (half the
range, max - min over 2) of NDS, mAP and car AP, and whether each experiment's mean differs from the
first experiment's by more than both spreads. A run whose evaluation is already under ``--out``
is reused, not retrained, so a benchmark longer than one sitting is resumed by rerunning the same
command (an unfinished run is started again from scratch: its wall time must be its own).

A ledger for benchmarks longer than one machine's life. ``--ledger results/ledgers/<name>.jsonl`` keeps each finished
run's row in a JSON-lines file meant to be committed: a run whose key (experiment, seed, steps, lr, batch
size, model and the Hydra overrides, data paths left out) is in the ledger is not retrained, and each run
that finishes is appended at once, with the date, the commit and the CPU. So a sweep spread over sessions on
fresh machines (whose ``outputs/`` is gone) resumes from the ledger, and its table keeps every run. To redo a
run (its code changed), delete its line. ``--collect`` trains nothing: it writes the table of the runs the
ledger and ``--out`` already hold, and records the finished run folders in the ledger.

Peak RSS is sampled every 2 s over the training process and its data-loader workers (psutil), summed:
shared pages of the forked workers count twice, so it is an upper bound.

``--model cpu`` (the default) shrinks the model for CPU runs, the same way for every experiment
(:mod:`trainer.bench.cpu`: ``cpu_model``, ``CPU_DEPTH``): ResNet-18 at half width on 128x352 images,
one-metre depth bins over the grid's reach, a half-width BEV encoder with a 1x1 fusion, a quarter-width
head whose maps are one conv each off the shared conv (no hidden layer). With a GPU, use ``--model full
--device gpu``.

The default store is ``make labels``' default output (``data/labels/synthetic.zarr``: the small
world on the default grid) when ``--preset small --grid default``, so ``make labels`` then
``make bench-train`` labels once; other presets and grids get a store of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from trainer.bench.cpu import CPU_DEPTH, cpu_model
from trainer.bench.ledger import Ledger
from trainer.bench.runs import add_run_arguments, run, store_complete, train_and_evaluate
from trainer.bench.tables import SUMMARY_KEYS, markdown, summarise

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=["bevdepth", "bevdepth_dino"])
    p.add_argument("--preset", default="small", help="synthetic world preset (conf/preset)")
    p.add_argument(
        "--dataset",
        default="synthetic",
        choices=["synthetic", "av2_synthetic"],
        help="the synthetic world as nuScenes (scored by the devkit) or as AV2 logs (scored by av2)",
    )
    p.add_argument("--grid", default="default", help="conf/grid of the store and the models")
    p.add_argument("--store", default=None, help="label store (default: see the module docstring)")
    p.add_argument("--out", default=None, help="output folder (default outputs/bench_train/<time>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[12345], help="one run per experiment and seed")
    p.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds SEED)")
    add_run_arguments(p)
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every training run")
    a = p.parse_args(argv)
    seeds = [a.seed] if a.seed is not None else list(a.seeds)

    py = sys.executable
    out = Path(a.out or REPO / "outputs" / "bench_train" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("BEVLABELS_DATA", REPO / "data"))
    av2 = a.dataset == "av2_synthetic"
    root = data / "synthetic" / f"{'av2-' if av2 else ''}{a.preset}-seed0"
    own = f"{a.dataset}.zarr" if (a.preset, a.grid) == ("small", "default") else f"bench-{a.preset}-{a.grid}.zarr"
    if av2 and own.startswith("bench-"):
        own = f"bench-av2-{a.preset}-{a.grid}.zarr"
    store = Path(a.store or data / "labels" / own)
    dataset = [f"dataset={a.dataset}", f"dataset.root={root}", f"dataset.generate.preset={a.preset}"]

    from bevlabels.synthetic import SynthConfig
    from bevlabels.synthetic.formats import writer

    fmt = "av2" if av2 else "nuscenes"
    ledger = Ledger(a.ledger)  # before any long step: a broken ledger fails at once
    if not a.collect:  # --collect makes and trains nothing
        if not writer(fmt).exists(root, {"version": SynthConfig.from_preset(a.preset).version}):
            synth = [py, "-m", "pipelines.synth", f"format={fmt}", f"preset={a.preset}", "seed=0", f"out={root}"]
            run(synth, out / "synth.log")
        if store_complete(store):
            print(f"label store {store} is complete; reusing it", flush=True)
        else:
            run([py, "-m", "pipelines.labels", *dataset, f"grid={a.grid}", f"out={store}"], out / "labels.log")
    from bevlabels.cache import LabelStoreReader

    fm = LabelStoreReader(store).attrs.get("feature_model", {}) if (store / "zarr.json").is_file() else {}
    print(f"store features: {fm.get('name')} ({fm.get('weights')})", flush=True)

    rows = []
    # seed-major: every experiment's first seed runs before any second seed, so a sweep cut short (or still
    # running) already has one complete row per experiment
    for name, seed in [(n, s) for s in seeds for n in a.experiments]:
        tag = name if len(seeds) == 1 else f"{name}-s{seed}"
        overrides = [f"experiment={name}", *dataset, f"grid={a.grid}", f"data.label_store={store}"]
        overrides += (cpu_model(name) + CPU_DEPTH.get(a.grid, []) if a.model == "cpu" else []) + list(a.extra)
        row = train_and_evaluate(
            name, out / tag, overrides, seed, a, log_dir=out, tag=tag, ledger=ledger, collect=a.collect
        )
        if row is not None:
            rows.append(row)
    if not rows:
        raise SystemExit("no finished runs yet (--collect trains nothing)")

    table = markdown(rows)
    head = (
        f"budget {a.budget} per run"
        + (f", {a.steps} steps one-cycle to lr {a.lr}" if a.steps else "")
        + f", seeds {' '.join(map(str, seeds))}, {a.preset} world ({a.dataset}), grid {a.grid}, model {a.model}, "
        f"features {fm.get('name')} ({fm.get('weights')})"
    )
    text = f"{head}\n\n{table}\n"
    if len({r.get("seed") for r in rows}) > 1:
        keys = SUMMARY_KEYS["av2" if av2 else "nuscenes"]
        # the foreground depth metrics (TiG-BEV's Table 6) where every run has them (camera students do)
        keys += tuple(k for k in ("fg AbsRel", "fg SILog", "fg RMSE") if all(r.get(k) is not None for r in rows))
        text += f"\nmean +- spread (half the range) over seeds\n\n{markdown(summarise(rows, keys))}\n"
    (out / "comparison.md").write_text(text)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{text}\ncomparison: {out / 'comparison.md'}", flush=True)


if __name__ == "__main__":
    main()
