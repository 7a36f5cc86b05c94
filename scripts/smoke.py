#!/usr/bin/env python
"""The whole chain on whatever device is there, in minutes: ``make smoke`` (or ``python scripts/smoke.py``).

    python scripts/smoke.py                      # the device there is: a CUDA GPU (all of them for DDP), else the CPU
    python scripts/smoke.py --device cpu         # the CPU even on a GPU machine
    python scripts/smoke.py --size full          # the experiments' own networks (the default on a GPU)
    python scripts/smoke.py --out /tmp/smoke --keep

Each step is the command a user runs (``python -m ...`` in a subprocess, its output in ``<out>/logs/``), checked
beyond its exit code, and timed:

1. ``world``: the ``tiny`` synthetic world (``pipelines.synth``: one train and one val scene of 4 keyframes);
2. ``labels``: the label stage on it (``pipelines.labels``): DINOv2 ViT-S/14 (random init: no download) into the
   zarr store, on ``grid=near``; on a GPU in bfloat16, one dask worker process per GPU (the GPU-resource path);
3. ``bevdepth_dino``, ``dvd_temporal``, ``teacher``: a few optimiser steps of each (``trainer.train``) at the
   device's precision (``trainer=auto``: bf16-mixed on a GPU with native bf16, 32-true on the CPU), then a
   validation (PreciseBN) and a checkpoint;
4. ``ddp``: ``bevdepth_dino`` under DDP on every visible GPU (NCCL), or on 2 CPU processes (gloo);
5. ``eval bevdepth_dino`` and ``eval teacher`` (the Kalman tracker), ``eval dvd_temporal`` (``tracker=bank``: the
   instance bank's own ids): ``trainer.evaluate`` (``device=auto``) with the nuScenes devkit's DetectionEval and TrackingEval.

``--size tiny`` (the default on a CPU) shrinks the camera and LiDAR networks to a few thousand parameters, as the
tests do; ``--size full`` (the default on a GPU) trains the experiments' own networks (ResNet-50 at 256x704). A table
(step, seconds, ok / FAILED / skipped, what ran) ends the run; the exit code is 1 when a step failed. Budget: under
10 minutes on 2 CPU cores, under 8 on one H100. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.tiny import TINY_CAMERA, TINY_CENTER_HEAD, TINY_TEACHER  # the sizes the tests use too
from trainer.tiny import TINY_SPARSE_HEAD as _SPARSE

REPO = Path(__file__).resolve().parents[1]

#: DualViewDistill's sparse head, shrunk, with the temporal bank and the aggregations' groups the smoke run trains
TINY_SPARSE_HEAD = [
    *_SPARSE,
    "model.detector.head.bev_agg.num_groups=2",
    "model.detector.head.pv_agg.num_groups=2",
    "model.detector.bank.num_temp_instances=16",
]


@dataclass
class Step:
    """One step of the chain: a command, what it needs first, and a check of what it wrote."""

    name: str
    cmd: list[str]
    needs: tuple[str, ...] = ()
    check: Callable[[str], str] | None = None  # log text -> a note for the table; raises when the output is wrong
    timeout_s: float = 300.0
    seconds: float = 0.0
    result: str = "skipped"
    note: str = ""
    env: dict = field(default_factory=dict)


def detect(device: str) -> dict:
    """``{"gpus", "name", "bf16", "cpus", "forced_cpu"}`` of the device the chain runs on (``auto``: the GPUs when there
    are any; ``forced_cpu``: ``--device cpu`` on a machine with a GPU)."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = visible if device in ("auto", "gpu") else 0
    if device == "gpu" and gpus == 0:
        raise SystemExit("smoke: --device gpu but torch sees no CUDA device")
    info = {"gpus": gpus, "name": "cpu", "bf16": False, "cpus": len(os.sched_getaffinity(0))}
    info["forced_cpu"] = visible > 0 and gpus == 0  # --device cpu on a GPU machine
    if gpus:
        info["name"] = torch.cuda.get_device_name(0)
        info["bf16"] = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return info


