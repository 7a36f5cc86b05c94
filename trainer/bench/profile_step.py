"""Time and profile one CPU training step of a camera detector: ``python scripts/profile_step.py dvd``.

    python scripts/profile_step.py dvd              # seconds per step, then torch.profiler's top ops
    python scripts/profile_step.py dvd_bev --gt 30 --steps 3
    python scripts/profile_step.py dvd --gt 42 model.detector.head.num_anchors=900   # with Hydra overrides

The model is the CPU bench model of the experiment (:mod:`trainer.bench.cpu`, built by
:func:`trainer.bench.step.build`), the batch :func:`trainer.bench.step.batch_for`'s synthetic one (random
images, depth map) with ``--gt`` car boxes per sample spread over +-40 m (the small world has about 30 a
keyframe), so the sparse head's matching and denoising see a realistic load. Data loading is not measured.
This is how the PV-aggregation change was timed (``results/step_time_pv_gather.md``: median 2.40 s per step
before it, 1.88 s after).
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    from trainer.bench.step import batch_for, build, step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default="dvd")
    p.add_argument("--gt", type=int, default=30, help="car boxes per sample")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="profiler table rows (0: no profile)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides of the model (key=value), after the CPU model's")
    a = p.parse_intermixed_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    module, hw = build(a.experiment, False, a.overrides)
    module.train()
    batch = batch_for(module, hw)
    g = torch.Generator().manual_seed(1)
    boxes = torch.zeros(a.gt, 9)
    boxes[:, :2] = torch.rand(a.gt, 2, generator=g) * 80 - 40
    boxes[:, 3:6] = torch.tensor([4.5, 1.9, 1.6])
    boxes[:, 6] = torch.rand(a.gt, generator=g) * 6
    B = len(batch["gt_boxes"])
    batch["gt_boxes"] = [boxes.clone() for _ in range(B)]
    batch["gt_labels"] = [torch.zeros(a.gt, dtype=torch.long) for _ in range(B)]
    optim = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    for _ in range(2):
        step(module, optim, batch)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step(module, optim, batch)
    print(f"{a.experiment}: {(time.perf_counter() - t0) / a.steps:.3f} s/step ({a.threads} threads)", flush=True)
    if a.rows:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(module, optim, batch)
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
