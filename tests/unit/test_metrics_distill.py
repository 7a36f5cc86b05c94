"""The distillation fit by region (trainer/metrics_distill.py) against brute-force loops and the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bevlabels.grid import GridSpec
from trainer.metrics_distill import DistillFit, cosine_by_region, object_cells
from trainer.models.losses import distill_cell_loss

GRID = GridSpec((-4.0, 4.0, 1.0), (-3.0, 3.0, 1.0), name="tiny")  # H=6 rows (y), W=8 columns (x)


def brute_object_cells(grid: GridSpec, boxes: np.ndarray, margin: float) -> np.ndarray:
    """Per cell and box: rotate the centre's offset into the box frame and compare with the half sizes."""
    H = round((grid.ybound[1] - grid.ybound[0]) / grid.ybound[2])
    W = round((grid.xbound[1] - grid.xbound[0]) / grid.xbound[2])
    out = np.zeros((H, W), bool)
    for iy in range(H):
        for ix in range(W):
            x = grid.xbound[0] + (ix + 0.5) * grid.xbound[2]
            y = grid.ybound[0] + (iy + 0.5) * grid.ybound[2]
            for b in boxes:
                dx, dy = x - b[0], y - b[1]
                along = dx * math.cos(b[6]) + dy * math.sin(b[6])
                across = -dx * math.sin(b[6]) + dy * math.cos(b[6])
                if abs(along) <= b[3] / 2 + margin and abs(across) <= b[4] / 2 + margin:
                    out[iy, ix] = True
    return out


def test_object_cells_equal_a_per_cell_loop_and_ignore_height():
    boxes = np.array(
        [
            [1.2, 0.3, 7.0, 3.0, 1.0, 1.5, 0.4, 0.0, 0.0],  # high above the ground: height must not matter
            [-2.9, -1.1, -1.0, 0.6, 0.6, 1.8, 1.1, 0.0, 0.0],  # narrower than a cell, off its cell centre
        ]
    )
    for margin in (0.0, 0.5):
        got = object_cells(GRID, torch.as_tensor(boxes), margin=margin).numpy()
        assert got.shape == (6, 8)
        np.testing.assert_array_equal(got, brute_object_cells(GRID, boxes, margin))
    # the default margin (half a cell) gives the narrow box the cell its centre falls in
    ix, iy, _ = GRID.cell_index(np.array([[-2.9, -1.1]]))
    assert not object_cells(GRID, torch.as_tensor(boxes[1:]), margin=0.0)[iy[0], ix[0]]
    assert object_cells(GRID, torch.as_tensor(boxes[1:]))[iy[0], ix[0]]
    assert not object_cells(GRID, torch.zeros(0, 9)).any()


def test_cosine_by_region_equals_a_cell_loop_and_recombines_to_the_loss():
    g = torch.Generator().manual_seed(0)
    B, C, Ct, H, W = 2, 5, 3, 6, 8
    bev = torch.randn(B, C, H, W, generator=g)
    target = torch.randn(B, Ct, H, W, generator=g)
    count = (torch.rand(B, H, W, generator=g) > 0.4).int() * 3
    objects = torch.rand(B, H, W, generator=g) > 0.7
    proj = nn.Conv2d(C, Ct, 1)
    got = cosine_by_region(bev, proj, target, count, objects)

    sums = {"object": [0.0, 0], "background": [0.0, 0]}
    full = proj(bev).detach()
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if count[b, y, x] > 0:
                    p, t = full[b, :, y, x], target[b, :, y, x]
                    cos = float(p @ t / (p.norm() * t.norm()))
                    region = "object" if objects[b, y, x] else "background"
                    sums[region][0] += cos
                    sums[region][1] += 1
    for region in ("object", "background"):
        assert got[f"{region}_cells"] == sums[region][1] > 0
        assert got[f"{region}_sum"] == pytest.approx(sums[region][0], abs=1e-5)

    for region, mask in (("object", objects), ("background", ~objects)):
        cells = target.permute(0, 2, 3, 1)[(count > 0) & mask].double()
        unit = torch.stack([c / c.norm() for c in cells]).sum(0)
        torch.testing.assert_close(got[f"{region}_unit_sum"], unit)

    n = got["object_cells"] + got["background_cells"]
    loss = float(distill_cell_loss(bev, proj, target, count))
    assert 1.0 - (got["object_sum"] + got["background_sum"]) / n == pytest.approx(loss, abs=1e-5)


def test_distill_fit_pools_batches_and_reports_nan_without_cells():
    fit = DistillFit(margin=0.0)
    empty = fit.compute()
    assert math.isnan(empty["cos_object"]) and empty["object_cells"] == 0
    proj = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(2)[..., None, None])
    bev = torch.zeros(1, 2, 6, 8)
    bev[:, 0] = 1.0  # every cell points along channel 0
    target = bev.clone()
    target[:, :, :, :4] = torch.tensor([0.0, 1.0])[:, None, None]  # the left half points along channel 1
    count = torch.ones(1, 6, 8)
    box = torch.tensor([[2.0, 0.0, 0.0, 4.0, 6.0, 1.0, 0.0, 0.0, 0.0]])  # covers x in [0, 4]: the right half
    fit.update(bev, proj, target, count, [box], GRID)
    fit.update(bev, proj, target, count, [torch.zeros(0, 9)], GRID)  # a keyframe without boxes: all background
    m = fit.compute()
    assert m["object_cells"] == 24 and m["background_cells"] == 24 + 48
    assert m["cos_object"] == pytest.approx(1.0)  # right half matches
    assert m["cos_background"] == pytest.approx((24 * 0.0 + 24 * 1.0) / 72)  # left half orthogonal, second frame half
    # the best constant direction: all object targets agree (1); background targets are 48 x [0, 1] and 24 x [1, 0]
    assert m["cos_object_constant"] == pytest.approx(1.0)
    assert m["cos_background_constant"] == pytest.approx(math.hypot(24, 48) / 72)


def test_the_constant_score_is_the_best_a_constant_predictor_gets():
    """cos_*_constant = max over directions c of mean_i cos(c, t_i), attained by the mean unit target."""
    g = torch.Generator().manual_seed(1)
    target = torch.randn(1, 4, 6, 8, generator=g) + torch.tensor([2.0, 0.0, 0.0, 0.0])[:, None, None]
    count = torch.ones(1, 6, 8)
    proj = nn.Conv2d(4, 4, 1)
    fit = DistillFit()
    fit.update(torch.randn(1, 4, 6, 8, generator=g), proj, target, count, [torch.zeros(0, 9)], GRID)
    best = fit.compute()["cos_background_constant"]
    t = target[0].flatten(1).T  # (48, 4)

    def score(c):
        return float(torch.nn.functional.cosine_similarity(c[None].expand_as(t), t, dim=1).mean())

    mean_unit = (t / t.norm(dim=1, keepdim=True)).mean(0)
    assert score(mean_unit) == pytest.approx(best, abs=1e-6)
    for c in torch.randn(200, 4, generator=g):
        assert score(c) <= best + 1e-9
