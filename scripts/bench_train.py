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

A ledger for benchmarks longer than one machine's life. ``--ledger results/<name>.jsonl`` keeps each finished
run's row in a JSON-lines file meant to be committed: a run whose key (experiment, seed, steps, lr, batch
size, model and the Hydra overrides, data paths left out) is in the ledger is not retrained, and each run
that finishes is appended at once, with the date, the commit and the CPU. So a sweep spread over sessions on
fresh machines (whose ``outputs/`` is gone) resumes from the ledger, and its table keeps every run. To redo a
run (its code changed), delete its line. ``--collect`` trains nothing: it writes the table of the runs the
ledger and ``--out`` already hold, and records the finished run folders in the ledger.

Peak RSS is sampled every 2 s over the training process and its data-loader workers (psutil), summed:
shared pages of the forked workers count twice, so it is an upper bound.

``--model cpu`` (the default) shrinks the model for CPU runs, the same way for every experiment
(:data:`CPU_MODEL`, :data:`CPU_DEPTH`): ResNet-18 at half width on 128x352 images, one-metre depth
bins over the grid's reach, a half-width BEV encoder with a 1x1 fusion, a quarter-width head whose
maps are one conv each off the shared conv (no hidden layer). With a GPU, use ``--model full
--device gpu``.

The default store is ``make labels``' default output (``data/labels/synthetic.zarr``: the small
world on the default grid) when ``--preset small --grid default``, so ``make labels`` then
``make bench-train`` labels once; other presets and grids get a store of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the shrunk camera network of CPU benchmarks and the demo (overrides of conf/model/camera_bev/default.yaml),
#: the same for every camera detector
CPU_CAMERA = [
    "data.image_aug.final_hw=[128,352]",
    "model.detector.camera_bev.backbone.hidden_sizes=[32,64,128,256]",
    "model.detector.camera_bev.backbone.embedding_size=32",
    "model.detector.camera_bev.neck.in_channels=[128,256]",
    "model.detector.camera_bev.neck.out_channels=64",
    "model.detector.camera_bev.depth_net.mid_channels=64",
    "model.detector.camera_bev.depth_net.context_channels=32",
    "model.detector.camera_bev.bev_encoder.channels=[32,64,128]",
    "model.detector.camera_bev.bev_encoder.out_channels=64",
    "model.detector.camera_bev.bev_encoder.fuse_kernel=1",  # a 3x3 fusion at full BEV size was a sixth of the step
]
#: the shrunk heads: BEVDepth's CenterHead (conf/model/bevdepth.yaml) and DualViewDistill's sparse head
#: (conf/model/dualviewdistill.yaml; embed_dims follows the camera network's 64 channels)
CPU_HEAD = {
    "bevdepth": [
        "model.detector.head.share_conv_channels=32",
        "model.detector.head.head_channels=16",
        "model.detector.head.num_head_convs=1",  # 36 hidden convs (6 tasks x 6 maps) at full BEV size: over a quarter
    ],
    "dvd": [
        # The small world has 42 boxes with LiDAR points in the grid a keyframe (max 63; counted with the devkit,
        # 2026-12-02), so 7 anchors a box where Sparse4D has about 20 (900 anchors); 900 here costs ~1.6x per step
        # (scripts/profile_step.py), and denoising covers the first max_dn_gt=32 boxes of a keyframe only.
        "model.detector.head.num_anchors=300",
        "model.detector.head.operation_order.num_layers=4",  # Sparse4Dv3: 6
        "model.detector.head.num_dn_groups=2",
    ],
}
#: the CenterHead models (experiment=bevdepth*), all others the sparse-head ones (experiment=dvd*)
CPU_MODEL = CPU_CAMERA + CPU_HEAD["bevdepth"]


def cpu_model(experiment: str) -> list[str]:
    """The CPU model's overrides for an experiment: the shared camera network and its head family's."""
    out = CPU_CAMERA + CPU_HEAD["dvd" if experiment.startswith("dvd") else "bevdepth"]
    if "temporal" in experiment:  # two thirds of the queries carried, as Sparse4Dv3's 600 of 900
        out = out + ["model.detector.bank.num_temp_instances=200"]
    if "proposals" in experiment:  # the dense proposals' CenterHead shrunk as BEVDepth's; 100 of the 300 queries
        out = out + [o.replace(".head.", ".proposals.head.") for o in CPU_HEAD["bevdepth"]]
        out = out + ["model.detector.proposals.num_proposals=100"]
    return out


