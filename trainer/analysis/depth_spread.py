"""How sharp is a camera detector's depth distribution at foreground pixels, and where does its expectation sit?

    python scripts/depth_spread.py outputs/bench_train/tig/bevdepth-s1/checkpoints/last.ckpt [--batches 4]

For the first ``--batches`` validation batches of the checkpoint's own data config: at every foreground LiDAR pixel
(``fg_px``, the pixels the foreground depth metrics read), the entropy of the predicted depth distribution (nats;
uniform over the bins is ``log D``), the probability of the most likely bin, and the signed error of the expected
depth (``E[d] - d_lidar``, metres) by LiDAR depth band. A distribution flattened toward uniform has its expectation
pulled to the middle of the bins' range: near objects then read too far, far ones too near.
"""

from __future__ import annotations

import argparse
import math

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from trainer.eval.predict import build_datamodule
    from trainer.lit_base import load_checkpoint

    loaded = load_checkpoint(a.ckpt)
    model = loaded.model
    dm = build_datamodule(loaded.config, num_workers=0)
    dm.setup("validate")
    bins = model.detector.bins
    stride = model.detector.downsample
    centres = bins.centres()
    ent, pmax, err, gts = [], [], [], []
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if i >= a.batches:
                break
            logits = model(batch)["depth_logits"]  # (B, N, D, h, w)
            for b, px in enumerate(batch["fg_px"]):
                cam, u, v, d = px[:, 0].long(), px[:, 1], px[:, 2], px[:, 3]
                iy, ix = (v // stride).long(), (u // stride).long()
                ok = (d >= bins.d_min) & (d < bins.d_max) & (iy < logits.shape[-2]) & (ix < logits.shape[-1])
                prob = logits[b, cam[ok], :, iy[ok], ix[ok]].softmax(-1)  # (R, D)
                ent.append(-(prob * prob.clamp_min(1e-12).log()).sum(-1))
                pmax.append(prob.amax(-1))
                err.append((prob * centres).sum(-1) - d[ok])
                gts.append(d[ok])
    ent, pmax, err, gt = (torch.cat(x) for x in (ent, pmax, err, gts))
    print(f"{a.ckpt}: {len(gt)} foreground pixels, {bins.num} bins (uniform entropy {math.log(bins.num):.2f} nats)")
    print(f"  entropy median {ent.median():.2f} nats; top-bin probability median {pmax.median():.2f}")
    for lo, hi in ((0, 10), (10, 20), (20, 35), (35, 60)):
        m = (gt >= lo) & (gt < hi)
        if m.any():
            print(f"  LiDAR {lo:2d}-{hi:2d} m: {int(m.sum()):6d} px, E[d] - d median {err[m].median():+.2f} m")


if __name__ == "__main__":
    main()
