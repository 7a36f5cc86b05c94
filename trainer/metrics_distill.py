"""How well a camera model's distilled BEV map matches its target, on object cells and on the rest.

The distillation loss (:func:`~trainer.models.losses.distill_cell_loss`) is one mean over every
occupied cell (``count > 0``) of the store's grid. On a driving scene most of those cells are road,
buildings and vegetation, so a low loss says little about the few cells the detector needs: the
objects. :class:`DistillFit` splits the same cosine similarity in two:

- **object** cells: occupied cells whose centre lies inside a GT box's BEV footprint, the box
  enlarged by ``margin`` metres on every side (default half a cell, so a pedestrian narrower than a
  cell still owns the cell its centre falls in);
- **background** cells: every other occupied cell.

and reports the mean cosine similarity ``cos(proj(bev), target)`` of each (1 = a perfect match of
direction, 0 = unrelated), pooled over the evaluated keyframes (every cell weighs the same).

Beside each, the score of the best *constant* predictor of that region (``cos_object_constant``,
``cos_background_constant``): the one direction that, put in every cell of the region, has the
highest mean cosine to the targets. That direction is the mean of the unit target vectors, and its
score is that mean's length, ``|sum_i t_i / |t_i|| / n`` (Cauchy-Schwarz). A map that only knows
"object here" (or "road here") scores about this; a map above it carries which object is where. The
cosine is the one the loss uses (loss = 1 - mean cosine over all occupied cells), so
``1 - (n_obj * cos_object + n_bg * cos_background) / (n_obj + n_bg)`` equals the mean loss.

Shape letters: B batch, C / C_t channels of the BEV map / the target, H/W grid rows/columns, M boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bevlabels.geometry import points_box_index
from bevlabels.grid import GridSpec
from trainer.models.losses import distill_cell_cosine


def object_cells(grid: GridSpec, boxes: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """``(H, W)`` bool: the cell's centre lies in the BEV footprint of one of ``boxes (M, >=7)`` (any height).

    ``margin``: metres added on every side of each box (``None``: half the larger cell side).
    """
    if margin is None:
        margin = 0.5 * max(float(grid.xbound[2]), float(grid.ybound[2]))
    centres = grid.cell_centres()  # (H, W, 2)
    H, W = centres.shape[:2]
    if boxes.shape[0] == 0:
        return torch.zeros(H, W, dtype=torch.bool, device=boxes.device)
    flat = np.concatenate([centres.reshape(-1, 2), np.zeros((H * W, 1))], 1)
    footprint = boxes[:, :7].detach().double().cpu().numpy().copy()
    footprint[:, 2] = 0.0  # the test drops height: the box's centre at z = 0, its height unbounded
    footprint[:, 5] = np.inf
    inside = points_box_index(flat, footprint, margin=margin) >= 0  # numpy: sweep and prune, not H*W x M
    return torch.from_numpy(inside.reshape(H, W)).to(boxes.device)


@torch.no_grad()
def cosine_by_region(
    bev: torch.Tensor, proj: nn.Conv2d, target: torch.Tensor, count: torch.Tensor, objects: torch.Tensor
) -> dict[str, float]:
    """Sums of the cosine similarity of ``proj(bev)`` to ``target`` over occupied cells, split by ``objects``.

    ``bev (B, C, H, W)``, ``target (B, C_t, H, W)``, ``count (B, H, W)`` (occupied: > 0), ``objects (B, H, W)``
    bool. Returns ``{"object_sum", "object_cells", "background_sum", "background_cells"}`` and each region's
    sum of unit target vectors, ``object_unit_sum`` and ``background_unit_sum`` (``(C_t,)`` float64).
    """
    assert objects.shape == count.shape, (
        f"objects {tuple(objects.shape)} must be (B, H, W) as count {tuple(count.shape)}"
    )
    cos, occupied = distill_cell_cosine(bev, proj, target, count)  # the loss's own cosine, cell by cell
    tgt = target.permute(0, 2, 3, 1)[occupied].double()
    unit = tgt / tgt.norm(dim=1, keepdim=True).clamp(min=1e-6)
    is_obj = objects[occupied]
    return {
        "object_sum": float(cos[is_obj].double().sum()),
        "object_cells": int(is_obj.sum()),
        "object_unit_sum": unit[is_obj].sum(0).cpu(),
        "background_sum": float(cos[~is_obj].double().sum()),
        "background_cells": int((~is_obj).sum()),
        "background_unit_sum": unit[~is_obj].sum(0).cpu(),
    }


class DistillFit:
    """Running sums of :func:`cosine_by_region` over batches; :meth:`compute` gives the means.

    Keys of :meth:`compute`: ``cos_object``, ``cos_background``, ``cos_object_constant``,
    ``cos_background_constant`` (NaN where no such cell was seen), ``object_cells``, ``background_cells``.
    """

    def __init__(self, margin: float | None = None):
        self.margin = margin
        self.reset()

    def reset(self) -> None:
        self.sums = {"object_sum": 0.0, "object_cells": 0, "background_sum": 0.0, "background_cells": 0}
        self.sums.update(object_unit_sum=0.0, background_unit_sum=0.0)  # become (C_t,) tensors

    def update(
        self,
        bev: torch.Tensor,
        proj: nn.Conv2d,
        target: torch.Tensor,
        count: torch.Tensor,
        gt_boxes: Sequence[torch.Tensor],
        grid: GridSpec,
    ) -> None:
        """Add a batch: ``gt_boxes`` B ``(M_b, >=7)`` in the frame of ``bev``'s grid ``grid``."""
        assert len(gt_boxes) == bev.shape[0], f"{len(gt_boxes)} box sets for a batch of {bev.shape[0]}"
        objects = torch.stack([object_cells(grid, b, self.margin) for b in gt_boxes]).to(count.device)
        for k, v in cosine_by_region(bev, proj, target, count, objects).items():
            self.sums[k] += v

    def compute(self) -> dict[str, float]:
        out = {}
        for region in ("object", "background"):
            n = self.sums[f"{region}_cells"]
            out[f"cos_{region}"] = self.sums[f"{region}_sum"] / n if n else float("nan")
            unit = self.sums[f"{region}_unit_sum"]
            out[f"cos_{region}_constant"] = float(torch.as_tensor(unit).norm()) / n if n else float("nan")
        out["object_cells"] = self.sums["object_cells"]
        out["background_cells"] = self.sums["background_cells"]
        return out
