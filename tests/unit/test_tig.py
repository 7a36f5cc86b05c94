"""TiG-BEV's losses and targets (trainer.models.losses, trainer.models.components.tig) against brute-force loops.

The references below compute each loss object by object with explicit Python loops, sums and norms,
in float64; the vectorised functions must equal them, values and gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevlabels.grid import GridSpec, resample_bev
from trainer.data.common import augment_boxes, bev_aug_matrix
from trainer.models.components.lift_splat import DepthBins
from trainer.models.components.tig import (
    TiGLoss,
    box_bev_keypoints,
    inner_depth_cells,
    sample_bev_points,
)
from trainer.models.losses import inner_depth_loss, inter_channel_loss, inter_keypoint_loss

GRID = GridSpec((-16.0, 16.0, 1.0), (-12.0, 12.0, 0.5))  # nx 32, ny 48: unequal, catches x/y swaps


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Inner depth


def bf_inner_depth(pred, gt, group, ref_score=None, detach_reference=True):
    """Object by object: reference = first cell of least score, MSE of relative depths, mean over >= 2-cell objects."""
    terms = []
    for gid in sorted(set(group.tolist())):
        idx = [i for i in range(len(group)) if group[i].item() == gid]
        if len(idx) < 2:
            continue
        scores = [abs(gt[i].item() - pred[i].item()) if ref_score is None else ref_score[i].item() for i in idx]
        r = idx[scores.index(min(scores))]
        p_r = pred[r].detach() if detach_reference else pred[r]
        sq = [((pred[i] - p_r) - (gt[i] - gt[r])) ** 2 for i in idx]
        terms.append(sum(sq) / len(idx))
    return sum(terms) / len(terms)


def test_inner_depth_reference_is_the_cell_of_least_error():
    pred = torch.tensor([10.0, 12.0, 15.0], dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([11.0, 12.1, 13.0], dtype=torch.float64)
    group = torch.zeros(3, dtype=torch.long)
    loss = inner_depth_loss(pred, gt, group)
    # errors 1.0, 0.1, 2.0: the reference is cell 1; relative depths (-2, 0, 3) against (-1.1, 0, 0.9)
    assert loss.item() == pytest.approx((0.9**2 + 0 + 2.1**2) / 3, abs=1e-12)
    # neither the choice nor (by default, as the authors' code) the reference's value is differentiated:
    # the reference gets no gradient, the others 2 * residual / 3
    (g,) = torch.autograd.grad(loss, pred)
    np.testing.assert_allclose(g.numpy(), [2 * -0.9 / 3, 0.0, 2 * 2.1 / 3], atol=1e-12)
    # with detach_reference=False the same value, and d/dpred_1 = -sum of the others' residual terms
    moving = inner_depth_loss(pred, gt, group, detach_reference=False)
    assert moving.item() == pytest.approx(loss.item(), abs=1e-12)
    (g,) = torch.autograd.grad(moving, pred)
    np.testing.assert_allclose(g.numpy(), [2 * -0.9 / 3, -(2 * -0.9 + 2 * 2.1) / 3, 2 * 2.1 / 3], atol=1e-12)
    # an all-to-certain score picks another reference
    certain = inner_depth_loss(pred, gt, group, ref_score=torch.tensor([0.0, 5.0, 5.0]))
    assert certain.item() == pytest.approx(((2 - 1.1) ** 2 + (5 - 2) ** 2) / 3, abs=1e-12)


@pytest.mark.parametrize("detach_reference", [True, False])
@pytest.mark.parametrize("with_score", [False, True])
def test_inner_depth_loss_equals_brute_force(with_score, detach_reference):
    gen = torch.Generator().manual_seed(3)
    E = 60
    pred = leaf(torch.rand(E, generator=gen, dtype=torch.float64) * 30 + 2)
    gt = torch.rand(E, generator=gen, dtype=torch.float64) * 30 + 2
    group = torch.randint(0, 9, (E,), generator=gen) * 7 + 100  # arbitrary ids
    group[-1] = 5  # a one-cell object: no relative depth, left out
    score = torch.rand(E, generator=gen, dtype=torch.float64) if with_score else None
    got = inner_depth_loss(pred, gt, group, score, detach_reference)
    ref = bf_inner_depth(pred, gt, group, score, detach_reference)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(ref, pred)[0])


def test_inner_depth_loss_without_objects_is_zero_with_a_graph():
    pred = leaf(torch.tensor([3.0]))
    loss = inner_depth_loss(pred, torch.tensor([4.0]), torch.tensor([0]))
    assert loss.item() == 0.0 and loss.requires_grad
    empty = inner_depth_loss(pred[:0], pred[:0].detach(), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_inner_depth_cells_group_objects_per_camera_with_min_depth_per_cell():
    """Cells of one object in one camera form a group; a cell's LiDAR depth is its pixels' minimum; gt = -1 is dropped."""
    bins = DepthBins((2.0, 10.0, 1.0))  # 8 bins
    B, N, D, h, w, s = 2, 2, 8, 3, 4, 4
    gen = torch.Generator().manual_seed(0)
    logits = leaf(torch.randn(B, N, D, h, w, generator=gen, dtype=torch.float64))
    # rows cam, u, v, depth, obj, gt
    px0 = torch.tensor(
        [
            [0, 1.0, 1.0, 5.0, 7, 0],  # object 0 in cam 0, cell (0, 0)
            [0, 2.0, 3.0, 4.5, 7, 0],  # same cell, nearer: the cell's depth is 4.5
            [0, 5.0, 1.0, 6.0, 7, 0],  # cell (0, 1)
            [1, 5.0, 9.0, 7.0, 7, 0],  # object 0 in cam 1: another group
            [0, 9.0, 9.0, 8.0, 3, -1],  # a box the GT filter dropped
            [0, 9.0, 9.0, 30.0, 2, 1],  # beyond the bins
        ]
    )
    px1 = torch.tensor([[1, 13.0, 5.0, 3.0, 0, 2]])
    out = inner_depth_cells(logits, [px0, px1], bins, s)
    keys = sorted(
        zip(out["b"].tolist(), out["cam"].tolist(), out["obj"].tolist(), out["iy"].tolist(), out["ix"].tolist())
    )
    assert keys == [(0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 1, 0, 2, 1), (1, 1, 2, 1, 3)]
    for i in range(len(out["gt"])):
        b, n, iy, ix = (out[k][i].item() for k in ("b", "cam", "iy", "ix"))
        p = logits[b, n, :, iy, ix].softmax(0)
        assert out["pred"][i].item() == pytest.approx((p * bins.centres(dtype=torch.float64)).sum().item(), abs=1e-6)
        if (b, n, iy, ix) == (0, 0, 0, 0):
            assert out["gt"][i].item() == 4.5
    g = out["group"]
    cell = {
        k: g[i].item()
        for i, k in enumerate(zip(out["b"].tolist(), out["cam"].tolist(), out["iy"].tolist(), out["ix"].tolist()))
    }
    assert cell[(0, 0, 0, 0)] == cell[(0, 0, 0, 1)] and len(set(cell.values())) == 3


def test_center_references_pick_the_cell_nearest_the_centre():
    bins = DepthBins((2.0, 10.0, 1.0))
    logits = torch.zeros(1, 1, 8, 4, 8)
    # one object with cells at columns 0, 3, 6 of row 1 (stride 4: centres u = 2, 14, 26; v = 6)
    px = torch.tensor([[0, 1.0, 5.0, 5.0, 0, 0], [0, 13.0, 5.0, 6.0, 0, 0], [0, 25.0, 5.0, 7.0, 0, 0]])
    two = inner_depth_cells(logits, [px], bins, 4, reference="center2d")
    ref2 = two["ix"][two["ref_score"].argmin()].item()
    assert ref2 == 3  # the middle of the 2D extent [2, 26]
    # 3D centre: a camera looking along +z of ego (identity pose), K with f = 10, c = (0, 0); the box centre at (26, 6, 10)
    K = torch.tensor([[[[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]]]])
    img_from_ego = torch.eye(4).expand(1, 1, 4, 4).clone()
    img_from_ego[0, 0, :3, :3] = K[0, 0]
    box = torch.tensor([[26.0, 6.0, 10.0, 1, 1, 1, 0, 0, 0]])  # u = 10 * 26 / 10 = 26, v = 6
    three = inner_depth_cells(logits, [px], bins, 4, reference="center3d", img_from_ego=img_from_ego, gt_boxes=[box])
    assert three["ix"][three["ref_score"].argmin()].item() == 6
    with pytest.raises(ValueError, match="reference must be one of"):
        inner_depth_cells(logits, [px], bins, 4, reference="middle")


# ---------------------------------------------------------------------------------------------
# Inner feature


def bf_similarity_loss(fs, ft, kind: str):
    terms = []
    for m in range(fs.shape[0]):
        a, b = fs[m], ft[m].detach()  # (N, C)
        if kind == "channel":  # unit columns: cosine between channels over the keypoints
            a = a / a.norm(dim=0, keepdim=True).clamp(min=1e-6)
            b = b / b.norm(dim=0, keepdim=True).clamp(min=1e-6)
            sa, sb = a.T @ a, b.T @ b
        else:  # unit rows: cosine between keypoints over the channels
            a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-6)
            b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-6)
            sa, sb = a @ a.T, b @ b.T
        terms.append(((sa - sb) ** 2).sum() / sa.numel())
    return sum(terms) / len(terms)


@pytest.mark.parametrize("kind", ["channel", "keypoint"])
def test_inter_channel_and_keypoint_losses_equal_brute_force(kind):
    gen = torch.Generator().manual_seed(1)
    fs = leaf(torch.randn(5, 9, 6, generator=gen, dtype=torch.float64))
    ft = leaf(torch.randn(5, 9, 6, generator=gen, dtype=torch.float64) * 30)  # the teacher's scale differs
    fn = inter_channel_loss if kind == "channel" else inter_keypoint_loss
    got = fn(fs, ft)
    ref = bf_similarity_loss(fs, ft, kind)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (g_got,) = torch.autograd.grad(got, fs)
    (g_ref,) = torch.autograd.grad(ref, fs)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-10, atol=1e-12)
    assert fn(fs, ft).grad_fn is not None and ft.grad is None  # no gradient into the teacher
    # scale-free: scaling either side changes nothing
    torch.testing.assert_close(fn(fs * 7, ft * 0.01), got, rtol=1e-10, atol=1e-12)


def test_keypoints_lie_inside_their_enlarged_boxes():
    gen = torch.Generator().manual_seed(2)
    M = 40
    boxes = torch.zeros(M, 9, dtype=torch.float64)
    boxes[:, :2] = torch.rand(M, 2, generator=gen, dtype=torch.float64) * 40 - 20
    boxes[:, 3:6] = torch.rand(M, 3, generator=gen, dtype=torch.float64) * 5 + 0.3
    boxes[:, 6] = torch.rand(M, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    enlarge = 1.3
    kp = box_bev_keypoints(boxes, (3, 5), enlarge)  # (M, 15, 2)
    assert kp.shape == (M, 15, 2)
    d = kp - boxes[:, None, :2]
    c, s = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    along, across = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]  # in the box frame
    assert (along.abs() < boxes[:, 3:4] * enlarge / 2).all() and (across.abs() < boxes[:, 4:5] * enlarge / 2).all()
    # and they spread over it: the extreme keypoints reach beyond the un-enlarged box's inner two thirds
    assert (along.abs().amax(1) > boxes[:, 3] / 3).all()
    # the lattice is the same in every box frame: 3 distinct positions along, 5 across
    assert len(torch.unique((along[0] / boxes[0, 3]).round(decimals=6))) == 3
    assert len(torch.unique((across[0] / boxes[0, 4]).round(decimals=6))) == 5


def test_sampled_student_and_teacher_share_metric_points_under_rotation_and_flip():
    """The teacher map, warped into the augmented frame as the data module does, and the student's map read at the
    augmented boxes' keypoints give the features of the same ego points."""
    aug = bev_aug_matrix(rot=0.4, scale=1.0, flip_x=True)
    # the teacher's map in the keyframe's ego frame: channels x_ego, y_ego (a linear ramp, exact under bilinear)
    cx, cy = torch.meshgrid(
        torch.arange(GRID.nx, dtype=torch.float64) + 0.5,
        torch.arange(GRID.ny, dtype=torch.float64) + 0.5,
        indexing="xy",
    )
    x_ego = GRID.xbound[0] + cx * GRID.xbound[2]
    y_ego = GRID.ybound[0] + cy * GRID.ybound[2]
    teacher_ego = torch.stack([x_ego, y_ego]).float()  # (2, H, W)
    teacher_aug = resample_bev(teacher_ego, GRID, dst_from_src=aug, mode="bilinear")  # what CameraDataset does
    # the student's map built directly in the augmented frame: the ego coordinates of each augmented cell centre
    pts_aug = torch.stack([x_ego, y_ego, torch.zeros_like(x_ego), torch.ones_like(x_ego)], -1)  # aug-frame centres
    ego = pts_aug @ torch.linalg.inv(aug.double()).T
    student = torch.stack([ego[..., 0], ego[..., 1]]).float()
    boxes_ego = torch.tensor([[3.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0, 0], [-5.0, -3.0, 0.0, 2.0, 1.0, 1.5, -1.0, 0, 0]])
    boxes_aug = augment_boxes(boxes_ego, aug)
    kp = box_bev_keypoints(boxes_aug, (3, 3), 1.2)  # (2, 9, 2) augmented frame
    f_t = sample_bev_points(teacher_aug[None], [kp], GRID)  # (2, 9, 2)
    f_s = sample_bev_points(student[None], [kp], GRID)
    kp_ego = torch.cat([kp, torch.zeros_like(kp[..., :1]), torch.ones_like(kp[..., :1])], -1) @ torch.linalg.inv(aug).T
    torch.testing.assert_close(f_t, kp_ego[..., :2], rtol=0, atol=1e-4)
    torch.testing.assert_close(f_s, kp_ego[..., :2], rtol=0, atol=1e-4)
    # and the keypoints are those of the ego boxes, moved: the same object parts
    kp_from_ego = box_bev_keypoints(boxes_ego, (3, 3), 1.2)
    torch.testing.assert_close(
        torch.sort(kp_ego[..., :2].reshape(-1, 2), dim=0).values,
        torch.sort(kp_from_ego.reshape(-1, 2), dim=0).values,
        atol=1e-5,
        rtol=0,
    )