def plan(out: Path, dev: dict, size: str, steps: int) -> list[Step]:
    """The chain's steps for a device (``dev``: :func:`detect`) and network size."""
    py = sys.executable
    world, store, runs, evals = out / "world", out / "labels.zarr", out / "runs", out / "eval"
    gpu = dev["gpus"] > 0
    tiny = size == "tiny"
    # trainer=auto (the default) is what runs: the GPU at its precision, else the CPU in fp32; --device cpu on a GPU
    # machine says trainer=cpu
    trainer = ["trainer=cpu"] if dev["forced_cpu"] else ["trainer=auto"]
    common = [
        "dataset=synthetic",
        f"dataset.root={world}",
        "grid=near",
        "data.batch_size=2",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=100",
        "+trainer.limit_val_batches=1",
        "+trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        *trainer,
    ]

    on_store = [f"data.label_store={store}"]  # the camera experiments' labels (the teacher reads the LiDAR only)

    def train(name: str, experiment: str, *extra: str) -> Step:
        return Step(
            name,
            [py, "-m", "trainer.train", f"experiment={experiment}", *common, *extra, f"hydra.run.dir={runs / name}"],
            needs=("labels",),
            check=lambda log, n=name: check_train(runs / n, steps, log),
        )

    labels = [
        py, "-m", "pipelines.labels", "dataset=synthetic", f"dataset.root={world}", f"out={store}", "grid=near",
        "features=dinov2_small", "features.weights=random", "overwrite=true", f"hydra.run.dir={out / 'hydra'}",
    ]  # fmt: skip
    if gpu:  # one worker process per GPU, each task asking for one (cluster.resources=auto)
        labels += [f"cluster.n_workers={dev['gpus']}", "features.dtype=" + ("bfloat16" if dev["bf16"] else "float16")]
    else:
        labels += ["cluster.n_workers=1", "cluster.processes=false"]
    camera = TINY_CAMERA if tiny else []
    ddp = (
        ["++trainer.strategy=ddp", "trainer.devices=-1"]
        if gpu
        else ["++trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    )
    ddp_env = {"OMP_NUM_THREADS": "1"} if not gpu else {}
    return [
        Step("world", [py, "-m", "pipelines.synth", "preset=tiny", "seed=0", f"out={world}", "overwrite=true"]),
        Step("labels", labels, needs=("world",), check=lambda log: check_labels(store, log), timeout_s=420),
        train("bevdepth_dino", "bevdepth_dino", *on_store, *camera, *(TINY_CENTER_HEAD if tiny else [])),
        train("dvd_temporal", "dvd_temporal", *on_store, *camera, *(TINY_SPARSE_HEAD if tiny else [])),
        train("teacher", "teacher_centerpoint", *(TINY_TEACHER if tiny else [])),
        Step(
            "ddp",
            [
                py,
                "-m",
                "trainer.train",
                "experiment=bevdepth_dino",
                *[o for o in common if not o.startswith("data.batch_size")],
                "data.batch_size=1",
                *on_store,
                *camera,
                *(TINY_CENTER_HEAD if tiny else []),
                *ddp,
                f"hydra.run.dir={runs / 'ddp'}",
            ],
            needs=("labels",),
            check=lambda log: check_train(runs / "ddp", steps, log, world_size=max(dev["gpus"], 1) if gpu else 2),
            env=ddp_env,
        ),
        evaluate("eval bevdepth_dino", runs / "bevdepth_dino", evals / "bevdepth_dino", "bevdepth_dino", dev),
        evaluate("eval dvd_temporal", runs / "dvd_temporal", evals / "dvd_temporal", "dvd_temporal", dev, "bank"),
        evaluate("eval teacher", runs / "teacher", evals / "teacher", "teacher", dev),
    ]


def evaluate(name: str, run: Path, out: Path, needs: str, dev: dict, tracker: str = "kalman") -> Step:
    """``trainer.evaluate`` of a run's last checkpoint (device=auto, or cpu when --device cpu said so)."""
    cmd = [sys.executable, "-m", "trainer.evaluate", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={out}"]
    cmd.append(f"tracker={tracker}")
    cmd.append("device=cpu" if dev["forced_cpu"] else "device=auto")
    return Step(name, cmd, needs=(needs,), check=lambda log: check_eval(out, log))


# -- checks: what each step must have written ------------------------------------------------------------


def check_labels(store: Path, log: str) -> str:
    from bevlabels.cache import LabelStoreReader

    reader = LabelStoreReader(store)
    done = int(reader.done_mask().sum())
    if done != len(reader.done_mask()):
        raise AssertionError(f"{store}: {done} of {len(reader.done_mask())} keyframes labelled")
    m = re.search(r"([\d.]+) keyframes/s", log)
    return f"{done} keyframes" + (f", {float(m.group(1)):.2f} kf/s" if m else "")


def check_train(run: Path, steps: int, log: str, world_size: int = 1) -> str:
    import torch

    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise AssertionError(f"no checkpoint {ckpt}")
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    if step != steps:
        raise AssertionError(f"{ckpt} holds step {step}, expected {steps}")
    m = re.search(r"trained on: (.*)", log)
    ran = m.group(1).strip() if m else "?"
    if world_size > 1 and f"{world_size} processes" not in ran:
        raise AssertionError(f"expected {world_size} DDP processes; the run says: {ran}")
    return ran


def check_eval(out: Path, log: str) -> str:
    summary = json.loads((out / "metrics_summary.json").read_text())
    tracking = summary.get("tracking") or {}
    if tracking.get("amota") is None:
        raise AssertionError(f"{out}/metrics_summary.json has no tracking AMOTA: {tracking}")
    m = re.search(r"predicted on: (.*)", log)
    ran = m.group(1).strip() if m else "?"
    return (
        f"NDS {summary['nd_score']:.3f}, AMOTA {tracking['amota']:.3f} ({tracking.get('tracker')} tracker); "
        f"{ran.replace('device ', '')}"
    )


# -- running ----------------------------------------------------------------------------------------------


def run_step(step: Step, logs: Path, deadline: float) -> None:
    """Run one step (its output to ``logs/<name>.log``), then its check; fill in seconds, result and note."""
    log_path = logs / (re.sub(r"\W+", "_", step.name) + ".log")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **step.env}
    timeout = max(10.0, min(step.timeout_s, deadline - time.monotonic()))
    t0 = time.perf_counter()
    print(f"[smoke] {step.name}: {' '.join(step.cmd[1:])}", flush=True)
    try:
        with open(log_path, "w") as f:
            p = subprocess.run(step.cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = None
    step.seconds = time.perf_counter() - t0
    log = log_path.read_text(errors="replace")
    if rc != 0:
        step.result = "FAILED"
        step.note = f"timed out after {timeout:.0f} s" if rc is None else f"exit code {rc}"
        step.note += f"; see {log_path}"
        tail = "\n".join(log.strip().splitlines()[-25:])
        print(f"[smoke] {step.name} FAILED ({step.note}):\n{tail}", flush=True)
        return
    try:
        step.note = step.check(log) if step.check else ""
        step.result = "ok"
    except Exception as e:  # the command succeeded but did not write what it should
        step.result, step.note = "FAILED", f"{type(e).__name__}: {e}"
        print(f"[smoke] {step.name} FAILED its check: {step.note}", flush=True)


def table(steps: list[Step], total: float, dev: dict, size: str) -> str:
    device = f"{dev['gpus']} x {dev['name']}" if dev["gpus"] else f"cpu ({dev['cpus']} cores)"
    width = max(len(s.name) for s in steps)
    lines = [f"smoke on {device}, {size} networks", f"{'step':<{width}}  {'seconds':>8}  {'result':<8}  what ran"]
    lines += [f"{s.name:<{width}}  {s.seconds:8.1f}  {s.result:<8}  {s.note}" for s in steps]
    failed = sum(s.result != "ok" for s in steps)
    lines.append(f"{'total':<{width}}  {total:8.1f}  {'ok' if not failed else f'{failed} not ok':<8}")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/smoke.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], default="auto", help="auto: a CUDA GPU when there is one"
    )
    p.add_argument(
        "--size",
        choices=["auto", "tiny", "full"],
        default="auto",
        help="networks: auto is tiny on a CPU, full on a GPU",
    )
    p.add_argument("--steps", type=int, default=3, help="optimiser steps of each training run (default 3)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (always kept when a step failed)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for the whole chain (default 600)")
    p.add_argument("--only", nargs="+", default=None, help="run only these steps (and what they need)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the checks' imports (numcodecs) are noisy
    a = parse(argv)
    t_start = time.perf_counter()
    deadline = time.monotonic() + a.budget
    dev = detect(a.device)
    size = a.size if a.size != "auto" else ("full" if dev["gpus"] else "tiny")
    out = a.out or Path(tempfile.mkdtemp(prefix="bevlabels-smoke-"))
    if out.exists() and a.out is not None:
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = plan(out, dev, size, a.steps)
    if a.only:
        unknown = sorted(set(a.only) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"smoke: --only {unknown}: no such step; steps: {[s.name for s in steps]}")
        by_name, wanted = {s.name: s for s in steps}, set()
        todo = list(a.only)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += list(by_name[name].needs)
        steps = [s for s in steps if s.name in wanted]
    print(f"[smoke] work folder {out}", flush=True)
    ok: set[str] = set()
    for step in steps:
        missing = [n for n in step.needs if n not in ok]
        if missing:
            step.note = f"needs {', '.join(missing)}"
            continue
        if time.monotonic() > deadline:
            step.result, step.note = "FAILED", f"not started: the {a.budget:.0f} s budget is spent"
            continue
        run_step(step, logs, deadline)
        if step.result == "ok":
            ok.add(step.name)
    total = time.perf_counter() - t_start
    print("\n" + table(steps, total, dev, size), flush=True)
    failed = any(s.result != "ok" for s in steps)
    if failed or a.keep or a.out is not None:
        print(f"[smoke] logs in {logs}", flush=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
