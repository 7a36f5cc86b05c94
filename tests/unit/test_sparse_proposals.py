"""Dense proposals (trainer/models/components/sparse/proposals.py): the best heatmap peaks over all tasks, their
boxes as detached anchors computed by hand, their features from the BEV cell, and the sparse head starting its
first K queries from them."""

from __future__ import annotations

import math

import pytest
import torch

from bevlabels.grid import GridSpec
from trainer.models.components.center_head import CenterHead
from trainer.models.components.sparse.anchors import ANCHOR_DIM, COS, LOG_H, LOG_L, LOG_W, SIN, VX, VY, VZ, X, Y, Z
from trainer.models.components.sparse.decoder import default_operation_order
from trainer.models.components.sparse.head import SparseHead
from trainer.models.components.sparse.proposals import DenseProposals

GRID = GridSpec(xbound=(-8.0, 8.0, 1.0), ybound=(-6.0, 6.0, 1.0), zbound=(-5.0, 3.0, 8.0), name="test")  # 12 x 16
CLASSES = ("car", "truck", "pedestrian")
TASKS = [{"classes": ["car", "truck"]}, {"classes": ["pedestrian"]}]
C_BEV, C = 6, 8


def planted_preds(B: int = 2):
    """Maps with every heatmap at -10 except planted peaks, and constant regression maps per task."""
    H, W = GRID.shape
    preds = []
    for t in range(2):
        k_t = len(TASKS[t]["classes"])
        preds.append(
            {
                "hm": torch.full((B, k_t, H, W), -10.0),
                "reg": torch.tensor([0.25, 0.75]).view(1, 2, 1, 1).expand(B, 2, H, W).clone(),
                "height": torch.full((B, 1, H, W), 0.5 + t),
                "dim": torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1).expand(B, 3, H, W).clone() * (t + 1),
                "rot": torch.tensor([0.6, 0.8]).view(1, 2, 1, 1).expand(B, 2, H, W).clone(),  # sin, cos
                "vel": torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(B, 2, H, W).clone(),
            }
        )
    # sample 0: (task, channel, iy, ix, logit); the best three over both tasks are the 2.0, 1.0 and 0.0 peaks
    peaks = [(0, 1, 2, 3, 1.0), (1, 0, 7, 10, 2.0), (0, 0, 9, 1, 0.0), (1, 0, 4, 4, -1.0)]
    for t, ch, iy, ix, v in peaks:
        preds[t]["hm"][0, ch, iy, ix] = v
    for t, ch, iy, ix, v in peaks:  # sample 1: the same peaks, the scores reversed
        preds[t]["hm"][1, ch, iy, ix] = 1.0 - v
    return preds, peaks


def expected_anchor(t: int, iy: int, ix: int) -> torch.Tensor:
    """The anchor of a peak, by hand: cell corner + reg, the height, exp(dim), (sin, cos), velocity."""
    a = torch.zeros(ANCHOR_DIM)
    a[X] = GRID.xbound[0] + (ix + 0.25) * GRID.xbound[2]
    a[Y] = GRID.ybound[0] + (iy + 0.75) * GRID.ybound[2]
    a[Z] = 0.5 + t
    a[[LOG_L, LOG_W, LOG_H]] = torch.tensor([1.0, 0.5, 0.2]) * (t + 1)  # exp then log
    a[SIN], a[COS] = 0.6, 0.8
    a[VX], a[VY], a[VZ] = 1.5, -0.5, 0.0
    return a


def make(num_proposals: int = 3) -> DenseProposals:
    torch.manual_seed(0)
    head = CenterHead(C_BEV, class_names=CLASSES, tasks=TASKS, share_conv_channels=8, head_channels=8, num_head_convs=1)
    return DenseProposals(head, num_proposals=num_proposals, embed_dims=C)


