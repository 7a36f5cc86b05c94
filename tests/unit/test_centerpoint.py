"""The pillar CenterPoint teacher: voxelisation, PFN/scatter, backbone strides, Gaussian targets, losses, NMS, decoding, overfitting."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch

from bevlabels import geometry as g
from bevlabels.datasets.nuscenes import NUSCENES_CLASSES
from bevlabels.grid import GridSpec
from trainer.models.centerpoint import CenterPoint
from trainer.models.components.bev_backbone import BEVBackbone
from trainer.models.components.center_head import (
    CENTERPOINT_TASKS,
    HEATMAP_PRIOR_BIAS,
    CenterHead,
    draw_gaussians,
    gaussian_focal_loss,
    gaussian_radius,
    masked_l1,
)
from trainer.models.components.nms import circle_nms
from trainer.models.components.pillar_encoder import PillarEncoder, scatter_to_bev
from trainer.models.components.voxelize import PillarVoxelizer

CLS = {name: i for i, name in enumerate(NUSCENES_CLASSES)}


def pt(x, y, z, intensity=0.0, dt=0.0):
    return [x, y, z, intensity, dt]


# ---------------------------------------------------------------------------------------------
# Voxelisation

# 4 x 4 pillars: x in [-2, 2) by 1 m (columns), y in [-1, 1) by 0.5 m (rows), z in [-1, 1).
HAND = {"xbound": [-2.0, 2.0, 1.0], "ybound": [-1.0, 1.0, 0.5], "zbound": [-1.0, 1.0, 2.0]}


def test_voxelize_hand_cases_coords_centres_and_dropped_points():
    vox = PillarVoxelizer(**HAND, max_points_per_pillar=4, max_pillars=10)
    cloud = torch.tensor(
        [
            pt(1.5, 0.75, 0.0, 1),  # column 3, row floor(1.75 / 0.5) = 3
            pt(-2.0, -1.0, 0.0, 2),  # the min bounds are inside: cell (0, 0)
            pt(2.0, 0.0, 0.0, 3),  # x == xmax: outside
            pt(0.0, 0.0, 1.0, 4),  # z == zmax: outside
            pt(0.0, 0.0, -1.5, 5),  # below zmin
            pt(float("nan"), 0.0, 0.0, 6),  # not finite
            pt(-1.5, 0.2, 0.5, 7),  # column 0, row floor(1.2 / 0.5) = 2
            pt(1.9, 0.9, -0.9, 8),  # the first pillar again
        ]
    )
    p = vox([cloud])
    assert p.grid_shape == (4, 4) and p.batch_size == 1
    # Pillars in order of their first point; coords are (b, iy, ix).
    assert p.coords.tolist() == [[0, 3, 3], [0, 0, 0], [0, 2, 0]]
    assert p.num_points.tolist() == [2, 1, 1]
    np.testing.assert_allclose(p.centres.numpy(), [[1.5, 0.75], [-1.5, -0.75], [-1.5, 0.25]])
    assert p.features[0, :, 3].tolist() == [1, 8, 0, 0]  # intensities, zero padding after num_points
    assert p.features[1, 0].tolist() == pt(-2.0, -1.0, 0.0, 2)
    assert p.features[2, 0, 3].item() == 7


def test_voxelize_max_points_keeps_the_first_points_in_input_order():
    vox = PillarVoxelizer(**HAND, max_points_per_pillar=3, max_pillars=10)
    # Five points in the pillar (iy=1, ix=1) interleaved with two in (iy=3, ix=0).
    rows = [pt(-0.5, -0.25, 0, i) for i in range(5)]
    rows.insert(1, pt(-1.5, 0.8, 0, 10))
    rows.insert(4, pt(-1.5, 0.8, 0, 11))
    p = vox([torch.tensor(rows)])
    assert p.coords.tolist() == [[0, 1, 1], [0, 3, 0]]
    assert p.num_points.tolist() == [3, 2]
    assert p.features[0, :, 3].tolist() == [0, 1, 2]  # points 3 and 4 dropped
    assert p.features[1, :, 3].tolist() == [10, 11, 0]


def test_voxelize_max_pillars_keeps_pillars_in_order_of_first_appearance_train_and_eval():
    a, b, c, d = pt(-1.5, -0.75, 0), pt(1.5, 0.75, 0), pt(0.5, 0.25, 0), pt(-0.5, 0.25, 0)
    cloud = torch.tensor([b, a, b, c, d, a])
    vox = PillarVoxelizer(**HAND, max_points_per_pillar=5, max_pillars=[2, 3])
    p = vox([cloud])
    assert p.coords[:, 1:].tolist() == [[3, 3], [0, 0]]  # b then a; c and d dropped
    assert p.num_points.tolist() == [2, 2]
    vox.eval()
    assert vox([cloud]).coords[:, 1:].tolist() == [[3, 3], [0, 0], [2, 2]]  # eval allows 3


def test_voxelize_list_equals_interleaved_batch_column_and_empty_samples():
    g0 = torch.tensor([pt(-1.5, -0.75, 0, 1), pt(1.5, 0.75, 0, 2), pt(-1.5, -0.75, 0, 3)])
    g1 = torch.tensor([pt(0.5, 0.25, 0, 4), pt(-1.5, -0.75, 0, 5)])
    vox = PillarVoxelizer(**HAND)
    from_list = vox([g0, torch.zeros(0, 5), g1])
    rows = [(0, g0[0]), (2, g1[0]), (0, g0[1]), (2, g1[1]), (0, g0[2])]  # per-sample order kept
    batched = torch.stack([torch.cat([torch.tensor([float(b)]), r]) for b, r in rows])
    from_tensor = vox(batched, batch_size=3)
    assert from_list.batch_size == from_tensor.batch_size == 3
    for a, b in zip(from_list[:4], from_tensor[:4]):
        assert torch.equal(a, b)
    assert from_list.coords.tolist() == [[0, 0, 0], [0, 3, 3], [2, 2, 2], [2, 0, 0]]
    empty = vox([torch.zeros(0, 5)])
    assert empty.features.shape == (0, 20, 5) and empty.coords.shape == (0, 3)


def test_voxelize_finer_pillars():
    vox = PillarVoxelizer(**HAND, pillar_size=[0.5, 0.25])
    p = vox([torch.tensor([pt(1.9, 0.9, 0.0)])])
    assert vox.grid.shape == (4, 4) and p.grid_shape == (8, 8)
    assert p.coords.tolist() == [[0, 7, 7]]
    np.testing.assert_allclose(p.centres.numpy(), [[1.75, 0.875]])


def brute_force_pillars(clouds, xbound, ybound, zbound, max_points, max_pillars):
    """Point by point, in input order: the pillars (coords, rows) hard voxelisation keeps."""
    nx = round((xbound[1] - xbound[0]) / xbound[2])
    ny = round((ybound[1] - ybound[0]) / ybound[2])
    coords, feats = [], []
    for b, cloud in enumerate(clouds):
        pillars: dict[tuple[int, int], list] = {}
        for row in cloud.tolist():
            x, y, z = row[:3]
            if not all(math.isfinite(v) for v in (x, y, z)):
                continue
            ix = math.floor((x - xbound[0]) / xbound[2])
            iy = math.floor((y - ybound[0]) / ybound[2])
            if not (0 <= ix < nx and 0 <= iy < ny and zbound[0] <= z < zbound[1]):
                continue
            if (iy, ix) not in pillars:
                if len(pillars) == max_pillars:
                    continue
                pillars[(iy, ix)] = []
            if len(pillars[(iy, ix)]) < max_points:
                pillars[(iy, ix)].append(row)
        for (iy, ix), rows in pillars.items():
            coords.append([b, iy, ix])
            feats.append(rows)
    return coords, feats


def test_voxelize_equals_brute_force_on_random_points():
    gen = torch.Generator().manual_seed(0)
    bounds = {"xbound": [-4.0, 4.0, 0.5], "ybound": [-3.0, 3.0, 0.5], "zbound": [-1.0, 1.0, 2.0]}  # 12 x 16
    clouds = []
    for n in (700, 500):
        xyz = (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([9.0, 7.0, 2.4])  # some outside
        clouds.append(torch.cat([xyz, torch.rand(n, 2, generator=gen)], 1))
    clouds[0][::97, 1] = float("nan")
    vox = PillarVoxelizer(**bounds, max_points_per_pillar=4, max_pillars=100)
    p = vox(clouds)
    coords, feats = brute_force_pillars(clouds, **bounds, max_points=4, max_pillars=100)
    assert (p.coords[:, 0] == 0).sum() == 100  # the first cloud hits the pillar limit
    assert p.num_points.max() == 4 and (p.num_points < 4).any()
    assert p.coords.tolist() == coords
    assert p.num_points.tolist() == [len(f) for f in feats]
    for v, rows in enumerate(feats):
        assert torch.equal(p.features[v, : len(rows)], torch.tensor(rows))
        assert not p.features[v, len(rows) :].any()


# ---------------------------------------------------------------------------------------------
# Pillar encoder and scatter


def test_scatter_places_pillar_features_on_the_grid_axes():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    coords = torch.tensor([[0, 2, 1], [1, 0, 3], [1, 1, 0]])  # (b, iy, ix)
    bev = scatter_to_bev(feats, coords, batch_size=2, grid_shape=(3, 4))
    assert bev.shape == (2, 2, 3, 4)
    assert (
        bev[0, :, 2, 1].tolist() == [1, 2] and bev[1, :, 0, 3].tolist() == [3, 4] and bev[1, :, 1, 0].tolist() == [5, 6]
    )
    assert bev.abs().sum() == 21  # nothing anywhere else


def test_pfn_augmentation_and_point_order_invariance():
    vox = PillarVoxelizer(**HAND, max_points_per_pillar=4)
    cloud = torch.tensor([pt(1.2, 0.6, 0.2, 0.5, 0.1), pt(1.8, 0.9, -0.4, 0.3, 0.0), pt(-1.5, -0.75, 0, 1, 0)])
    enc = PillarEncoder(5, [8, 16]).eval()
    x, mask = enc.augment(vox([cloud]))
    assert x.shape == (2, 4, 10) and mask.tolist() == [[True, True, False, False], [True, False, False, False]]
    # Offsets to the pillar mean (1.5, 0.75, -0.1) and to the pillar centre (1.5, 0.75).
    np.testing.assert_allclose(x[0, 0, 5:].numpy(), [-0.3, -0.15, 0.3, -0.3, -0.15], atol=1e-6)
    np.testing.assert_allclose(x[0, 1, 5:].numpy(), [0.3, 0.15, -0.3, 0.3, 0.15], atol=1e-6)
    assert not x[0, 2:].any()
    with torch.no_grad():
        bev = enc(vox([cloud]))
        bev_swapped = enc(vox([cloud[[1, 0, 2]]]))
    assert bev.shape == (1, 16, 4, 4)
    torch.testing.assert_close(bev, bev_swapped)  # a max over the pillar's points
    assert not bev[0, :, 1:3].any()  # no pillar in rows 1..2


# ---------------------------------------------------------------------------------------------
# Backbone and output stride


@pytest.mark.parametrize(
    ("strides", "ups", "out_stride"),
    [((1, 2, 2), (1, 2, 4), 1), ((2, 2, 2), (0.5, 1, 2), 4)],  # ours (pillar = grid cell), CenterPoint's 0.2 m pillars
)
def test_backbone_output_stride(strides, ups, out_stride):
    bb = BEVBackbone(8, [1, 1, 1], strides, [8, 16, 32], ups, [8, 8, 8])
    assert bb.out_stride == out_stride and bb.out_channels == 24
    out = bb(torch.randn(1, 8, 32, 32))
    assert out.shape == (1, 24, 32 // out_stride, 32 // out_stride)


def test_backbone_rejects_mismatched_strides():
    with pytest.raises(ValueError, match="same integer output stride"):
        BEVBackbone(8, [1, 1], [1, 2], [8, 8], [1, 1], [8, 8])


# ---------------------------------------------------------------------------------------------
# Gaussian targets


def test_gaussian_radius_hand_value():
    # A 10 x 10 cell box at min_overlap 0.1: the third case binds, r3 = s (sqrt(1.6) - 0.4) / 2.
    r = gaussian_radius(torch.tensor(10.0), torch.tensor(10.0), 0.1)
    assert r.item() == pytest.approx(10 * (math.sqrt(1.6) - 0.4) / 2, rel=1e-9)  # 4.3246
    assert gaussian_radius(torch.tensor(4.0), torch.tensor(2.0), 0.1).item() < 2  # small boxes use min_radius


def test_draw_gaussian_peak_symmetry_window_and_max_over_objects():
    heat = torch.zeros(2, 11, 11)
    draw_gaussians(heat, torch.tensor([0]), torch.tensor([5]), torch.tensor([5]), torch.tensor([2]))
    h = heat[0]
    assert h[5, 5] == 1 and h.max() == 1
    sigma = 5 / 6  # (2r + 1) / 6
    assert h[5, 7].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-6)
    assert h[3, 3].item() == pytest.approx(math.exp(-8 / (2 * sigma**2)), rel=1e-6)
    assert torch.equal(h, h.flip(0)) and torch.equal(h, h.flip(1)) and torch.equal(h, h.T)
    assert (h > 0).sum() == 25 and not heat[1].any()  # the (2r+1)^2 window, one channel only
    single = h.clone()
    draw_gaussians(heat, torch.tensor([0]), torch.tensor([7]), torch.tensor([5]), torch.tensor([2]))
    other = torch.zeros(1, 11, 11)
    draw_gaussians(other, torch.tensor([0]), torch.tensor([7]), torch.tensor([5]), torch.tensor([2]))
    assert torch.equal(heat[0], torch.maximum(single, other[0]))
    assert heat[0, 5, 5] == 1 and heat[0, 5, 7] == 1
    edge = torch.zeros(1, 4, 4)
    draw_gaussians(edge, torch.tensor([0]), torch.tensor([0]), torch.tensor([3]), torch.tensor([2]))  # clipped
    assert edge[0, 3, 0] == 1 and (edge > 0).sum() == 9


# ---------------------------------------------------------------------------------------------
# Losses


def test_focal_loss_hand_value():
    logits = torch.zeros(1, 1, 1, 3)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    # pos: log(.5) (1-.5)^2; neg: log(.5) .5^2 (1-t)^4 at t = .5 and 0: ln2 * 0.25 * (1 + 1/16 + 1)
    expected = math.log(2) * 0.25 * (1 + 1 / 16 + 1)
    assert gaussian_focal_loss(logits, target, 1).item() == pytest.approx(expected, rel=1e-6)
    assert gaussian_focal_loss(logits, target, torch.tensor(2)).item() == pytest.approx(expected / 2, rel=1e-6)
    assert gaussian_focal_loss(logits, target, 0).item() == pytest.approx(expected, rel=1e-6)  # floor of 1


def test_masked_l1_ignores_masked_entries_even_nan():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0], [float("nan"), 1.0], [1.0, 3.0]]])
    mask = torch.tensor([[True, False, True]])
    # channel 0: |1-0| + |0-1| = 2; channel 1: |2-0| + |0-3| = 5; over 2 objects
    pred.requires_grad_(True)
    loss = masked_l1(pred, target, mask)
    torch.testing.assert_close(loss, torch.tensor([1.0, 2.5]))
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and not pred.grad[0, 1].any()  # no NaN leaks into the gradient
    torch.testing.assert_close(masked_l1(pred, target, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# NMS


def test_circle_nms_suppresses_duplicates_keeps_distinct_and_is_greedy():
    xy = torch.tensor([[0.0, 0.0], [0.5, 0.0], [5.0, 0.0]])
    keep = circle_nms(xy, torch.tensor([0.9, 0.8, 0.7]), 1.0)
    assert keep.tolist() == [0, 2]
    # A chain 0.8 m apart: 0 suppresses 1; 2 is 1.6 m from 0, and 1 (suppressed) suppresses nothing.
    chain = torch.tensor([[1.6, 0.0], [0.0, 0.0], [0.8, 0.0]])
    assert circle_nms(chain, torch.tensor([0.7, 0.9, 0.8]), 1.0).tolist() == [1, 0]
    # The suppressor's own radius counts: a small object does not suppress a big neighbour.
    keep = circle_nms(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0.9, 0.8]), torch.tensor([0.5, 2.0]))
    assert keep.tolist() == [0, 1]
    assert circle_nms(xy, torch.tensor([0.9, 0.8, 0.7]), 0.1, max_keep=2).tolist() == [0, 1]
    assert circle_nms(torch.zeros(0, 2), torch.zeros(0), 1.0).tolist() == []


def small_head(**kwargs) -> CenterHead:
    return CenterHead(8, share_conv_channels=8, head_channels=8, **kwargs)


def test_decode_nms_uses_class_radii_within_a_task():
    grid = GridSpec((-8.0, 8.0, 0.5), (-8.0, 8.0, 0.5))
    head = small_head()
    preds = [
        {name: torch.zeros(1, c, 32, 32) for name, c in {"hm": len(t["classes"]), **head.common_heads}.items()}
        for t in CENTERPOINT_TASKS
    ]
    for p in preds:
        p["hm"][:] = -10.0
        p["dim"][:] = 0.0
    # Two cars 1 m apart (car radius 2 m: one survives); two pedestrians 1 m apart (0.42 m: both survive).
    preds[0]["hm"][0, 0, 10, 10], preds[0]["hm"][0, 0, 10, 12] = 3.0, 2.0
    preds[5]["hm"][0, 0, 20, 10], preds[5]["hm"][0, 0, 20, 12] = 3.0, 2.0
    det = head.decode(preds, grid)[0]
    labels = det["labels"].tolist()
    assert labels.count(CLS["car"]) == 1 and labels.count(CLS["pedestrian"]) == 2 and len(labels) == 3
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])


# ---------------------------------------------------------------------------------------------
# Targets -> decoding round trip

ROUND_TRIP_GRID = GridSpec((-10.0, 10.0, 0.5), (-8.0, 8.0, 0.5))  # H = 32 rows (y), W = 40 columns (x)


def round_trip_boxes():
    nan = float("nan")
    boxes = torch.tensor(
        [
            [3.3, -2.7, -0.9, 4.6, 1.9, 1.7, math.pi - 1e-3, 3.0, -1.0],  # car, yaw just below +pi
            [-6.1, 5.2, -0.5, 4.2, 1.8, 1.5, -math.pi + 1e-3, 0.0, 0.5],  # car, just above -pi
            [6.8, 5.3, 0.4, 7.5, 2.6, 3.1, 0.6, nan, nan],  # truck, unknown velocity
            [-5.7, -5.9, 0.2, 6.1, 2.9, 3.2, -1.2, 0.2, 0.1],  # construction vehicle (same task as truck)
            [0.26, 0.74, -0.8, 0.7, 0.6, 1.8, 2.0, 1.1, 0.3],  # pedestrian
            [-1.9, -0.6, -1.1, 0.4, 0.4, 0.9, 0.0, 0.0, 0.0],  # traffic cone
            [9.9, -7.9, -1.0, 0.5, 2.3, 1.0, -2.5, 0.0, 0.0],  # barrier in the last cell
            [-9.1, 1.4, -0.7, 1.7, 0.6, 1.3, 1.4, -2.0, 4.0],  # bicycle
            [12.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],  # car off the grid: no target
        ]
    )
    labels = torch.tensor(
        [
            CLS[c]
            for c in [
                "car",
                "car",
                "truck",
                "construction_vehicle",
                "pedestrian",
                "traffic_cone",
                "barrier",
                "bicycle",
                "car",
            ]
        ]
    )
    return boxes, labels


def preds_from_targets(head: CenterHead, targets, grid: GridSpec):
    """Maps a perfect head would output: heatmap logits of the targets, regression targets at object centres."""
    Hh, Ww = grid.shape
    preds = []
    for tg in targets:
        B = tg["heatmap"].shape[0]
        p = {"hm": torch.logit(tg["heatmap"].clamp(1e-6, 1 - 1e-6))}
        for name, c in head.common_heads.items():
            maps = torch.zeros(B, c, Hh * Ww)
            for b in range(B):
                idx = tg["ind"][b][tg["mask"][b]]
                maps[b][:, idx] = tg[name][b][tg["mask"][b]].T
            p[name] = maps.view(B, c, Hh, Ww)
        preds.append(p)
    return preds


def test_targets_then_decode_recover_the_gt_boxes():
    grid = ROUND_TRIP_GRID
    head = small_head()
    boxes, labels = round_trip_boxes()
    empty = (torch.zeros(0, 9), torch.zeros(0, dtype=torch.long))
    targets = head.targets([boxes, boxes[:1], empty[0]], [labels, labels[:1], empty[1]], grid)
    assert len(targets) == 6 and targets[0]["heatmap"].shape == (3, 1, 32, 40)
    assert targets[0]["mask"][0].sum() == 2 and targets[0]["mask"][1].sum() == 1  # the off-grid car has none
    # The first car: continuous cell (26.6, 10.6) -> cell (ix 26, iy 10), offset (0.6, 0.6).
    assert targets[0]["ind"][0, 0].item() == 10 * 40 + 26
    torch.testing.assert_close(targets[0]["reg"][0, 0], torch.tensor([0.6, 0.6]), atol=1e-5, rtol=0)
    assert targets[0]["heatmap"][0, 0, 10, 26] == 1
    assert targets[1]["vel_mask"][0].tolist()[:2] == [False, True] and not targets[1]["vel"][0, 0].isnan().any()

    dets = head.decode(preds_from_targets(head, targets, grid), grid)
    det = dets[0]
    on_grid = boxes[:-1]
    assert len(det["boxes"]) == len(on_grid)
    assert torch.all(det["scores"] > 0.99)
    for box, label in zip(on_grid, labels[:-1]):
        same = torch.nonzero(det["labels"] == label)[:, 0]
        k = same[(det["boxes"][same, :2] - box[:2]).norm(dim=1).argmin()]
        got = det["boxes"][k]
        # The centre is the centre cell's corner + the regressed offset: the GT centre exactly.
        cell = torch.floor(grid.metric_to_cell(box[:2]))
        torch.testing.assert_close(got[:2], grid.cell_to_metric(cell + targets_offset(box, grid)), atol=1e-5, rtol=0)
        torch.testing.assert_close(got[:3], box[:3], atol=1e-5, rtol=0)
        assert torch.all(torch.floor(grid.metric_to_cell(got[:2])) == cell)  # within its cell
        torch.testing.assert_close(got[3:6], box[3:6], atol=1e-5, rtol=1e-5)
        assert abs(g.wrap_angle(got[6] - box[6]).item()) < 1e-5
        if torch.isfinite(box[7:]).all():
            torch.testing.assert_close(got[7:], box[7:], atol=1e-5, rtol=0)
        else:
            assert torch.equal(got[7:], torch.zeros(2))  # NaN GT velocity: a 0 target, and masked from the loss
    assert len(dets[1]["boxes"]) == 1 and dets[1]["labels"].item() == CLS["car"]
    assert len(dets[2]["boxes"]) == 0 and not any(tg["heatmap"][2].any() or tg["mask"][2].any() for tg in targets)


def targets_offset(box, grid):
    c = grid.metric_to_cell(box[:2])
    return c - torch.floor(c)


def test_loss_is_zero_for_perfect_regression_and_masks_unknown_velocity():
    grid = ROUND_TRIP_GRID
    head = small_head()
    boxes, labels = round_trip_boxes()
    targets = head.targets([boxes], [labels], grid)
    preds = preds_from_targets(head, targets, grid)
    preds[1]["vel"][0, :, targets[1]["ind"][0, 0] // 40, targets[1]["ind"][0, 0] % 40] = 100.0  # truck: NaN GT velocity
    frozen = copy.deepcopy(preds)
    losses = head.loss(preds, targets)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(preds, frozen) for k in a)  # inputs untouched
    for t in range(6):
        for name in ("reg", "height", "dim", "rot", "vel"):
            assert losses[f"task{t}.{name}"].item() == pytest.approx(0.0, abs=1e-6)
    preds[0]["vel"] += 1.0  # both cars' velocity off by 1 in vx and vy: 0.2 * (1 + 1)
    assert head.loss(preds, targets)["task0.vel"].item() == pytest.approx(0.4, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["hm"].item() + 0.25 * losses["loc"].item(), rel=1e-6)


def test_head_config_is_copied_not_mutated_and_builds_on_any_bev():
    tasks = [{"classes": ["car"]}, {"classes": ["pedestrian", "bicycle"]}]
    heads = {"reg": 2, "height": 1, "dim": 3, "rot": 2}
    before = copy.deepcopy((tasks, heads))
    head = CenterHead(80, tasks=tasks, common_heads=heads, share_conv_channels=8, head_channels=8)
    out = head(torch.randn(2, 80, 6, 5))  # e.g. a camera student's BEV map
    assert (tasks, heads) == before
    assert [sorted(p) for p in out] == [sorted(["hm", *heads])] * 2 and out[1]["hm"].shape == (2, 2, 6, 5)
    torch.testing.assert_close(head.task_heads[0].heads["hm"][-1].bias, torch.full((1,), HEATMAP_PRIOR_BIAS))
    assert HEATMAP_PRIOR_BIAS == pytest.approx(-2.19, abs=0.01)
    det = head.decode(out, GridSpec((-2.5, 2.5, 1.0), (-3.0, 3.0, 1.0)))
    assert det[0]["boxes"].shape[1] == 9 and det[0]["boxes"][:, 7:].isnan().all()  # no vel head: NaN velocity
    with pytest.raises(ValueError, match="unknown"):
        CenterHead(8, tasks=[{"classes": ["tram"]}])
    with pytest.raises(ValueError, match="lacks"):
        CenterHead(8, common_heads={"reg": 2})


def test_default_classes_match_the_nuscenes_adapter():
    from bevlabels.datasets.nuscenes import NuScenesDataset

    assert NUSCENES_CLASSES == NuScenesDataset.classes
    assert sorted(c for t in CENTERPOINT_TASKS for c in t["classes"]) == sorted(NUSCENES_CLASSES)


# ---------------------------------------------------------------------------------------------
# The whole model


def tiny_centerpoint(bounds, pillar_size=None, strides=(1, 2), ups=(1, 2)) -> CenterPoint:
    vox = PillarVoxelizer(**bounds, pillar_size=pillar_size, max_points_per_pillar=16, max_pillars=4000)
    enc = PillarEncoder(5, [16])
    bb = BEVBackbone(16, [1, 1], list(strides), [16, 32], list(ups), [16, 16])
    head = CenterHead(32, share_conv_channels=16, head_channels=16)
    return CenterPoint(vox, enc, bb, head)


def test_output_grid_must_be_the_store_grid():
    bounds = {"xbound": [-8.0, 8.0, 1.0], "ybound": [-4.0, 4.0, 1.0], "zbound": [-3.0, 3.0, 6.0]}
    model = tiny_centerpoint(bounds)
    assert model.out_grid.same_geometry(GridSpec((-8.0, 8.0, 1.0), (-4.0, 4.0, 1.0), (-3.0, 3.0, 6.0)))
    fine = tiny_centerpoint(bounds, pillar_size=[0.5, 0.5], strides=(2, 2), ups=(1, 2))  # 0.5 m pillars, stride 2
    assert fine.out_grid.shape == (8, 16)
    out = fine([torch.tensor([pt(0.3, 0.3, 0.0)])])
    assert out["bev"].shape == (1, 32, 8, 16)
    with pytest.raises(ValueError, match="store's grid"):
        tiny_centerpoint(bounds, pillar_size=[0.5, 0.5])


def test_hydra_builds_the_model_from_target_configs_with_grid_interpolation():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "grid": {"xbound": [-8.0, 8.0, 1.0], "ybound": [-8.0, 8.0, 1.0], "zbound": [-3.0, 3.0, 6.0]},
            "model": {
                "_target_": "trainer.models.centerpoint.CenterPoint",
                "voxelizer": {
                    "_target_": "trainer.models.components.voxelize.PillarVoxelizer",
                    "xbound": "${grid.xbound}",
                    "ybound": "${grid.ybound}",
                    "zbound": "${grid.zbound}",
                    "max_pillars": [1000, 2000],
                },
                "encoder": {
                    "_target_": "trainer.models.components.pillar_encoder.PillarEncoder",
                    "in_channels": 5,
                    "feat_channels": [8],
                },
                "backbone": {
                    "_target_": "trainer.models.components.bev_backbone.BEVBackbone",
                    "in_channels": 8,
                    "layer_nums": [1, 1],
                    "layer_strides": [1, 2],
                    "layer_channels": [8, 8],
                    "upsample_strides": [1, 2],
                    "upsample_channels": [8, 8],
                },
                "head": {
                    "_target_": "trainer.models.components.center_head.CenterHead",
                    "in_channels": 16,
                    "tasks": [{"classes": ["car"]}, {"classes": ["pedestrian", "traffic_cone"]}],
                    "common_heads": {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2},
                    "code_weights": {"vel": 0.2},
                    "share_conv_channels": 8,
                    "head_channels": 8,
                },
            },
        }
    )
    model = instantiate(cfg.model)
    assert model.out_grid.shape == (16, 16) and model.head.tasks == [("car",), ("pedestrian", "traffic_cone")]
    out = model([torch.tensor([pt(1.0, 1.0, 0.0)])])
    assert out["bev"].shape == (1, 16, 16, 16)


# ---------------------------------------------------------------------------------------------
# Overfitting two synthetic clouds

OVERFIT_BOUNDS = {"xbound": [-16.0, 16.0, 1.0], "ybound": [-16.0, 16.0, 1.0], "zbound": [-3.0, 3.0, 6.0]}  # 32 x 32
GROUND_Z = -1.8


def surface_points(box: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` points uniform on the faces of one ``(9,)`` box (area-weighted), in the box's frame."""
    lwh = box[3:6]
    areas = torch.stack([lwh[1] * lwh[2], lwh[0] * lwh[2], lwh[0] * lwh[1]])  # faces normal to x, y, z
    axis = torch.multinomial(areas, n, replacement=True, generator=gen)
    local = (torch.rand(n, 3, generator=gen) - 0.5) * lwh
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1.0
    local[torch.arange(n), axis] = sign * lwh[axis] / 2
    return g.transform_points(g.make_transform(g.rot_z(box[6]), box[:3]), local)


