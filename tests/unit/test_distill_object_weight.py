"""Object-weighted distillation (``model.loss.distill_object_weight``) against a per-cell Python loop, and the
default (null) equal to the paper's uniform mean exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.models.losses import (
    camera_bev_losses,
    distill_cell_loss,
    distill_cosine_loss,
    object_weighted_distill_loss,
    region_mixed_mean,
)


def _maps(seed: int = 0, B: int = 2, C: int = 5, H: int = 6, W: int = 7):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    count = torch.randint(0, 3, (B, H, W), generator=g)  # about a third of the cells empty
    objects = torch.rand(B, H, W, generator=g) < 0.2
    return pred, target, count, objects


def reference(pred, target, count, objects, w):
    """The definition, cell by cell: mean of 1 - cos over occupied object cells, over the other occupied cells,
    mixed w : 1 - w (a region without cells gives its weight to the other)."""
    obj, other = [], []
    B, _, H, W = pred.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                if count[b, i, j] <= 0:
                    continue
                p, t = pred[b, :, i, j], target[b, :, i, j]
                cos = (p * t).sum() / (p.norm().clamp(min=1e-6) * t.norm().clamp(min=1e-6))
                (obj if objects[b, i, j] else other).append(1 - cos)
    if not obj:
        return sum(other) / len(other)
    if not other:
        return sum(obj) / len(obj)
    return w * sum(obj) / len(obj) + (1 - w) * sum(other) / len(other)


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_object_weighted_loss_equals_a_per_cell_loop(w):
    pred, target, count, objects = _maps()
    assert (objects & (count > 0)).any() and (~objects & (count > 0)).any()
    got = object_weighted_distill_loss(pred, target, count, objects, w)  # float32, as the uniform loss
    ref = reference(pred, target, count, objects, w)  # float64
    torch.testing.assert_close(got, ref.float())
    (g_got,) = torch.autograd.grad(got, pred)
    (g_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)


def test_the_projected_cells_path_equals_the_whole_map_definition():
    """Training's path (project the occupied cells only) gives the same loss and gradients as the definition."""
    pred_in, target, count, objects = _maps(1)
    bev = pred_in.detach().clone().requires_grad_()
    proj = nn.Conv2d(5, 5, 1).double()
    got = distill_cell_loss(bev, proj, target, count, objects, 0.7)
    ref = object_weighted_distill_loss(proj(bev), target, count, objects, 0.7)
    torch.testing.assert_close(got, ref)
    g_got = torch.autograd.grad(got, [bev, proj.weight], retain_graph=True)
    g_ref = torch.autograd.grad(ref, [bev, proj.weight])
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r)


def test_null_weight_is_the_uniform_mean_exactly():
    pred, target, count, objects = _maps(2)
    bev = pred.detach().clone().requires_grad_()
    proj = nn.Conv2d(5, 5, 1).double()
    uniform = distill_cell_loss(bev, proj, target, count)
    assert torch.equal(distill_cell_loss(bev, proj, target, count, objects, None), uniform)
    assert torch.equal(distill_cell_loss(bev, proj, target, count, None, None), uniform)
    parts, _ = camera_bev_losses(
        {"bev": bev}, None, proj, None, target, count, depth_weight=0.0, distill_weight=7.0, distill_objects=objects
    )
    assert torch.equal(parts["distill"], uniform)
    torch.testing.assert_close(uniform, distill_cosine_loss(proj(bev), target, count))
    # the mix with w = n_obj / n (each cell's own share) is the uniform mean too
    occ = count > 0
    share = float((objects & occ).sum() / occ.sum())
    torch.testing.assert_close(distill_cell_loss(bev, proj, target, count, objects, share), uniform)


def test_empty_regions():
    loss = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64, requires_grad=True)
    none = torch.zeros(3, dtype=torch.bool)
    # no object cell: the other cells' mean, whatever the weight
    torch.testing.assert_close(region_mixed_mean(loss, none, 0.8), loss.mean())
    torch.testing.assert_close(region_mixed_mean(loss, ~none, 0.2), loss.mean())
    # objects only weighted and none there: an exact zero, still in the graph
    zero = region_mixed_mean(loss, none, 1.0)
    assert zero.item() == 0.0 and zero.requires_grad
    assert region_mixed_mean(loss[:0], none[:0], 0.5).item() == 0.0
    assert math.isclose(region_mixed_mean(loss, torch.tensor([True, False, False]), 0.5).item(), 0.5 * 0.2 + 0.5 * 0.65)
    with pytest.raises(ValueError, match="distill_object_weight"):
        region_mixed_mean(loss, none, 1.5)


