"""What two-frame BEV fusion costs: training step time and peak memory of ``bevdepth4d`` / ``dvd4d`` against
``bevdepth`` / ``dvd`` on the CPU bench model.

    python scripts/bench_frames.py                                   # both pairs, 6 rounds of 3 steps
    python scripts/bench_frames.py --pairs bevdepth:bevdepth4d --rounds 4 --out results/two_frame_cost.md

Step time: per pair, the single-frame and the two-frame model are built in one process and trained on the same
synthetic batch (:func:`trainer.bench.step.batch_for`; the two-frame model also gets a previous keyframe, its images
different, moved 5 m by the ego), alternating round by round (``--rounds`` of ``--steps`` optimiser steps after
``--warmup`` steps each), so drift in the machine's load falls on both; data loading is not included (a two-frame
sample decodes twice the images: the benchmark runs' samples/s show that). Peak memory: each experiment alone in a
subprocess (``--warmup + --steps`` steps), its ``ru_maxrss``. Printed, and with ``--out`` written as markdown with the
command, date, machine and torch version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.bench.step import _cpu_name, batch_for, build, step


def with_previous(batch: dict, module) -> dict:
    """``batch`` with a previous keyframe for a two-frame model (other images, the ego 5 m behind and turned)."""
    if getattr(module.detector.camera_bev, "frames", 1) != 2:
        return batch
    g = torch.Generator().manual_seed(1)
    B = batch["images"].shape[0]
    c, s = torch.cos(torch.tensor(0.05)), torch.sin(torch.tensor(0.05))
    cur_from_prev = torch.tensor([[c, -s, 0, -5.0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).expand(B, 4, 4)
    return {
        **batch,
        "prev_images": torch.randint(0, 256, batch["images"].shape, dtype=torch.uint8, generator=g),
        "prev_K": batch["K"],
        "prev_ego_from_cam": batch["ego_from_cam"],
        "cur_from_prev": cur_from_prev.clone(),
        "dt": torch.full((B,), 0.5),
    }


def _setup(experiment: str):
    module, hw = build(experiment, full=False)
    module.train()
    optim = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    return module, optim, with_previous(batch_for(module, hw), module)


def peak_rss_gib(experiment: str, steps: int) -> float:
    """``ru_maxrss`` (GiB) of a subprocess that builds ``experiment`` and trains ``steps`` steps."""
    code = (
        f"import json, resource, torch; torch.set_num_threads({torch.get_num_threads()});"
        "from trainer.bench.frames import _setup; from trainer.bench.step import step;"
        f"m, o, b = _setup({experiment!r});"
        f"[step(m, o, b) for _ in range({steps})];"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"peak-memory run of {experiment} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]) / 2**20  # KiB -> GiB


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["bevdepth:bevdepth4d", "dvd:dvd4d"], help="single:two-frame")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds of each model")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark runs use 1)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    for pair in a.pairs:
        names = pair.split(":")
        if len(names) != 2:
            p.error(f"--pairs takes single:two-frame experiment names; got {pair!r}")
        runs = {n: _setup(n) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for n in names:
            for _ in range(a.warmup):
                step(*runs[n])
        for r in range(a.rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(*runs[n])
                times[n].append((time.perf_counter() - t0) / a.steps)
                print(f"{n} round {r}: {times[n][-1]:.3f} s/step", flush=True)
        del runs
        for n in names:
            rows.append({"experiment": n, "median_s": statistics.median(times[n]), "range_s": (min(times[n]), max(times[n])),
                         "peak_rss_gib": peak_rss_gib(n, a.warmup + a.steps)})  # fmt: skip
        rows[-1]["change"] = rows[-1]["median_s"] / rows[-2]["median_s"] - 1
        rows[-1]["rss_change"] = rows[-1]["peak_rss_gib"] / rows[-2]["peak_rss_gib"] - 1

    cmd = "python scripts/bench_frames.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# What two-frame BEV fusion costs: step time and peak memory on the CPU bench model",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.processor() or platform.machine()}, {_cpu_name()}, {a.threads} torch threads, "
        f"torch {torch.__version__}",
        f"- model: the bench_train.py CPU model, batch 2 x 6 cameras of 128x352, synthetic batch (no data loading); "
        f"{a.rounds} alternating rounds of {a.steps} steps per model after {a.warmup} warm-up steps each; peak RSS "
        f"of a subprocess training {a.warmup + a.steps} steps",
        "",
        "| experiment | s/step (median; fastest-slowest round) | against its single-frame model | peak RSS GiB | against |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ch = f"{100 * r['change']:+.1f}%" if "change" in r else ""
        rc = f"{100 * r['rss_change']:+.1f}%" if "rss_change" in r else ""
        lines.append(
            f"| {r['experiment']} | {r['median_s']:.3f} ({r['range_s'][0]:.3f}-{r['range_s'][1]:.3f}) | {ch} "
            f"| {r['peak_rss_gib']:.2f} | {rc} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