def synthetic_scene(specs, gen: torch.Generator, n_ground: int = 600):
    """A cloud ``(P, 5)`` (x y z intensity dt) of box surfaces plus ground, with GT boxes and labels."""
    boxes, labels, parts = [], [], []
    for name, x, y, yaw, (l, w, h), vel in specs:
        box = torch.tensor([x, y, GROUND_Z + h / 2, l, w, h, yaw, *vel])
        boxes.append(box)
        labels.append(CLS[name])
        parts.append(surface_points(box, 40 + int(20 * l * w), gen))
    xy = (torch.rand(n_ground, 2, generator=gen) - 0.5) * 32
    parts.append(torch.cat([xy, torch.full((n_ground, 1), GROUND_Z)], 1))
    xyz = torch.cat(parts)
    extra = torch.stack(
        [torch.rand(len(xyz), generator=gen), torch.randint(0, 3, (len(xyz),), generator=gen) * 0.05], 1
    )
    return torch.cat([xyz, extra], 1).float(), torch.stack(boxes), torch.tensor(labels)


SCENES = [
    [
        ("car", 5.3, 4.6, 0.3, (4.5, 1.9, 1.6), (4.0, 0.5)),
        ("truck", -7.4, -6.2, 1.9, (7.0, 2.5, 3.0), (0.0, 0.0)),
        ("pedestrian", 1.2, -4.3, 0.0, (0.7, 0.7, 1.8), (1.0, 0.0)),
    ],
    [
        ("car", -4.7, 6.4, -2.8, (4.3, 1.8, 1.5), (-3.0, 0.0)),
        ("barrier", 8.2, -3.6, 1.5, (0.5, 2.4, 1.0), (0.0, 0.0)),
        ("pedestrian", -0.6, -8.5, 2.0, (0.7, 0.6, 1.7), (float("nan"), float("nan"))),
    ],
]


