"""Mixed precision: what CPU bf16 autocast (standing in for a GPU's ``bf16-mixed`` / ``16-mixed``) must not change.

bf16 keeps 8 significant bits: 40.3 m is stored as 40.25 m, a cell index of 100.3 as 100.5. Under autocast the
networks' outputs are bf16, so each test feeds bf16 predictions (or runs the op under autocast) and checks that
the float32 result is kept where boxes are involved: GT boxes in matching and targets, the decoded centre, the
camera matrices, the bank's projection of anchors; and that the LiDAR teacher's pillar encoder runs at all.

The whole models under autocast: tests/integration/test_mixed_precision_experiments.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from bevlabels.grid import GridSpec
from trainer.models.components.center_head import CenterHead
from trainer.models.components.pillar_encoder import PFNLayer
from trainer.models.components.sparse.anchors import X, boxes_to_anchors
from trainer.models.components.sparse.instance_bank import project_anchors
from trainer.models.losses import sparse_detection_loss

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def as_bf16(x: float) -> float:
    return torch.tensor(x).bfloat16().item()


def test_bf16_would_round_the_test_values():
    """The premise of the tests below: bf16 moves these values by centimetres to half a cell."""
    assert as_bf16(40.3) == 40.25 and as_bf16(-37.7) == -37.75 and as_bf16(100.3) == 100.5


def test_pillar_encoder_runs_under_autocast_in_the_linear_layers_dtype():
    """The teacher crashed here ("Index put requires the source and destination dtypes match")."""
    torch.manual_seed(0)
    layer = PFNLayer(10, 8).train()
    x = torch.randn(5, 4, 10)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.autocast(**BF16):
        per_point, pooled = layer(x, mask)
    assert per_point.dtype == pooled.dtype == torch.bfloat16
    assert (per_point[~mask] == 0).all()
    pooled.float().sum().backward()
    assert layer.linear.weight.grad is not None


def _far_gt():
    """One GT car at (40.3, -37.7) (both rounded by bf16) and a head whose query 0 sits exactly on it."""
    gt = torch.tensor([[40.3, -37.7, 0.8, 4.4, 1.9, 1.6, 0.4, 1.0, -0.5]])
    anchor = boxes_to_anchors(gt).expand(1, 3, -1).clone()  # (B=1, Q=3, 11) float32, as the head's refine keeps it
    anchor[0, 1:, X] += torch.tensor([5.0, -7.0])
    return gt, anchor


def test_a_far_gt_box_survives_matching_and_targets_under_bf16_autocast():
    gt, anchor = _far_gt()
    torch.manual_seed(1)
    cls_layer, q_layer = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    feat = torch.randn(1, 3, 4)
    with torch.autocast(**BF16):
        cls, quality = cls_layer(feat), q_layer(feat)  # bf16, as under autocast
        assert cls.dtype == torch.bfloat16
        out = sparse_detection_loss([{"anchor": anchor, "cls": cls, "quality": quality}], [gt], [torch.tensor([1])])
    # query 0 is on the GT in float32: matched, and its box term is exactly 0 (a bf16 GT would be 5 cm off)
    assert out["box_0"].item() == 0.0
    assert out["loss"].dtype == torch.float32
    # the same loss as float32 predictions of the same values, without autocast
    ref = sparse_detection_loss(
        [{"anchor": anchor, "cls": cls.float(), "quality": quality.float()}], [gt], [torch.tensor([1])]
    )
    for key in ("cls_0", "box_0", "cns_0", "yns_0"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-6, atol=0)


def test_centre_head_decodes_a_far_cell_plus_offset_in_float32():
    """Cell ix = 100 plus a regressed offset 0.3: bf16 would add them to 100.5 (half a 0.5 m cell off)."""
    grid = GridSpec((-60.0, 60.0, 0.5), (-8.0, 8.0, 0.5))  # W = 240 columns, H = 32 rows
    head = CenterHead(8, share_conv_channels=8, head_channels=8, tasks=[{"classes": ["car"]}], nms_type="none")
    Hh, Ww = grid.shape
    iy, ix = 10, 100
    maps = {name: torch.zeros(1, c, Hh, Ww) for name, c in head.common_heads.items()}
    maps["hm"] = torch.full((1, 1, Hh, Ww), -9.0)
    maps["hm"][0, 0, iy, ix] = 5.0
    maps["reg"][0, :, iy, ix] = torch.tensor([0.3, 0.7])
    maps["dim"][0, :, iy, ix] = torch.tensor([1.5, 0.6, 0.4])
    maps["rot"][0, :, iy, ix] = torch.tensor([0.0, 1.0])
    preds = [{k: v.bfloat16() for k, v in maps.items()}]  # the head's convolutions output bf16 under autocast
    with torch.autocast(**BF16):
        (det,) = head.decode(preds, grid)
    assert det["boxes"].dtype == torch.float32
    off = preds[0]["reg"][0, :, iy, ix].float()  # the bf16 offsets, exactly, in float32
    want = grid.cell_to_metric(torch.tensor([ix, iy], dtype=torch.float32) + off)
    torch.testing.assert_close(det["boxes"][0, :2], want, rtol=0, atol=1e-5)
    assert abs(det["boxes"][0, 0].item() - (-60.0 + 0.5 * (100 + 0.30078125))) < 1e-5  # not -60 + 0.5 * 100.5


def test_centre_head_loss_is_float32_and_keeps_a_far_target_exact():
    grid = GridSpec((-60.0, 60.0, 0.5), (-8.0, 8.0, 0.5))
    head = CenterHead(8, share_conv_channels=8, head_channels=8, tasks=[{"classes": ["car"]}])
    gt = torch.tensor([[40.3, -3.7, 0.8, 4.4, 1.9, 1.6, 0.4, 1.0, -0.5]])
    (tg,) = head.targets([gt], [torch.tensor([0])], grid)
    torch.testing.assert_close(tg["reg"][0, 0], torch.tensor([0.6, 0.6]), rtol=0, atol=1e-5)  # 200.6, 8.6 cells
    torch.manual_seed(2)
    channels = {"hm": 1, **head.common_heads}
    preds = [{k: torch.randn(1, c, *grid.shape).bfloat16() for k, c in channels.items()}]  # as under autocast
    with torch.autocast(**BF16):
        out = head.loss(preds, [tg])
    assert out["loss"].dtype == torch.float32
    ref = head.loss([{k: v.float() for k, v in p.items()} for p in preds], [tg])
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-6, atol=0)


def test_camera_matrices_and_the_banks_projection_ignore_autocast():
    from trainer.models.components.camera_bev import img_from_ego_of

    K = torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]).expand(1, 2, 3, 3)
    c, s = math.cos(0.3), math.sin(0.3)
    ego_from_cam = torch.tensor([[s, 0, c, 1.7], [-c, 0, s, 0.02], [0, -1, 0, 1.5], [0, 0, 0, 1.0]]).expand(1, 2, 4, 4)
    ref = img_from_ego_of(K, ego_from_cam)
    with torch.autocast(**BF16):
        got = img_from_ego_of(K, ego_from_cam)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)

    _, anchor = _far_gt()
    cur_from_prev = torch.tensor([[c, -s, 0, 3.2], [s, c, 0, -1.1], [0, 0, 1, 0.0], [0, 0, 0, 1]], dtype=torch.float64)
    ref = project_anchors(anchor[0], cur_from_prev, 0.5)
    with torch.autocast(**BF16):
        got = project_anchors(anchor[0], cur_from_prev, 0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    want_x = c * (40.3 + 0.5) - s * (-37.7 - 0.25) + 3.2  # centre advanced by v dt, then moved
    assert got[0, X].item() == pytest.approx(want_x, abs=1e-4)