def test_bev_losses_are_zero_when_the_student_reads_the_teachers_features():
    bev = torch.randn(2, 6, GRID.ny, GRID.nx).abs()
    loss = TiGLoss(student_channels=6, teacher_channels=6, inter_channel_weight=1.0, inter_keypoint_weight=1.0)
    assert loss.adapter is None
    batch = {
        "teacher_bev": bev.clone(),
        "gt_boxes": [torch.tensor([[1.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.2, 0, 0]]), torch.zeros(0, 9)],
    }
    parts, total = loss({"bev": bev.requires_grad_(True)}, batch, DepthBins((1.0, 2.0, 1.0)), 16, GRID)
    assert parts["tig_ic"].item() == pytest.approx(0.0, abs=1e-10) and parts["tig_ik"].item() == pytest.approx(
        0.0, abs=1e-10
    )
    other = {**batch, "teacher_bev": torch.randn(2, 6, GRID.ny, GRID.nx)}
    parts, total = loss({"bev": bev}, other, DepthBins((1.0, 2.0, 1.0)), 16, GRID)
    assert parts["tig_ic"].item() > 1e-3 and parts["tig_ik"].item() > 1e-3 and total.requires_grad
    # other channel counts: a learned adapter, and a clear error for a wrong teacher_channels
    adapted = TiGLoss(student_channels=6, teacher_channels=4, inter_keypoint_weight=1.0)
    assert adapted.adapter is not None and adapted.adapter.out_features == 4
    with pytest.raises(ValueError, match="set it to 6"):
        adapted({"bev": bev}, batch, DepthBins((1.0, 2.0, 1.0)), 16, GRID)
    with pytest.raises(ValueError, match="teacher_channels"):
        TiGLoss(student_channels=6, inter_channel_weight=1.0)