#: one-metre depth bins over each grid's reach (BEVDepth's 2-58 m for the default 51.2 m grid)
CPU_DEPTH = {
    "default": [
        "model.detector.camera_bev.lift_splat.dbound=[2.0,58.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=56",
    ],
    "av2": [  # conf/grid/av2.yaml: the default grid's extent
        "model.detector.camera_bev.lift_splat.dbound=[2.0,58.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=56",
    ],
    "near": [
        "model.detector.camera_bev.lift_splat.dbound=[1.0,45.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=44",
    ],
}

#: the --steps schedule (replaces the configs' MultiStepLR; total_steps comes from trainer.max_steps)
ONE_CYCLE = (
    "++model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,"
    "max_lr:${model.optimizer.lr},pct_start:0.3,div_factor:10.0,final_div_factor:100.0}"
)


class PeakRSS:
    """The peak summed RSS (bytes) of a process and its children, sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 2.0):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(pid, every), daemon=True)
        self._thread.start()

    def _watch(self, pid: int, every: float) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover (psutil comes with the environment)
            return
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def run(cmd: list[str], log_path: Path) -> tuple[float, int]:
    """Run ``cmd`` with its output teed to ``log_path``; return its wall time and peak RSS (bytes); exit on failure."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rss = PeakRSS(proc.pid)
        for line in proc.stdout:
            log.write(line)
            if not line.lstrip("\r").startswith(("Epoch", "Validation", "Predicting")):  # progress bars: log only
                sys.stdout.write(line)
        proc.wait()
        peak = rss.stop()
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n  log: {log_path}")
    return time.perf_counter() - t0, peak


def store_complete(store: Path) -> bool:
    if not (store / "zarr.json").is_file():
        return False
    from bevlabels.cache import LabelStoreReader

    return bool(LabelStoreReader(store).done.all())


#: the summary columns (mean +- spread over seeds) of each evaluation's rows
SUMMARY_KEYS = {"nuscenes": ("NDS", "mAP", "car AP"), "av2": ("AP", "CDS", "vehicle AP")}


def scores_of(summary: dict) -> dict:
    """The score columns of a ``metrics_summary.json``: the nuScenes devkit's, or av2's (``trainer.evaluate``)."""
    if "nd_score" in summary:  # DetectionEval
        tp = summary["tp_errors"]
        track = summary.get("tracking") or {}
        out = {
            "NDS": summary["nd_score"],
            "mAP": summary["mean_ap"],
            "car AP": summary["mean_dist_aps"].get("car", float("nan")),
            "mATE": tp["trans_err"],
            "mASE": tp["scale_err"],
            "mAOE": tp["orient_err"],
            "mAVE": tp["vel_err"],
        }
        if "amota" in track:  # TrackingEval (trainer.evaluate tracking=true)
            out["AMOTA"], out["IDS"] = track["amota"], track["ids"]
        out.update({f"AP {c}": ap for c, ap in summary["mean_dist_aps"].items()})  # per class
        return out
    # av2.evaluation.detection: its means over the categories with GT (its own AVERAGE_METRICS row averages all
    # 26, absent ones at AP 0), and its REGULAR_VEHICLE row (the car of AV2)
    mean = summary["mean_over_gt_categories"]
    return {
        "AP": mean["AP"],
        "CDS": mean["CDS"],
        "vehicle AP": summary["per_category"]["REGULAR_VEHICLE"]["AP"],
        "mATE": mean["ATE"],
        "mASE": mean["ASE"],
        "mAOE": mean["AOE"],
        "AP (av2, /26)": summary["AP"],
    }


def row_of(name: str, run_dir: Path, wall: float, batch_size: int = 2, peak_rss: int | None = None, seed=None) -> dict:
    """One table row from a run's evaluation files and its checkpoint."""
    ev = run_dir / "eval"
    summary = json.loads((ev / "metrics_summary.json").read_text())
    extra = json.loads((ev / "extra_metrics.json").read_text()) if (ev / "extra_metrics.json").is_file() else {}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    import torch

    meta = torch.load(ckpt, map_location="cpu", weights_only=False)
    steps = int(meta.get("global_step", -1))
    return {
        "experiment": name,
        "seed": seed,
        **scores_of(summary),
        "fg SILog": extra.get("fg_depth/silog"),
        "fg AbsRel": extra.get("fg_depth/abs_rel"),
        "fg RMSE": extra.get("fg_depth/rmse"),
        "distill cos obj": extra.get("distill_fit/cos_object"),  # trainer/metrics_distill.py
        "distill cos bg": extra.get("distill_fit/cos_background"),
        "steps": steps,
        "epochs": int(meta.get("epoch", -1)) + 1,
        "train s": f"{wall:.1f}",
        "samples/s": f"{steps * batch_size / wall:.3f}" if wall > 0 else "",  # training wall incl. validation
        "peak RSS GiB": f"{peak_rss / 2**30:.2f}" if peak_rss else "",
    }