def test_the_best_peaks_over_all_tasks_become_detached_anchors_computed_by_hand():
    prop = make(3)
    preds, peaks = planted_preds()
    prop.head.forward = lambda bev: preds  # the planted maps stand in for the head's convolutions
    bev = torch.randn(2, C_BEV, *GRID.shape, requires_grad=True)
    out = prop(bev, GRID)
    label_of = {(0, 0): 0, (0, 1): 1, (1, 0): 2}  # (task, channel) -> class index in CLASSES
    for b, order in ((0, [1, 0, 2]), (1, [3, 2, 0])):  # indices into peaks, best first
        chosen = [peaks[i] for i in order]
        want_scores = torch.tensor([1 / (1 + math.exp(-(v if b == 0 else 1.0 - v))) for *_, v in chosen])
        torch.testing.assert_close(out["scores"][b], want_scores)
        assert out["labels"][b].tolist() == [label_of[(t, ch)] for t, ch, *_ in chosen]
        want = torch.stack([expected_anchor(t, iy, ix) for t, _, iy, ix, _ in chosen])
        torch.testing.assert_close(out["anchor"][b], want, rtol=1e-5, atol=1e-5)
        # the query feature: Linear(bev at the peak's cell) + the class embedding
        at = torch.stack([bev[b, :, iy, ix] for _, _, iy, ix, _ in chosen])
        want_f = prop.feature_proj(at) + prop.class_embed(out["labels"][b])
        torch.testing.assert_close(out["feature"][b], want_f)
    assert not out["anchor"].requires_grad  # a choice, not a path
    out["feature"].sum().backward()
    touched = (bev.grad.abs().sum(1) > 0).nonzero().tolist()  # (b, iy, ix) that got a gradient
    left_out = {0: 3, 1: 1}  # the peak each sample did not choose
    want_cells = [[b, iy, ix] for b in (0, 1) for i, (_, _, iy, ix, _) in enumerate(peaks) if i != left_out[b]]
    assert sorted(touched) == sorted(want_cells)


def test_unknown_velocity_is_zero_and_too_many_proposals_are_refused():
    prop = make(3)
    preds, _ = planted_preds()
    for p in preds:
        del p["vel"]
    prop.head.common_heads = {k: v for k, v in prop.head.common_heads.items() if k != "vel"}
    prop.head.forward = lambda bev: preds
    out = prop(torch.randn(2, C_BEV, *GRID.shape), GRID)
    assert torch.isfinite(out["anchor"]).all() and (out["anchor"][..., [VX, VY, VZ]] == 0).all()
    with pytest.raises(ValueError, match="num_proposals"):
        make(0)


def test_the_sparse_head_starts_its_first_k_queries_from_the_proposals():
    torch.manual_seed(0)
    Q, K = 6, 2
    head = SparseHead(Q, C, 3, default_operation_order(1, ("bev",)), bev_agg=StandIn(), num_dn_groups=0)
    seen = {}
    forward = head.decoder.forward

    def capture(f, anchor, **kw):
        seen["f"], seen["anchor"] = f, anchor
        return forward(f, anchor, **kw)

    head.decoder.forward = capture
    p_anchor, p_feature = torch.randn(2, K, ANCHOR_DIM), torch.randn(2, K, C)
    bev = torch.randn(2, C, 4, 4)
    head(bev=bev, proposals=(p_anchor, p_feature))
    torch.testing.assert_close(seen["anchor"][:, :K], p_anchor)
    torch.testing.assert_close(seen["f"][:, :K], p_feature)
    torch.testing.assert_close(seen["anchor"][:, K:], head.anchor[None, K:].expand(2, -1, -1))
    torch.testing.assert_close(seen["f"][:, K:], head.instance_feature[None, K:].expand(2, -1, -1))
    head(bev=bev)  # without proposals: the learned queries only
    torch.testing.assert_close(seen["anchor"], head.anchor[None].expand(2, -1, -1))

    carried = SparseHead(Q, C, 3, default_operation_order(1, ("bev",)), bev_agg=StandIn(), num_temp_instances=5)
    with pytest.raises(ValueError, match="at most 1"):
        carried(bev=bev, proposals=(p_anchor, p_feature))


class StandIn(torch.nn.Module):
    """A BEV aggregation stand-in: a Linear of the instance feature (the decoder adds it)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(C, C)

    def forward(self, instance_feature, anchor, anchor_embed, bev):
        return self.fc(instance_feature)
