"""Time the camera student's training step with its 1x1 convolutions as GEMMs and as oneDNN convolutions.

    python scripts/bench_step.py                            # the CPU bench model (trainer.bench.cpu), both experiments
    python scripts/bench_step.py --rounds 6 --steps 5 --out results/step_time_pointwise.md

What it answers: the cost, in CPU step time, of running every 1x1 convolution of the models as a
matrix product (``trainer.models.components.pointwise``: oneDNN's AVX-512 1x1 kernel corrupts the
heap for some channels-last shapes) against sending them to oneDNN as before. Same model, same
weights, same batch, same process: the two settings alternate round by round (``--rounds`` of
``--steps`` optimiser steps each, after ``--warmup`` steps of each), so drift in the machine's load
falls on both. The batch is synthetic (random images, one GT box per sample, a depth map, a DINOv2
grid) because data loading is not what is measured.

The model is the CPU bench model (:mod:`trainer.bench.cpu`) on the default grid (ResNet-18 at half width on 6 x
128x352 images, batch 2, 56 depth bins, 128x128 BEV cells), with ``experiment=bevdepth`` and
``bevdepth_dino``; ``--full`` uses the configs' own model instead. The table (median and spread of
the per-round mean step time) is printed and, with ``--out``, written as markdown with the command,
date, machine and torch version.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def build(experiment: str, full: bool, extra: list[str] | tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import trainer  # noqa: F401  (registers the ${len:} resolver the configs use)
    from bevlabels.conf import CONF_DIR
    from trainer.bench.cpu import CPU_DEPTH, cpu_model

    overrides = [f"experiment={experiment}", "run_dir=/tmp/bench_step"]
    if not full:
        overrides += cpu_model(experiment) + CPU_DEPTH["default"]
    overrides += list(extra)  # last: they win
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    module = instantiate(cfg.model)
    hw = tuple(int(v) for v in cfg.data.image_aug.final_hw)
    return module, hw


def batch_for(module, hw: tuple[int, int], B: int = 2, N: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    H, W = hw
    K = torch.tensor([[0.5 * W, 0, W / 2], [0, 0.5 * W, H / 2], [0, 0, 1]]).expand(B, N, 3, 3).clone()
    cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.6], [0, 0, 0, 1]])  # looks along ego +x
    yaws = torch.linspace(0, 2 * torch.pi, N + 1)[:N]
    rot = [
        torch.tensor(
            [[torch.cos(a), -torch.sin(a), 0, 0], [torch.sin(a), torch.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
        for a in yaws
    ]
    ego_from_cam = torch.stack([r @ cam for r in rot]).expand(B, N, 4, 4).clone()
    s = module.detector.downsample
    gh, gw = module.detector.grid.shape
    batch = {
        "images": torch.randint(0, 256, (B, N, 3, H, W), dtype=torch.uint8, generator=g),
        "K": K,
        "ego_from_cam": ego_from_cam,
        "gt_boxes": [torch.tensor([[10.0, 2.0, 0.0, 4.5, 1.9, 1.6, 0.4, 1.0, 0.0]]) for _ in range(B)],
        "gt_labels": [torch.tensor([0]) for _ in range(B)],
        "depth_map": torch.rand(B, N, H // s, W // s, generator=g) * 40 + 2,
    }
    if module.distilling:
        C = module.detector.distill_channels
        batch["dino_feat"] = torch.randn(B, C, gh, gw, generator=g).half()
        batch["dino_count"] = (torch.rand(B, gh, gw, generator=g) < 0.3).int()
    return batch


def step(module, optim, batch) -> None:
    optim.zero_grad(set_to_none=True)
    module.compute_loss(module(batch), batch)["loss"].backward()
    optim.step()


def main(argv: list[str] | None = None) -> None:
    from trainer.models.components.pointwise import PointwiseConv2d

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=["bevdepth", "bevdepth_dino"])
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds of each setting")
    p.add_argument("--steps", type=int, default=5, help="optimiser steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each setting first")
    p.add_argument("--full", action="store_true", help="the configs' own model instead of the CPU bench model")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = p.parse_args(argv)

    torch.manual_seed(0)
    rows = []
    for exp in a.experiments:
        module, hw = build(exp, a.full)
        module.train()
        optim = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
        batch = batch_for(module, hw)
        times: dict[bool, list[float]] = {True: [], False: []}
        for gemm in (True, False):
            PointwiseConv2d.gemm_on_cpu = gemm
            for _ in range(a.warmup):
                step(module, optim, batch)
        for r in range(a.rounds):
            for gemm in (True, False) if r % 2 == 0 else (False, True):
                PointwiseConv2d.gemm_on_cpu = gemm
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(module, optim, batch)
                times[gemm].append((time.perf_counter() - t0) / a.steps)
                print(f"{exp} round {r} {'gemm  ' if gemm else 'onednn'} {times[gemm][-1]:.3f} s/step", flush=True)
        PointwiseConv2d.gemm_on_cpu = True
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "experiment": exp,
                "onednn": med[False],
                "onednn_range": (min(times[False]), max(times[False])),
                "gemm": med[True],
                "gemm_range": (min(times[True]), max(times[True])),
                "change": med[True] / med[False] - 1,
            }
        )

    cmd = "python scripts/bench_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Step time: 1x1 convolutions as GEMMs (the AVX-512 crash remedy) vs oneDNN's 1x1 kernels",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.processor() or platform.machine()}, {_cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, oneDNN ISA {_isa()}",
        f"- model: {'the configs own' if a.full else 'bench_train.py CPU model'}, batch 2 x 6 cameras, "
        f"{a.rounds} alternating rounds of {a.steps} steps per setting after {a.warmup} warm-up steps each",
        "",
        "| experiment | oneDNN 1x1 (before), s/step | GEMM 1x1 (after), s/step | change |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['experiment']} | {r['onednn']:.3f} ({r['onednn_range'][0]:.3f}-{r['onednn_range'][1]:.3f}) "
            f"| {r['gemm']:.3f} ({r['gemm_range'][0]:.3f}-{r['gemm_range'][1]:.3f}) | {100 * r['change']:+.1f}% |"
        )
    lines += ["", "Median of the per-round mean step time; in brackets the fastest and slowest round."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (" (AVX-512)" if "avx512f" in flags else " (no AVX-512)")
    except OSError:
        pass
    return "unknown CPU"


def _isa() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    main()