def test_tig_loss_module_inner_depth_equals_the_pure_function():
    bins = DepthBins((2.0, 10.0, 1.0))
    gen = torch.Generator().manual_seed(4)
    logits = leaf(torch.randn(1, 2, 8, 3, 4, generator=gen))
    px = torch.tensor([[0, 1.0, 1.0, 5.0, 7, 0], [0, 5.0, 1.0, 6.0, 7, 0], [0, 9.0, 9.0, 3.0, 7, 0]])
    loss = TiGLoss(student_channels=4, inner_depth_weight=2.0)
    parts, total = loss({"depth_logits": logits}, {"fg_px": [px]}, bins, 4, GRID)
    cells = inner_depth_cells(logits, [px], bins, 4)
    ref = inner_depth_loss(cells["pred"], cells["gt"], cells["group"])
    torch.testing.assert_close(parts["tig_depth"], ref)
    torch.testing.assert_close(total, 2.0 * ref)
    assert ref.item() > 0
    # the module passes detach_reference on: the same value, the pure function's gradient of each mode
    grads = []
    for detach in (True, False):
        module = TiGLoss(student_channels=4, inner_depth_weight=1.0, detach_reference=detach)
        (got,) = torch.autograd.grad(module({"depth_logits": logits}, {"fg_px": [px]}, bins, 4, GRID)[1], logits)
        cells = inner_depth_cells(logits, [px], bins, 4)
        (want,) = torch.autograd.grad(
            inner_depth_loss(cells["pred"], cells["gt"], cells["group"], None, detach), logits
        )
        torch.testing.assert_close(got, want)
        grads.append(got)
    assert not torch.allclose(grads[0], grads[1])  # the two modes differ here, so the check above can fail
