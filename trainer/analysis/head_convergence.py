"""How fast does the sparse head learn to localise, given a *perfect* BEV map? A head-only, controlled test.

    python scripts/head_convergence.py                       # 300 steps, 300 anchors, 4 BEV-only layers
    python scripts/head_convergence.py --steps 600 --anchors 900 --lr 3e-4 --dn-groups 5

No camera network and no dataset: every step draws ``--boxes`` car-sized boxes (4.5 x 2.0 x 1.6 m, random
centre within +-45 m, random yaw) per sample and paints them on a BEV map of the default grid
(``conf/grid/default.yaml``, 128 x 128 cells of 0.8 m): the cells whose centres lie in a box footprint get one
fixed random C-vector, the cells of its front half a second one (so yaw is readable too). The head
(:class:`~trainer.models.components.sparse.head.SparseHead` with ``bev_agg`` only, ``--layers`` decoder layers,
``--anchors`` uniform stand-in anchors, ``--dn-groups`` denoising groups) is trained on that map with the
detector's own loss (:func:`~trainer.models.losses.sparse_detection_loss`), AdamW at a constant ``--lr``.

Printed every ``--every`` steps, on the current batch's first sample: the loss, the last layer's matched box
L1 and denoising box L1 (the loss terms), and the median distance from each GT centre to the nearest
predicted centre after the first and after the last layer. The map carries everything the head needs, so
what this shows is the head's own learning speed: a camera detector cannot localise faster than this.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bevlabels.conf import load_grid
from bevlabels.grid import GridSpec
from trainer.models.components.sparse.aggregation import BEVDeformableAggregation
from trainer.models.components.sparse.anchors import X, Y
from trainer.models.components.sparse.decoder import default_operation_order
from trainer.models.components.sparse.head import SparseHead
from trainer.models.losses import sparse_detection_loss

CAR = (4.5, 2.0, 1.6)


def paint(grid: GridSpec, boxes: torch.Tensor, body: torch.Tensor, front: torch.Tensor) -> torch.Tensor:
    """A BEV map ``(C, H, W)``: ``body`` on the cells inside each box's footprint, plus ``front`` on its front half."""
    H, W = grid.shape
    iy, ix = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    xy = grid.cell_to_metric(torch.stack([ix, iy], -1).float())  # (H, W, 2) cell centres
    bev = torch.zeros(body.shape[0], H, W)
    for b in boxes:
        dx, dy = xy[..., 0] - b[0], xy[..., 1] - b[1]
        c, s = math.cos(b[6]), math.sin(b[6])
        lx, ly = c * dx + s * dy, -s * dx + c * dy  # box frame
        inside = (lx.abs() <= b[3] / 2) & (ly.abs() <= b[4] / 2)
        bev[:, inside] += body[:, None]
        bev[:, inside & (lx > 0)] += front[:, None]
    return bev


def draw(grid: GridSpec, batch: int, count: int, body, front, g: torch.Generator):
    boxes, labels, maps = [], [], []
    for _ in range(batch):
        bx = torch.zeros(count, 9)
        bx[:, :2] = (torch.rand(count, 2, generator=g) * 2 - 1) * 45.0
        bx[:, 3:6] = torch.tensor(CAR)
        bx[:, 6] = torch.rand(count, generator=g) * 2 * math.pi
        boxes.append(bx)
        labels.append(torch.zeros(count, dtype=torch.long))
        maps.append(paint(grid, bx, body, front))
    return torch.stack(maps), boxes, labels


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--anchors", type=int, default=300, help="queries (uniform stand-in anchors)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers (BEV aggregation only)")
    p.add_argument("--dn-groups", type=int, default=2, help="denoising groups")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, constant")
    p.add_argument("--channels", type=int, default=64, help="C of the map and the head")
    p.add_argument("--boxes", type=int, default=40, help="boxes per sample")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--every", type=int, default=50, help="print every n steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    grid = load_grid("default")
    C, L = a.channels, a.layers
    head = SparseHead(
        a.anchors,
        C,
        1,
        default_operation_order(L, ("bev",)),
        bev_agg=BEVDeformableAggregation(C, grid),
        num_dn_groups=a.dn_groups,
    )
    body, front = torch.randn(C, generator=g), torch.randn(C, generator=g)
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=1e-3)
    print(
        f"head: {a.anchors} anchors, {L} BEV-only layers, {a.dn_groups} dn groups, C={C}, lr {a.lr}, grid {grid.name}"
    )
    t0 = time.time()
    for step in range(a.steps + 1):
        bev, boxes, labels = draw(grid, a.batch, a.boxes, body, front, g)
        out = head(bev=bev, gt_boxes=boxes, gt_labels=labels)
        loss = sparse_detection_loss(out["layers"], boxes, labels, dn=out["dn"])
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        if step % a.every == 0:
            with torch.no_grad():
                gt = boxes[0][:, :2]
                first = torch.cdist(gt, out["layers"][0]["anchor"][0][:, [X, Y]]).min(1).values.median()
                last = torch.cdist(gt, out["layers"][-1]["anchor"][0][:, [X, Y]]).min(1).values.median()
            print(
                f"step {step:5d}  loss {loss['loss'].item():6.2f}  box_{L - 1} {loss[f'box_{L - 1}'].item():.3f}  "
                f"dn_box_{L - 1} {loss[f'dn_box_{L - 1}'].item():.3f}  GT to nearest centre: layer 0 "
                f"{first:.2f} m, layer {L - 1} {last:.2f} m  ({time.time() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
