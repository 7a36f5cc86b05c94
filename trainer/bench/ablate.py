"""An ablation in one command: rows x seeds, each trained and evaluated, resumable, one table with spreads.

    make ablate ABLATION=table7_oracle SEEDS="1 2" STEPS=600
    python scripts/ablate.py conf/ablation/table7_oracle.yaml --seeds 1 2 --steps 600
    python scripts/ablate.py conf/ablation/table10_weight.yaml --seeds 1 2 --steps 600 --print-commands   # for a scheduler
    python scripts/ablate.py conf/ablation/table10_weight.yaml --seeds 1 2 --steps 600 --collect         # table only

An ablation file (``conf/ablation/*.yaml``) names label stores and rows::

    stores:                      # label stores the rows read: name -> pipelines.labels overrides
      dino: []                   #   (made when missing; [] on the default world and grid is `make labels`' store)
      oracle: [features=synthetic_oracle]
    rows:                        # the first row is the reference of the "vs" columns
      - {name: dvd, store: dino, overrides: [experiment=dvd]}
      - {name: dvd_oracle, store: oracle, overrides: [experiment=dvd_dino]}

Every (row, seed) is a run folder ``<out>/<row>-s<seed>``: ``trainer.train`` (the row's overrides, the
store, ``seed``, and the budget options shared with ``scripts/bench_train.py``: ``--steps`` one-cycle
steps, ``--budget`` wall guard, ``--model cpu`` the CPU-sized model), then ``trainer.evaluate``
(the devkit's DetectionEval and TrackingEval, the foreground depth metrics). A run whose evaluation
is complete is never redone, so an interrupted sweep resumes by rerunning the same command. With
``--ledger results/ledgers/<ablation>.jsonl`` (``make ablate`` passes one) each finished run's row is also kept in a
committed JSON-lines file and reused from there, so a sweep longer than one machine's life resumes on the next
(:mod:`trainer.bench.ledger`). A run is known in the ledger by what it is (its overrides, store,
seed and budget), not by its row's name, so a row that two ablations share (``dvd_oracle`` of Table VII is ``w7`` of
Table X) is trained once when they share a ledger, as ``make ablate``'s do (one per step budget).

The table (``<out>/ablation.md``, ``ablation.json``): every run's row; then per row, over its seeds,
the mean +- spread (half the range) of NDS, mAP, AMOTA, IDS and the foreground depth metrics, with
whether each row's mean differs from the reference's by more than both spreads; then per-class AP the
same way.

Why a script and not Hydra's multirun: a sweep needs a driver anyway, to build the stores its rows
read, to skip finished runs, to evaluate each checkpoint and to write one table over seeds; Hydra's
multirun launches training jobs but does none of that. Every run is still a plain ``trainer.train``
command line: ``--print-commands`` prints the pending ones (train then evaluate, one run per line)
for any scheduler or cluster, and ``--collect`` writes the table from the finished runs. On GPUs:
``--device gpu --model full`` and Lightning's own overrides (``trainer.devices=4``) as extra arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from trainer.bench import runs as runner
from trainer.bench.cpu import CPU_DEPTH, cpu_model
from trainer.bench.ledger import Ledger
from trainer.bench.tables import markdown, paired, summarise

REPO = Path(__file__).resolve().parents[2]

#: the summary columns over seeds (those every run has), then per-class AP
MAIN_KEYS = (
    "mAP",
    "car AP",
    "NDS",
    "AP@1m",
    "AMOTA",
    "IDS",
    "fg AbsRel",
    "fg SILog",
    "fg RMSE",
    "distill cos obj",
    "distill cos bg",
)


def load_ablation(path: Path) -> dict:
    """The ablation file, checked: ``stores`` (name -> overrides) and ``rows`` (name, store, overrides)."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    stores = {str(k): [str(o) for o in (v or [])] for k, v in (spec.get("stores") or {}).items()}
    rows = []
    for i, r in enumerate(spec.get("rows") or []):
        if not isinstance(r, dict) or "name" not in r:
            raise ValueError(f"{path}: rows[{i}] needs a name (and store, overrides)")
        store = str(r.get("store", next(iter(stores), "")))
        if store not in stores:
            raise ValueError(f"{path}: row {r['name']!r} reads store {store!r}, not among stores {sorted(stores)}")
        rows.append(
            {
                "name": str(r["name"]),
                "store": store,
                "overrides": [str(o) for o in r.get("overrides") or []],
                "vs": None if r.get("vs") is None else str(r["vs"]),
            }
        )
    if not rows:
        raise ValueError(f"{path}: no rows")
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: row names repeat: {names}")
    for r in rows:
        if r["vs"] is not None and (r["vs"] not in names or r["vs"] == r["name"]):
            raise ValueError(f"{path}: row {r['name']!r} is compared with vs: {r['vs']!r}, not another row of {names}")
    return {
        "stores": stores,
        "rows": rows,
        "description": spec.get("description", ""),
        "papers": str(spec.get("papers") or "").strip(),
    }


