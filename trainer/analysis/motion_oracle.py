"""Can the two-frame model learn velocity from maps that show motion perfectly? A camera-free, controlled test.

    python -m trainer.analysis.motion_oracle --root data/synthetic/small-seed0 --store data/labels/synthetic.zarr
    python -m trainer.analysis.motion_oracle ... --no-motion        # the control: the previous map is the current one
    python -m trainer.analysis.motion_oracle ... --blur 3.0          # both maps blurred (a sigma of 3 cells)

Issue 36's two-frame models (``bevdepth4d``, ``dvd4d``) did not leave the velocity loss's zero-velocity optimum.
This test takes the camera out to say where that comes from. Each keyframe's GT boxes (the training GT,
:func:`~trainer.data.common.gt_for_frame`, under the training BEV augmentation) are painted on a BEV map of
lift-splat's channel count (a fixed random vector per class on the cells of a box's footprint, a second one on its
front half: :func:`trainer.analysis.head_convergence.paint`). The previous keyframe's boxes are painted in its own
(augmented) ego frame and warped into the current one by ``cur_from_prev`` and :func:`~bevlabels.grid.resample_bev`:
the path :meth:`CameraBEV.previous_map <trainer.models.components.camera_bev.CameraBEV.previous_map>` takes, with
the dataset's own ``cur_from_prev`` and ``dt``. The CPU bench model's BEV encoder and CenterHead of
``experiment=bevdepth4d`` (``velocity: displacement``) are trained on the concatenated maps with the head's own
targets and loss, AdamW at a constant ``--lr``.

Printed every ``--every`` steps: the car task's velocity loss (the L1 of ``v dt`` per component, unweighted) beside
the loss of predicting zero on the same batch; at the end, on the validation keyframes (no augmentation), the
moving cars' (> 1 m/s) median true and predicted speed at their centre cells, the median velocity error of moving
and of static cars, and the share of moving cars whose predicted speed is within 30% of the truth (issue 36's
target). If the model learns velocity here, the encoder, the head, the targets, ``dt`` and the warp are right, and
what the camera models lack is motion their lift-splat maps show; if it does not, the chain is at fault.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from bevlabels.grid import resample_bev
from trainer.analysis.head_convergence import paint

#: speeds above this (m/s) count as moving (trainer.analysis.velocity's threshold)
MOVING = 1.0


def build(root: str, store: str, extra: list[str], grid: str = "default"):
    """The ``bevdepth4d`` CPU bench model's config, its BEV encoder and CenterHead, and its training and validation
    datasets (used for their frames, GT filter, BEV augmentation, previous keyframes and intervals; no image is read)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import trainer  # noqa: F401  (registers the ${mul:} and ${len:} resolvers the configs use)
    from bevlabels.conf import CONF_DIR
    from trainer.bench.cpu import CPU_DEPTH, cpu_model

    overrides = [
        "experiment=bevdepth4d",
        "dataset=synthetic",
        f"dataset.root={root}",
        f"data.label_store={store}",
        f"grid={grid}",
        "run_dir=/tmp/motion_oracle",
        *cpu_model("bevdepth4d"),
        *CPU_DEPTH[grid],
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    detector = instantiate(cfg.model.detector)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.make_dataset(dm.frames("train"), train=True)
    val = dm.make_dataset(dm.frames("val"), train=False)
    return cfg, detector, train, val


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of ``(B, C, H, W)`` maps, ``sigma`` in cells (0: unchanged)."""
    if sigma <= 0:
        return x
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    C = x.shape[1]
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1).contiguous(), padding=(r, 0), groups=C)
    return torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1).contiguous(), padding=(0, r), groups=C)


class Painter:
    """Two-frame oracle maps ``(B, 2C, H, W)``, their GT and ``dt`` for keyframes of a camera dataset."""

    def __init__(self, ds, channels: int, motion: bool, sigma: float, seed: int):
        from trainer.data.camera import cur_from_prev_of
        from trainer.data.common import gt_for_frame, sample_bev_aug

        self._cur_from_prev = cur_from_prev_of

        self.ds, self.motion, self.sigma = ds, motion, sigma
        self._gt, self._aug = gt_for_frame, sample_bev_aug
        g = torch.Generator().manual_seed(seed)
        n = len(ds.class_names)
        self.body, self.front = torch.randn(n, channels, generator=g), torch.randn(n, channels, generator=g)

    def _paint(self, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grid = self.ds.grid
        out = torch.zeros(self.body.shape[1], *grid.shape)
        for k in labels.unique().tolist():
            sel = labels == k
            out += paint(grid, boxes[sel], self.body[k], self.front[k])
        return out

    def sample(self, i: int, train: bool, generator: torch.Generator | None = None):
        ds = self.ds
        frame = ds.frames[i]
        prev = ds._prev.get(frame.token, frame)
        A = sample_bev_aug_or_eye(self._aug, ds, train, generator)
        boxes, labels = self._gt(frame, ds.class_names, ds.grid, ds.min_lidar_points, aug_from_ego=A)
        cur = self._paint(boxes, labels)
        if self.motion:
            pb, pl = self._gt(prev, ds.class_names, ds.grid, ds.min_lidar_points, aug_from_ego=A)
            T = self._cur_from_prev(frame, prev, A)
            old = resample_bev(self._paint(pb, pl)[None], ds.grid, dst_from_src=T[None], mode="bilinear")[0]
        else:
            old = cur
        return torch.cat([cur, old]), boxes, labels, torch.tensor(ds.interval(frame), dtype=torch.float32)

    def batch(self, idx, train: bool, generator=None):
        maps, boxes, labels, dts = zip(*(self.sample(i, train, generator) for i in idx))
        return blur(torch.stack(maps), self.sigma), list(boxes), list(labels), torch.stack(dts)


def sample_bev_aug_or_eye(sample_bev_aug, ds, train: bool, generator) -> torch.Tensor:
    if train and ds.bev_aug is not None:
        return sample_bev_aug(**ds.bev_aug, generator=generator)
    return torch.eye(4)


def velocity_at_centres(head, preds, targets, task: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's ``vel`` and the target at the GT centre cells of task ``task``: ``(M, 2)`` each (known velocity only)."""
    from trainer.models.components.center_head import gather_at

    tg = targets[task]
    mask = tg["mask"] & tg["vel_mask"]
    pred = gather_at(preds[task]["vel"].float(), tg["ind"])  # (B, K, 2)
    return pred[mask], tg["vel"][mask]


def evaluate(detector, painter, val_idx, batch: int) -> dict:
    """Moving and static cars' velocity on ``val_idx`` (no augmentation), in m/s."""
    head, encoder = detector.head, detector.camera_bev.bev_encoder
    pred_all, true_all = [], []
    was = head.training
    head.eval(), encoder.eval()
    with torch.no_grad():
        for s in range(0, len(val_idx), batch):
            maps, boxes, labels, dt = painter.batch(val_idx[s : s + batch], train=False)
            preds = head(encoder(maps))
            targets = head.targets(boxes, labels, detector.grid, dt=dt)
            tg = targets[0]
            mask = tg["mask"] & tg["vel_mask"]
            p, t = velocity_at_centres(head, preds, targets)
            per = dt[:, None].expand_as(mask)[mask][:, None]  # each centre's interval
            pred_all.append(p / per)
            true_all.append(t / per)
    head.train(was), encoder.train(was)
    pred, true = torch.cat(pred_all).numpy(), torch.cat(true_all).numpy()
    speed_t, speed_p = np.linalg.norm(true, axis=1), np.linalg.norm(pred, axis=1)
    err = np.linalg.norm(pred - true, axis=1)
    moving = speed_t > MOVING
    return {
        "cars": int(len(true)),
        "moving": int(moving.sum()),
        "moving_true_speed_median": float(np.median(speed_t[moving])) if moving.any() else float("nan"),
        "moving_pred_speed_median": float(np.median(speed_p[moving])) if moving.any() else float("nan"),
        "moving_speed_within_30pct": float(np.mean(np.abs(speed_p[moving] - speed_t[moving]) <= 0.3 * speed_t[moving]))
        if moving.any()
        else float("nan"),
        "moving_velocity_error_median": float(np.median(err[moving])) if moving.any() else float("nan"),
        "static_velocity_error_median": float(np.median(err[~moving])) if (~moving).any() else float("nan"),
        "zero_velocity_error_median_moving": float(np.median(speed_t[moving])) if moving.any() else float("nan"),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/synthetic/small-seed0", help="the synthetic world (dataset.root)")
    p.add_argument("--store", default="data/labels/synthetic.zarr", help="its label store (data.label_store)")
    p.add_argument("--grid", default="default", choices=["default", "near", "av2"], help="conf/grid (the store's)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, constant")
    p.add_argument("--no-motion", action="store_true", help="the control: the previous map is the current one")
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian blur of both maps, sigma in cells")
    p.add_argument("--every", type=int, default=100, help="print every n steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the final numbers here")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides of the train config (e.g. head code weights)")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    cfg, detector, train, val = build(a.root, a.store, list(a.overrides), a.grid)
    camera_bev = detector.camera_bev
    channels = camera_bev.bev_encoder.in_channels // camera_bev.frames
    painter = Painter(train, channels, motion=not a.no_motion, sigma=a.blur, seed=a.seed)
    val_painter = Painter(val, channels, motion=not a.no_motion, sigma=a.blur, seed=a.seed)
    val_painter.body, val_painter.front = painter.body, painter.front  # one colour code for both splits
    head, encoder = detector.head, camera_bev.bev_encoder
    params = list(head.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-3)
    has_prev = [i for i, f in enumerate(train.frames) if f.token in train._prev]
    val_idx = [i for i, f in enumerate(val.frames) if f.token in val._prev]
    print(
        f"motion oracle: {'no motion (control)' if a.no_motion else 'two frames'}, blur sigma {a.blur} cells, "
        f"{len(has_prev)} training keyframes with a previous one, {len(val_idx)} validation ones, lr {a.lr}",
        flush=True,
    )
    t0, log = time.time(), []
    for step in range(1, a.steps + 1):
        idx = torch.randint(len(has_prev), (a.batch,), generator=g).tolist()
        maps, boxes, labels, dt = painter.batch([has_prev[i] for i in idx], train=True, generator=g)
        preds = head(encoder(maps))
        targets = head.targets(boxes, labels, detector.grid, dt=dt)
        loss = head.loss(preds, targets)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        with torch.no_grad():
            pv, tv = velocity_at_centres(head, preds, targets)
            log.append(
                (
                    float((pv - tv).abs().mean()) if len(tv) else float("nan"),
                    float(tv.abs().mean()) if len(tv) else float("nan"),
                )
            )
        if step % a.every == 0 or step == a.steps:
            w = np.array(log[-a.every :])
            print(
                f"step {step:5d}  loss {loss['loss'].item():6.3f}  car velocity L1 (v dt, m) {np.nanmean(w[:, 0]):.3f} "
                f"against zero's {np.nanmean(w[:, 1]):.3f}  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    result = evaluate(detector, val_painter, val_idx, a.batch)
    result.update(steps=a.steps, motion=not a.no_motion, blur=a.blur, lr=a.lr, seed=a.seed, seconds=time.time() - t0)
    print(json.dumps(result, indent=1), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
