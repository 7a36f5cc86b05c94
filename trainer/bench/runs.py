"""One benchmark run: ``trainer.train`` then ``trainer.evaluate`` as subprocesses, timed, resumable, in the ledger.

The runner of ``scripts/bench_train.py`` and ``scripts/ablate.py`` (:mod:`trainer.bench.ablate`): the command
lines of a run (:func:`train_command`, :func:`evaluate_command`), the options they share
(:func:`add_run_arguments`), and :func:`train_and_evaluate`, which reuses a run found in the ledger
(:class:`~trainer.bench.ledger.Ledger`) or in its run folder.

Peak RSS is sampled every 2 s over the training process and its data-loader workers (psutil), summed:
shared pages of the forked workers count twice, so it is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from trainer.bench.ledger import Ledger
from trainer.bench.tables import row_of

REPO = Path(__file__).resolve().parents[2]

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