def references(rows: list[dict]) -> dict[str, str]:
    """``{row: the row its paired differences are taken against}``: its ``vs``, else the first row (not itself)."""
    first = rows[0]["name"]
    return {r["name"]: r["vs"] or first for r in rows if r["name"] != first or r["vs"]}


def experiment_of(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "")


def store_path(data: Path, name: str, overrides: list[str], preset: str, grid: str) -> Path:
    """Where a store lives: `make labels`' own store for the default world, grid and labels; else one per name."""
    if not overrides and (preset, grid) == ("small", "default"):
        return data / "labels" / "synthetic.zarr"
    return data / "labels" / f"ablate-{preset}-{grid}-{name}.zarr"


def fmt_summary(rows: list[dict], keys: list[str]) -> str:
    return markdown(summarise(rows, tuple(keys))) if keys else ""


def summary_keys(runs: list[dict]) -> list[str]:
    """The :data:`MAIN_KEYS` every run has (the distillation fit only where every row distils, say)."""
    return [k for k in MAIN_KEYS if runs and all(r.get(k) is not None for r in runs)]


def write_table(
    out: Path,
    runs: list[dict],
    seeds: list[int],
    head: str,
    steps: int | None = None,
    reference: dict[str, str] | None = None,
    papers: str = "",
) -> str:
    """``ablation.md`` / ``.json`` from the finished runs' rows; returns the text.

    ``steps``: the step count every compared run must have trained; a run that stopped before it (a wall-clock
    guard) is listed as unfinished and left out of every summary. ``reference``: the paired differences' rows
    (:func:`references`). ``papers``: the papers' own numbers, printed beside the tables."""
    all_runs = runs
    if steps:
        for r in all_runs:
            r["finished"] = int(r.get("steps", -1)) >= int(steps)
        runs = [r for r in all_runs if r["finished"]]
    present = summary_keys(runs)
    per_class = [k for k in runs[0] if k.startswith("AP ")] if runs else []
    per_class = [k for k in per_class if all(r.get(k) is not None for r in runs)]
    text = f"{head}\n\n## Runs\n\n{markdown(all_runs)}\n"
    unfinished = [
        f"{r['experiment']} seed {r.get('seed')} ({r.get('steps')} of {steps} steps)"
        for r in all_runs
        if not r.get("finished", True)
    ]
    if unfinished:
        text += "\n**Unfinished** (stopped before their steps; in no summary below): " + "; ".join(unfinished) + "\n"
    if papers:
        text += f"\n## The papers' own numbers, beside these\n\n{papers}\n"
    if reference and runs:
        text += (
            "\n## Paired differences, per seed, against each row's reference: mean +- SD (seeds with the mean's sign)\n\n"
            + markdown(paired(runs, present, reference))
            + "\n"
        )
    text += (
        f"\n## Mean +- spread (half the range) over seeds {' '.join(map(str, seeds))}\n\n{fmt_summary(runs, present)}\n"
    )
    if per_class:
        text += f"\n## Per-class AP, mean +- spread over seeds\n\n{fmt_summary(runs, per_class)}\n"
    (out / "ablation.md").write_text(text)
    (out / "ablation.json").write_text(json.dumps(all_runs, indent=2))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ablation", type=Path, help="an ablation file (conf/ablation/*.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--preset", default="small", help="synthetic world preset (conf/preset)")
    p.add_argument("--grid", default="default", help="conf/grid of the stores and the models")
    p.add_argument("--out", type=Path, default=None, help="default outputs/ablate/<ablation file stem>")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (each with --threads torch threads); on 2 CPU cores --jobs 2 --threads 1 trained 1.35x "
        "the steps per hour of --jobs 1 --threads 2",
    )
    p.add_argument("--print-commands", action="store_true", help="print the pending runs' commands, run nothing")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="only these rows (by name): a pilot of one arm, or a sweep split over machines (one ledger joins them)",
    )
    runner.add_run_arguments(p)
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every training run")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be at least 1; got {a.jobs}")

    spec = load_ablation(a.ablation)
    ledger = Ledger(a.ledger)  # before any long step: a broken ledger fails at once
    out = a.out or REPO / "outputs" / "ablate" / a.ablation.stem
    out.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("BEVLABELS_DATA", REPO / "data"))
    root = data / "synthetic" / f"{a.preset}-seed0"
    dataset = ["dataset=synthetic", f"dataset.root={root}", f"dataset.generate.preset={a.preset}"]
    stores = {n: store_path(data, n, o, a.preset, a.grid) for n, o in spec["stores"].items()}
    if a.rows:
        unknown = sorted(set(a.rows) - {r["name"] for r in spec["rows"]})
        if unknown:
            p.error(f"--rows {unknown} are not rows of {a.ablation} ({[r['name'] for r in spec['rows']]})")
    runs_todo = [(r, s) for r in spec["rows"] if not a.rows or r["name"] in a.rows for s in a.seeds]

    def overrides_of(row: dict) -> list[str]:
        o = [*dataset, f"grid={a.grid}", f"data.label_store={stores[row['store']]}", *row["overrides"]]
        return (
            o
            + (cpu_model(experiment_of(row["overrides"])) + CPU_DEPTH.get(a.grid, []) if a.model == "cpu" else [])
            + list(a.extra)
        )

    if a.print_commands:
        for row, seed in runs_todo:
            run_dir = out / f"{row['name']}-s{seed}"
            key = Ledger.key(experiment_of(row["overrides"]), seed, overrides_of(row), a, spec["stores"][row["store"]])
            done = ledger.find(key) is not None  # the same key as train_and_evaluate's (key_name below)
            if not done and not runner.run_complete(run_dir):
                cmds = [runner.train_command(run_dir, overrides_of(row), seed, a), runner.evaluate_command(run_dir, a)]
                print(" && ".join(shlex.join(c) for c in cmds))
        return 0

    rows: list[dict] = []
    if not a.collect:
        from bevlabels.synthetic import SynthConfig
        from bevlabels.synthetic.formats import writer

        has_world = writer("nuscenes").exists(root, {"version": SynthConfig.from_preset(a.preset).version})
        oracle = any("features=synthetic_oracle" in o for o in spec["stores"].values())
        if not has_world or (oracle and not (root / "oracle").is_dir()):
            # a world written before the oracle maps existed is rewritten (same bytes, plus oracle/)
            cmd = [sys.executable, "-m", "pipelines.synth", f"preset={a.preset}", "seed=0", f"out={root}"]
            runner.run(cmd + (["overwrite=true"] if has_world else []), out / "synth.log")
        needed = {r["store"] for r, _ in runs_todo}
        for name, path in stores.items():
            if name not in needed:
                continue
            if runner.store_complete(path):
                print(f"store {name}: {path} is complete; reusing it", flush=True)
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "pipelines.labels",
                    *dataset,
                    f"grid={a.grid}",
                    f"out={path}",
                    *spec["stores"][name],
                ]
                runner.run(cmd, out / f"labels-{name}.log")

    def one(run: tuple[dict, int]) -> dict | None:
        row, seed = run
        tag = f"{row['name']}-s{seed}"
        run_dir = out / tag
        return runner.train_and_evaluate(
            row["name"],
            run_dir,
            overrides_of(row),
            seed,
            a,
            log_dir=out,
            tag=tag,
            ledger=ledger,
            collect=a.collect,
            store=spec["stores"][row["store"]],
            key_name=experiment_of(row["overrides"]),  # the run is its overrides and store, not its row's name
        )

    if a.jobs > 1 and not a.collect:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(a.jobs) as pool:  # each run is its own processes; threads only wait on them
            got = list(pool.map(one, runs_todo))
    else:
        got = [one(run) for run in runs_todo]
    rows += [r for r in got if r is not None]
    if not rows:
        print("no finished runs yet", flush=True)
        return 1
    head = (
        f"# Ablation {a.ablation.stem}\n\n{spec['description']}\n\n"
        f"Command: `python scripts/ablate.py {a.ablation} --seeds {' '.join(map(str, a.seeds))}"
        + (f" --steps {a.steps}" if a.steps else "")
        + f" --budget {a.budget}`; {a.preset} world, grid {a.grid}, model {a.model}, device {a.device}; "
        f"{len(rows)} of {len(runs_todo)} runs finished. Stores: "
        + ", ".join(f"{n} = `{p}`" for n, p in stores.items())
    )
    text = write_table(
        out,
        rows,
        a.seeds,
        head,
        steps=a.steps,
        reference={k: v for k, v in references(spec["rows"]).items() if {k, v} <= {r["name"] for r, _ in runs_todo}},
        papers=spec["papers"],
    )
    print(f"\n{text}\ntable: {out / 'ablation.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