def test_the_config_key_reaches_the_loss(compose_train, tmp_path):
    from conftest import TINY_CAMERA_MODEL
    from hydra.utils import instantiate

    base = ["experiment=bevdepth_dino", "grid=near", f"run_dir={tmp_path}", "model.detector.distill_channels=8"]
    module = instantiate(compose_train(base + TINY_CAMERA_MODEL).model)
    assert module.loss_weights["distill_object_weight"] is None  # the default: the paper's uniform mean
    module = instantiate(compose_train([*base, *TINY_CAMERA_MODEL, "model.loss.distill_object_weight=0.5"]).model)
    assert module.loss_weights["distill_object_weight"] == 0.5
    H, W = module.detector.grid.shape
    box = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])
    objects = module._distill_objects({"dino_count": torch.ones(1, H, W), "gt_boxes": [box]})
    assert objects.shape == (1, H, W) and 4 <= int(objects.sum()) <= 24  # a 4 x 2 m car on 1 m cells, with margin
    with pytest.raises(Exception, match="distill_object_weight must lie in"):  # Hydra wraps the ValueError
        instantiate(compose_train([*base, *TINY_CAMERA_MODEL, "model.loss.distill_object_weight=2.0"]).model)


# -- distinct cells: the object cells of the object-weighted distillation without boxes ---------------------------


def distinct_reference(target, count, max_cos):
    """Cell by cell: the keyframe's mean unit target over its occupied cells, normalised; a cell is distinct where
    it is occupied and its target's cosine to that mean is below ``max_cos``."""
    B, C, H, W = target.shape
    out = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        units = [
            target[b, :, i, j] / target[b, :, i, j].norm() for i in range(H) for j in range(W) if count[b, i, j] > 0
        ]
        m = sum(units) / len(units)
        m = m / m.norm()
        for i in range(H):
            for j in range(W):
                if count[b, i, j] > 0:
                    t = target[b, :, i, j]
                    out[b, i, j] = float((t @ m) / t.norm()) < max_cos
    return out


@pytest.mark.parametrize("max_cos", [0.0, 0.5, 0.9])
def test_distinct_cells_equal_a_per_cell_loop(max_cos):
    from trainer.models.losses import distinct_cells

    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 6, 5, 7
    road = torch.randn(C, generator=g)
    # most cells near one "road" direction, some random ("objects"): both sides of every threshold occur
    target = road[None, :, None, None] + 0.3 * torch.randn(B, C, H, W, generator=g, dtype=torch.float32)
    target[:, :, :2, :3] = torch.randn(B, C, 2, 3, generator=g)
    count = torch.randint(0, 3, (B, H, W), generator=g)
    # empty cells hold a far-off direction: the keyframe's mean must not read them
    target = torch.where((count == 0)[:, None], 5.0 * torch.randn(C, generator=g)[None, :, None, None], target)
    got = distinct_cells(target, count, max_cos)
    ref = distinct_reference(target.double(), count, max_cos)
    assert torch.equal(got, ref)
    assert not got[count == 0].any()


def test_distinct_cells_find_objects_on_a_road():
    from trainer.models.losses import distinct_cells

    C, H, W = 4, 6, 6
    target = torch.zeros(1, C, H, W)
    target[0, 0] = 1.0  # road everywhere
    target[0, :, 2, 3] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a car
    target[0, :, 4, 1] = torch.tensor([0.6, 0.0, 0.8, 0.0])  # a car cell mixed with road
    count = torch.ones(1, H, W)
    count[0, 0, 0] = 0
    got = distinct_cells(target, count, 0.7)
    assert got.sum() == 2 and got[0, 2, 3] and got[0, 4, 1]


def test_distinct_key_reaches_the_objects(compose_train, tmp_path):
    from conftest import TINY_CAMERA_MODEL
    from hydra.utils import instantiate

    base = ["experiment=bevdepth_dino", "grid=near", f"run_dir={tmp_path}", "model.detector.distill_channels=8"]
    over = ["model.loss.distill_object_weight=0.5", "model.loss.distill_distinct_cos=0.7"]
    module = instantiate(compose_train(base + TINY_CAMERA_MODEL + over).model)
    H, W = module.detector.grid.shape
    feat = torch.zeros(1, 8, H, W)
    feat[0, 0] = 1.0
    feat[0, :, 3, 4] = torch.eye(8)[1]
    batch = {"dino_count": torch.ones(1, H, W), "dino_feat": feat, "gt_boxes": [torch.zeros(0, 9)]}
    objects = module._distill_objects(batch)  # no boxes at all: the distinct cell is found from the target
    assert objects.shape == (1, H, W) and int(objects.sum()) == 1 and objects[0, 3, 4]
    with pytest.raises(Exception, match="set model.loss.distill_object_weight too"):
        instantiate(compose_train(base + TINY_CAMERA_MODEL + over[1:]).model)
    with pytest.raises(Exception, match="distill_distinct_cos must lie in"):
        instantiate(compose_train(base + TINY_CAMERA_MODEL + [over[0], "model.loss.distill_distinct_cos=1.5"]).model)