@pytest.fixture
def one_thread():
    """Run on one thread: these convolutions are tiny, and on a shared 2-core box threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def precise_bn(model: torch.nn.Module, *inputs) -> None:
    """Set every BatchNorm's running statistics to the exact batch statistics of ``model(*inputs)``.

    After a few steps the running averages (momentum 0.01 in the backbone, as mmdet3d's CenterPoint)
    still lag the weights; a long training run makes them converge, an overfit test recomputes them.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one pass, exactly that pass's statistics
    model.train()
    with torch.no_grad():
        model(*inputs)


def overfit(steps: int, num_head_convs: int, lr: float):
    """Train a tiny CenterPoint (32 x 32 cells, the six default tasks) on the two SCENES with Adam."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vox = PillarVoxelizer(**OVERFIT_BOUNDS, max_points_per_pillar=16, max_pillars=4000)
    bb = BEVBackbone(16, [1, 1], [1, 2], [16, 32], [1, 2], [16, 16])
    head = CenterHead(32, share_conv_channels=16, head_channels=16, num_head_convs=num_head_convs)
    model = CenterPoint(vox, PillarEncoder(5, [16]), bb, head)
    scenes = [synthetic_scene(s, gen) for s in SCENES]
    clouds = [s[0] for s in scenes]
    gt_boxes, gt_labels = [s[1] for s in scenes], [s[2] for s in scenes]
    targets = model.targets(gt_boxes, gt_labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = model.loss(model(clouds), targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: losses[k].item() for k in ("loss", "hm", "loc")})
    precise_bn(model, clouds)
    model.eval()
    with torch.no_grad():
        dets = model.decode(model(clouds))
    return history, dets, gt_boxes, gt_labels


def assert_detections_match(dets, gt_boxes, gt_labels, max_centre_error: float, check_shape: bool = False):
    """The best len(GT) detections of each sample are the GT boxes: right class, centre within ``max_centre_error`` m."""
    for det, boxes, labels in zip(dets, gt_boxes, gt_labels):
        top = {k: v[: len(boxes)] for k, v in det.items()}
        assert len(top["boxes"]) == len(boxes), (
            f"{len(top['boxes'])} detections above the score threshold for {len(boxes)} GT"
        )
        for box, label in zip(boxes, labels):
            d = (top["boxes"][:, :2] - box[:2]).norm(dim=1)
            k = d.argmin()
            assert d[k] < max_centre_error, (
                f"no detection within {max_centre_error} m of GT {box.tolist()}: nearest {d[k]:.2f} m"
            )
            assert top["labels"][k] == label, (
                f"GT {NUSCENES_CLASSES[label]} detected as {NUSCENES_CLASSES[top['labels'][k]]}"
            )
            if check_shape:
                got = top["boxes"][k]
                torch.testing.assert_close(got[3:6], box[3:6], rtol=0.25, atol=0.2)
                assert abs(g.wrap_angle(got[6] - box[6]).item()) < 0.3


def assert_loss_fell(history, factor: float = 10.0):
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] / factor, f"loss {first['loss']:.3f} -> {last['loss']:.3f}"
    assert last["hm"] < first["hm"] / factor, f"heatmap loss {first['hm']:.3f} -> {last['hm']:.3f}"
    assert last["loc"] < first["loc"] / 5, f"regression loss {first['loc']:.3f} -> {last['loc']:.3f}"


def test_overfit_two_synthetic_clouds_quick(one_thread):
    """80 Adam steps, one conv per head output (about 3-6 s on one shared core)."""
    start = time.perf_counter()
    history, dets, gt_boxes, gt_labels = overfit(steps=80, num_head_convs=1, lr=5e-3)
    assert_loss_fell(history)
    assert_detections_match(dets, gt_boxes, gt_labels, max_centre_error=1.0)  # one 1 m cell
    assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_overfit_two_synthetic_clouds_full_head(one_thread):
    """200 steps with CenterPoint's two-conv head branches; box shapes must be learnt too (about 25 s)."""
    history, dets, gt_boxes, gt_labels = overfit(steps=200, num_head_convs=2, lr=3e-3)
    assert_loss_fell(history, factor=30.0)
    assert_detections_match(dets, gt_boxes, gt_labels, max_centre_error=0.5, check_shape=True)
