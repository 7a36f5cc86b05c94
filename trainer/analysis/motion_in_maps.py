"""Do a two-frame camera model's lift-splat maps show motion? Block matching of each vehicle across the two maps.

    python -m trainer.analysis.motion_in_maps outputs/bench_train/bevdepth4d-1400-s1/bevdepth4d/checkpoints/last.ckpt
    python -m trainer.analysis.motion_in_maps <ckpt> --keyframes 24 --radius 8 --json results/raw/motion_in_maps.json

The counterpart of :mod:`trainer.analysis.motion_oracle` on the camera's own maps. For training keyframes of the
checkpoint's data (no augmentation) the current lift-splat map and the previous keyframe's, warped into the current
ego frame as :meth:`CameraBEV.previous_map <trainer.models.components.camera_bev.CameraBEV.previous_map>` warps it,
are computed with the checkpoint's weights (through its ``pre_encoder`` where it has one: the maps the fusion reads); for every GT vehicle (length >= 3.5 m) whose centre lies ``radius + half``
cells inside the grid, the ``(2 half + 1)^2``-cell patch of the current map around its centre is compared (cosine)
with the warped previous map at every offset within ``radius`` cells: where it matches best is where the map says the
vehicle was. In a map anchored to the world, a static vehicle's best offset is 0 and a moving one's is ``-v dt``. In
a map whose local pattern follows the cameras (rings of depth bins, frustum edges), static vehicles match at the
ego's own displacement instead, and the two maps show no object motion to learn.

Printed (and ``--json``): for static and for moving vehicles, the share whose best offset is within 1.5 cells of
where the vehicle was (``-v dt``; 0 for static ones), the share within 1.5 cells of the ego's displacement (the
camera-anchored answer), and the most common offsets. :func:`best_offsets` is the matching, tested on painted maps.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

#: vehicles only: a 0.4 m cone covers at most one 0.8 m cell
MIN_LENGTH = 3.5
#: speeds above this (m/s) count as moving
MOVING = 1.0


def best_offsets(cur: torch.Tensor, prev: torch.Tensor, cells: torch.Tensor, radius: int, half: int) -> torch.Tensor:
    """For each cell ``(ix, iy)`` of ``cells (M, 2)``, the offset ``(dx, dy)`` in cells (``|d| <= radius``) at which the
    ``(C, 2 half + 1, 2 half + 1)`` patch of ``prev (C, H, W)`` around ``cell + d`` is most like (cosine) the patch of
    ``cur (C, H, W)`` around ``cell``; ``(M, 2)`` long. Cells must lie ``radius + half`` inside the map."""
    C, H, W = cur.shape
    k = 2 * half + 1
    out = torch.zeros(len(cells), 2, dtype=torch.long)
    shifts = torch.arange(-radius, radius + 1)
    for m, (ix, iy) in enumerate(cells.tolist()):
        assert radius + half <= ix < W - radius - half and radius + half <= iy < H - radius - half, (ix, iy)
        q = cur[:, iy - half : iy + half + 1, ix - half : ix + half + 1].reshape(-1)
        win = prev[:, iy - radius - half : iy + radius + half + 1, ix - radius - half : ix + radius + half + 1]
        patches = win.unfold(1, k, 1).unfold(2, k, 1)  # (C, 2r+1, 2r+1, k, k): the patch at each offset
        patches = patches.permute(1, 2, 0, 3, 4).reshape(len(shifts), len(shifts), -1)
        score = torch.nn.functional.cosine_similarity(patches, q.expand_as(patches), dim=-1)  # (dy, dx)
        j = int(score.argmax())
        out[m] = torch.stack([shifts[j % len(shifts)], shifts[j // len(shifts)]])
    return out


def summarise(found: np.ndarray, was: np.ndarray, ego: np.ndarray) -> dict:
    """Shares of best offsets ``found (M, 2)`` within 1.5 cells of ``was`` (where the vehicle was) and of ``ego`` (the
    ego's displacement), and the most common offsets."""
    if not len(found):
        return {"n": 0}
    return {
        "n": int(len(found)),
        "at_where_it_was": float(np.mean(np.hypot(*(found - was).T) <= 1.5)),
        "at_the_ego_displacement": float(np.mean(np.hypot(*(found - ego).T) <= 1.5)),
        "most_common": [[list(k), v] for k, v in Counter(map(tuple, found.tolist())).most_common(4)],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path, help="a two-frame checkpoint (experiment=bevdepth4d, dvd4d, ...)")
    p.add_argument("--keyframes", type=int, default=24, help="training keyframes, spread over the split")
    p.add_argument("--radius", type=int, default=8, help="search radius, cells")
    p.add_argument("--half", type=int, default=2, help="half the patch side, cells")
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian blur of both maps first, sigma in cells")
    p.add_argument(
        "--channels", choices=["all", "energy"], default="all", help="match all channels, or their norm per cell"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from bevlabels.grid import resample_bev
    from trainer.analysis.motion_oracle import blur
    from trainer.eval.predict import build_datamodule
    from trainer.lit_base import load_checkpoint

    loaded = load_checkpoint(a.ckpt)
    cb = loaded.model.detector.camera_bev
    if getattr(cb, "frames", 1) != 2:
        raise SystemExit(f"motion_in_maps: {a.ckpt} is a single-frame model (camera_bev.frames != 2)")
    grid = cb.grid
    dm = build_datamodule(loaded.config, num_workers=0, batch_size=1)
    dm.prepare_data()
    dm.setup("fit")
    frames = dm.frames("train")
    ds = dm.make_dataset(frames, train=False)
    idx = [i for i, f in enumerate(frames) if f.token in ds._prev]
    idx = idx[:: max(1, len(idx) // a.keyframes)][: a.keyframes]
    rows = {"static": [], "moving": []}
    H, W = grid.shape
    m = a.radius + a.half
    for i in idx:
        s = ds[i]
        with torch.no_grad():
            # the maps the fusion reads: through the pre-encoder where the model has one
            cur = cb._pre(cb._splat(s["images"][None].float(), s["K"][None], s["ego_from_cam"][None])[2])
            raw = cb._pre(cb._splat(s["prev_images"][None].float(), s["prev_K"][None], s["prev_ego_from_cam"][None])[2])
            prev = resample_bev(raw, grid, dst_from_src=s["cur_from_prev"][None], mode="bilinear")
            cur, prev = blur(cur, a.blur), blur(prev, a.blur)
            if a.channels == "energy":  # where there is something, whatever it is
                cur, prev = cur.norm(dim=1, keepdim=True), prev.norm(dim=1, keepdim=True)
        T, dt = s["cur_from_prev"], float(s["dt"])
        for b in s["gt_boxes"]:
            if b[3] < MIN_LENGTH or not torch.isfinite(b[7:9]).all():
                continue
            c = grid.metric_to_cell(b[None, :2])[0]
            cell = torch.floor(c).long()
            if not (m <= cell[0] < W - m and m <= cell[1] < H - m):
                continue
            found = best_offsets(cur[0], prev[0], cell[None], a.radius, a.half)[0].numpy()
            was = (grid.metric_to_cell((b[:2] - b[7:9] * dt)[None])[0] - c).numpy()
            # where a camera-anchored pattern would match: what sat at these ego coordinates in the previous map is
            # carried by the warp to T @ centre
            moved = T.double() @ torch.tensor([float(b[0]), float(b[1]), 0.0, 1.0], dtype=torch.float64)
            ego = (grid.metric_to_cell(moved[None, :2].float())[0] - c).numpy()
            key = "moving" if float(b[7:9].norm()) > MOVING else "static"
            rows[key].append((found, was, ego))
    result = {
        "ckpt": str(a.ckpt),
        "keyframes": len(idx),
        "radius": a.radius,
        "half": a.half,
        "blur": a.blur,
        "channels": a.channels,
    }
    for key, r in rows.items():
        result[key] = summarise(*(np.array([x[j] for x in r]).reshape(-1, 2) for j in range(3)))
    print(json.dumps(result, indent=1), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