def summarise(rows: list[dict], keys=("NDS", "mAP", "car AP")) -> list[dict]:
    """Per experiment (first-seen order): n runs, and per key the mean and spread (half the range) over seeds,
    and ``> spread`` for each key: whether its mean differs from the first experiment's by more than both
    spreads (never for the first experiment itself; with one seed, no spread: ``n/a``)."""
    names = list(dict.fromkeys(r["experiment"] for r in rows))
    stats = {}
    for n in names:
        vals = {k: [float(r[k]) for r in rows if r["experiment"] == n] for k in keys}
        stats[n] = {k: (sum(v) / len(v), (max(v) - min(v)) / 2) for k, v in vals.items()}
        stats[n]["n"] = len(vals[keys[0]])
    out = []
    base = names[0]
    for n in names:
        row = {"experiment": n, "seeds": stats[n]["n"]}
        for k in keys:
            m, sp = stats[n][k]
            row[k] = f"{m:.4f} +- {sp:.4f}"
        for k in keys:
            if n == base:
                row[f"{k} vs {base}"] = "-"
            elif min(stats[n]["n"], stats[base]["n"]) < 2:
                row[f"{k} vs {base}"] = "n/a (one seed)"
            else:
                diff = stats[n][k][0] - stats[base][k][0]
                beyond = abs(diff) > max(stats[n][k][1], stats[base][k][1])
                row[f"{k} vs {base}"] = f"{diff:+.4f} ({'beyond' if beyond else 'within'} spread)"
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    """A markdown table of the union of the rows' columns (first-seen order; a row without a column: blank)."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


#: overrides that name a path on this machine, left out of a ledger key (the same run elsewhere has the same key)
MACHINE_OVERRIDES = ("data.label_store=", "dataset.root=", "hydra.run.dir=")


class Ledger:
    """Finished runs' rows, one JSON object a line (module docstring): ``{"key", "row", "recorded"}``.

    ``path`` None: an empty ledger that records nothing.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.entries: list[dict] = []
        self._lock = threading.Lock()  # runs finishing at once in ``ablate.py --jobs N`` append one line each
        if self.path is not None and self.path.is_file():
            for i, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    entry["key"], entry["row"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{self.path}:{i}: not a ledger entry ({e}); fix or delete the line") from e
                self.entries.append(entry)

    @staticmethod
    def key(name: str, seed: int, overrides: list[str], a, store: Sequence[str] = ()) -> dict:
        """What makes two runs the same run: never a path of one machine. The label store's path is left out, so
        ``store`` gives what made it (its ``pipelines.labels`` overrides; none: ``make labels``' own store on the
        preset and grid of ``overrides``). A ``--store`` of your own is not in the key. The label store's schema
        version is: a run on labels of another version (schema 1's leaked object features onto the ground behind
        objects, issue 32) is another run, so a ledger never answers for it."""
        from bevlabels.cache import SCHEMA_VERSION

        kept = [o for o in overrides if not o.startswith(MACHINE_OVERRIDES)]
        return {
            "experiment": name,
            "seed": seed,
            "steps": a.steps,
            "lr": a.lr if a.steps else None,
            "batch_size": a.batch_size,
            "model": a.model,
            "overrides": kept,
            "store": list(store),
            "labels_schema": SCHEMA_VERSION,
        }

    def find(self, key: dict) -> dict | None:
        """The row recorded under ``key`` (the last one, if recorded twice), or None."""
        rows = [e["row"] for e in self.entries if e["key"] == key]
        return rows[-1] if rows else None

    def record(self, key: dict, row: dict) -> None:
        if self.path is None:
            return
        entry = {"key": key, "row": row, "recorded": recorded_where()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a") as f:  # one line per run, as it finishes: nothing lost on a crash
            self.entries.append(entry)
            f.write(json.dumps(entry) + "\n")


def recorded_where() -> dict:
    """The date, the commit and the CPU of this machine, for a ledger entry."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cpu": cpu, "cores": os.cpu_count()}


def run_complete(run_dir: Path) -> bool:
    """Whether a run is trained and evaluated (its ``bench_timing.json``, written last, exists)."""
    return (run_dir / "eval" / "metrics_summary.json").is_file() and (run_dir / "bench_timing.json").is_file()


def check_run_folder(run_dir: Path, seed: int, steps: int | None) -> None:
    """Refuse a run folder that holds another run: its composed config (``.hydra/config.yaml``) has another
    ``seed`` or ``trainer.max_steps``. (A single-seed sweep names its folders without the seed, so a second
    seed into the same ``--out`` would otherwise reuse the first seed's evaluation under the new seed.)"""
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        return
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    held = {"seed": cfg.get("seed"), "steps": (cfg.get("trainer") or {}).get("max_steps")}
    wanted = {"seed": seed, "steps": steps}
    differ = [k for k in wanted if wanted[k] is not None and held[k] is not None and int(held[k]) != int(wanted[k])]
    if differ:
        say = ", ".join(f"{k} {held[k]} (this run: {wanted[k]})" for k in differ)
        raise ValueError(f"{run_dir} holds another run: {say}; pass another --out, or delete the folder")


def train_command(run_dir: Path, overrides: list[str], seed: int, a) -> list[str]:
    """``trainer.train`` of one run: ``overrides`` (experiment, data, model) then the budget, steps and device of ``a``."""
    cmd = [sys.executable, "-m", "trainer.train", *overrides]
    # hydra.run.dir: the run folder holds the checkpoints, logs and the composed config (.hydra/) alike
    cmd += [f"hydra.run.dir={run_dir}", f"seed={seed}", f"threads={a.threads}"]
    cmd += [f"data.batch_size={a.batch_size}", f"data.num_workers={a.num_workers}"]
    cmd += [
        f"trainer.max_time={a.budget}",
        "trainer.max_epochs=100000",
        "trainer.min_epochs=0",  # else a budget shorter than an epoch is stretched to one epoch
        f"trainer.check_val_every_n_epoch={a.val_every}",
    ]
    if a.steps:  # the schedule must know the run's length: a step count, with the budget as a guard
        cmd += [f"trainer.max_steps={a.steps}", "model.scheduler_interval=step", "model.scheduler=null"]
        cmd += [f"model.optimizer.lr={a.lr}", ONE_CYCLE]
    return cmd + [f"trainer={a.device}", "callbacks.progress_bar.refresh_rate=50"]  # conf/trainer/{cpu,gpu}.yaml


def evaluate_command(run_dir: Path, a) -> list[str]:
    """``trainer.evaluate`` of a run's ``last.ckpt`` into ``<run>/eval``."""
    ev = run_dir / "eval"
    return [sys.executable, "-m", "trainer.evaluate", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={ev}",
            f"hydra.run.dir={ev}", f"threads={a.threads}", f"device={a.device}", "num_workers=0"]  # fmt: skip


def train_and_evaluate(
    name: str,
    run_dir: Path,
    overrides: list[str],
    seed: int,
    a,
    log_dir: Path,
    tag: str,
    ledger: Ledger | None = None,
    collect: bool = False,
    store: Sequence[str] = (),
    key_name: str | None = None,
) -> dict | None:
    """Train and evaluate one run, or reuse it (its row in ``ledger``, or ``run_dir`` when :func:`run_complete`);
    its table row. ``collect``: never train (None for a run that is in neither). ``store``: see
    :meth:`Ledger.key`. ``key_name``: the name in the ledger key (default ``name``); a row reused from the
    ledger is renamed ``name``, so two tables' rows that are the same run share one."""
    ledger = ledger or Ledger(None)
    key = Ledger.key(key_name or name, seed, overrides, a, store)
    row = ledger.find(key)
    if row is not None:
        print(f"{tag}: in the ledger {ledger.path}; reusing its row", flush=True)
        return {**row, "experiment": name}
    check_run_folder(run_dir, seed, a.steps)
    timing = run_dir / "bench_timing.json"
    if run_complete(run_dir):
        t = json.loads(timing.read_text())
        print(f"{tag}: evaluated already ({run_dir / 'eval'}); reusing it", flush=True)
        row = row_of(name, run_dir, t["train_s"], a.batch_size, t.get("peak_rss"), seed)
        ledger.record(key, row)
        return row
    if collect:
        print(f"{tag}: not run yet", flush=True)
        return None
    wall, peak = run(train_command(run_dir, overrides, seed, a), log_dir / f"{tag}.train.log")
    run(evaluate_command(run_dir, a), log_dir / f"{tag}.eval.log")
    timing.write_text(json.dumps({"train_s": wall, "peak_rss": peak}))  # last: marks the run complete
    row = row_of(name, run_dir, wall, a.batch_size, peak, seed)
    ledger.record(key, row)
    return row


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a training run shared by bench_train and ablate."""
    p.add_argument("--budget", default="00:01:00:00", help="trainer.max_time per run, DD:HH:MM:SS")
    p.add_argument("--model", choices=["cpu", "full"], default="cpu")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-every", type=int, default=5, help="validate every n epochs (time counts in the budget)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run under a one-cycle schedule")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the --steps one-cycle schedule")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument(
        "--ledger",
        type=Path,
        default=None,
        help="JSON-lines file of finished runs' rows (commit it): its runs are reused, new ones appended",
    )
    p.add_argument("--collect", action="store_true", help="train nothing: the table of the runs already finished")


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
