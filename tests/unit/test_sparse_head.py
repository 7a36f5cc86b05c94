"""The sparse head: op shapes, operation_order as data (BEV-only, PV-only, BEV-then-PV with stand-in
aggregations), config errors, the denoising mask, velocity from displacement, decoding, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bevlabels import geometry as G
from trainer.models.components.nms import class_nms
from trainer.models.components.sparse.anchors import VX, VY, VZ, X, Y, anchors_to_boxes, boxes_to_anchors
from trainer.models.components.sparse.decoder import CarriedInstances, SparseDecoder, default_operation_order
from trainer.models.components.sparse.decoding import decode
from trainer.models.components.sparse.denoising import denoising_attn_mask, make_denoising_queries
from trainer.models.components.sparse.head import SparseHead, default_anchors
from trainer.models.components.sparse.layers import (
    CLS_PRIOR_BIAS,
    FFN,
    AnchorEncoder,
    DecoupledSelfAttention,
    RefineLayer,
)
from trainer.models.losses import sparse_detection_loss

B, Q, C, K, HEADS = 2, 10, 32, 3, 4
BEV_C, N_CAM = 8, 2


class StandInBEVAgg(nn.Module):
    """The BEVDeformableAggregation interface: bilinear BEV sample at the anchor centre, plus an MLP of f + e."""

    def __init__(self):
        super().__init__()
        self.proj, self.mix = nn.Linear(BEV_C, C), nn.Linear(C, C)

    def forward(self, instance_feature, anchor, anchor_embed, bev):
        grid = (anchor[..., [X, Y]] / 20.0)[:, :, None]  # (B, Q, 1, 2)
        sampled = F.grid_sample(bev, grid, align_corners=False)[..., 0].transpose(1, 2)  # (B, Q, C_bev)
        return self.proj(sampled) + self.mix(instance_feature + anchor_embed)


class StandInPVAgg(nn.Module):
    """The PVDeformableAggregation interface: pooled pyramid levels scaled by a camera-matrix entry."""

    def __init__(self):
        super().__init__()
        self.proj, self.mix = nn.Linear(BEV_C, C), nn.Linear(C, C)

    def forward(self, instance_feature, anchor, anchor_embed, img_feats, img_from_ego, image_hw):
        pooled = sum(f.mean(dim=(1, 3, 4)) for f in img_feats) * img_from_ego[:, :, 0, 0].mean(1, keepdim=True)
        return self.proj(pooled)[:, None] + self.mix(instance_feature + anchor_embed) * anchor[..., :1].tanh()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "bev": torch.randn(B, BEV_C, 16, 16, generator=g),
        "img_feats": [
            torch.randn(B, N_CAM, BEV_C, 8, 12, generator=g),
            torch.randn(B, N_CAM, BEV_C, 4, 6, generator=g),
        ],
        "img_from_ego": torch.eye(4).repeat(B, N_CAM, 1, 1) + 0.1 * torch.randn(B, N_CAM, 4, 4, generator=g),
        "image_hw": (64, 96),
    }


def gts(seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for m in (3, 1):
        b = torch.zeros(m, 9)
        b[:, :2] = torch.rand(m, 2, generator=g) * 30 - 15
        b[:, 3:6] = torch.rand(m, 3, generator=g) * 3 + 0.5
        b[:, G.YAW] = torch.rand(m, generator=g) * 6 - 3
        b[:, [G.VX, G.VY]] = torch.randn(m, 2, generator=g)
        boxes.append(b)
    boxes[0][1, G.VX] = float("nan")  # unknown velocity
    return boxes, [torch.tensor([0, 2, 1]), torch.tensor([1])]


def make_head(order, num_dn_groups=2, **kw):
    torch.manual_seed(0)
    kw.setdefault("bev_agg", StandInBEVAgg() if "bev_agg" in order else None)
    kw.setdefault("pv_agg", StandInPVAgg() if "pv_agg" in order else None)
    return SparseHead(Q, C, K, order, anchors_init=default_anchors(Q, xy_range=15.0), num_heads=HEADS,
                      num_dn_groups=num_dn_groups, **kw)  # fmt: skip


BEV_ONLY = default_operation_order(2, views=("bev",))
PV_ONLY = default_operation_order(2, views=("pv",))
BEV_PV = default_operation_order(3, views=("bev", "pv"))


# ---------------------------------------------------------------------------------------------
# Ops


def test_op_shapes():
    anchor = default_anchors(Q)[None].repeat(B, 1, 1)
    f = torch.randn(B, Q, C)
    for mode in ("cat", "add"):
        assert AnchorEncoder(C, mode)(anchor).shape == (B, Q, C)
    assert AnchorEncoder(C)(anchor[0]).shape == (Q, C)  # any leading dims
    e = AnchorEncoder(C)(anchor)
    attn = DecoupledSelfAttention(C, HEADS)
    assert attn(f, e).shape == (B, Q, C)
    assert attn(f, e, torch.randn(B, 7, C), torch.randn(B, 7, C)).shape == (B, Q, C)  # temporal cross-attention
    assert FFN(C, 48)(f).shape == (B, Q, C)
    a, cls, qt = RefineLayer(C, K)(f, anchor, e)
    assert a.shape == (B, Q, 11) and cls.shape == (B, Q, K) and qt.shape == (B, Q, 2)
    assert RefineLayer(C, K, with_quality=False)(f, anchor, e)[2] is None
    with pytest.raises(ValueError, match="anchor_encoder_mode"):
        AnchorEncoder(C, "sum")


def test_anchor_encoder_cat_keeps_parts_in_their_slices():
    enc = AnchorEncoder(C, "cat")
    a = default_anchors(Q)
    b = a.clone()
    b[:, [VX, VY, VZ]] += 1.0
    diff = (enc(a) - enc(b)).abs().amax(0)  # (C,)
    assert (diff[: C * 3 // 4] == 0).all() and (diff[C * 3 // 4 :] > 0).any()  # velocity is the last C/4


def _reference_attention(attn, f, e, fk, ek, blocked):
    """Per-sample, per-head softmax attention written out; ``blocked (B, Q, S)``."""
    h, d = attn.num_heads, 2 * C // attn.num_heads
    out = torch.zeros(f.shape[0], f.shape[1], 2 * C)
    for b in range(f.shape[0]):
        q = attn.q_proj(torch.cat([f[b], e[b]], -1))
        k = attn.k_proj(torch.cat([fk[b], ek[b]], -1))
        v = attn.v_proj(fk[b])
        for hh in range(h):
            s = slice(hh * d, (hh + 1) * d)
            logits = q[:, s] @ k[:, s].T / d**0.5
            logits = logits.masked_fill(blocked[b], float("-inf"))
            out[b, :, s] = logits.softmax(-1) @ v[:, s]
    return f + attn.out_proj(out)


def test_decoupled_attention_matches_reference_and_mask_formats():
    torch.manual_seed(1)
    attn = DecoupledSelfAttention(C, HEADS).eval()
    f, e = torch.randn(B, Q, C), torch.randn(B, Q, C)
    blocked = torch.rand(B, Q, Q) > 0.6
    blocked &= ~torch.eye(Q, dtype=torch.bool)
    ref = _reference_attention(attn, f, e, f, e, blocked)
    torch.testing.assert_close(attn(f, e, attn_mask=blocked), ref, rtol=1e-5, atol=1e-5)
    per_head = blocked.repeat_interleave(HEADS, dim=0)  # (B*heads, Q, Q), batch-major
    torch.testing.assert_close(attn(f, e, attn_mask=per_head), ref, rtol=1e-5, atol=1e-5)
    shared = blocked[0]
    torch.testing.assert_close(
        attn(f, e, attn_mask=shared),
        _reference_attention(attn, f, e, f, e, shared.expand(B, Q, Q)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert not torch.allclose(attn(f, e), ref, atol=1e-4)  # the mask matters
    fk, ek = torch.randn(B, 5, C), torch.randn(B, 5, C)
    torch.testing.assert_close(
        attn(f, e, fk, ek), _reference_attention(attn, f, e, fk, ek, torch.zeros(B, Q, 5, dtype=torch.bool))
    )


def test_velocity_is_displacement_over_dt():
    layer = RefineLayer(C, K)
    last = layer.reg[-1]
    nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.zero_()
        last.bias[VX], last.bias[VY], last.bias[X] = 1.0, -2.0, 0.25
    anchor = default_anchors(Q)[None].repeat(B, 1, 1)
    anchor[..., VX] = 0.5
    f, e = torch.randn(B, Q, C), torch.randn(B, Q, C)
    a, _, _ = layer(f, anchor, e, dt=torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(a[0, :, VX], torch.full((Q,), 0.5 + 1.0 / 0.5))
    torch.testing.assert_close(a[1, :, VX], torch.full((Q,), 0.5 + 1.0 / 2.0))
    torch.testing.assert_close(a[1, :, VY], torch.full((Q,), -2.0 / 2.0))
    torch.testing.assert_close(a[..., X], anchor[..., X] + 0.25)  # position: a residual, not divided by dt
    a_default, _, _ = layer(f, anchor, e)  # unknown dt: 0.5 s (nuScenes keyframes)
    torch.testing.assert_close(a_default[1, :, VX], torch.full((Q,), 0.5 + 1.0 / 0.5))
    with pytest.raises(AssertionError, match="dt must be"):
        layer(f, anchor, e, dt=torch.tensor([0.5]))


def test_classifier_bias_starts_at_prior():
    bias = RefineLayer(C, K).cls[-1].bias
    torch.testing.assert_close(bias.sigmoid(), torch.full((K,), 0.01))
    assert CLS_PRIOR_BIAS == pytest.approx(-4.59512, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# operation_order as data


@pytest.mark.parametrize("order", [BEV_ONLY, PV_ONLY, BEV_PV], ids=["bev", "pv", "bev_pv"])
def test_operation_orders_run_and_emit_one_output_per_refine(order):
    head = make_head(order).eval()
    out = head(**inputs(), dt=torch.tensor([0.5, 0.4]))
    assert len(out["layers"]) == order.count("refine") == head.decoder.num_layers
    for layer in out["layers"]:
        assert layer["anchor"].shape == (B, Q, 11) and layer["cls"].shape == (B, Q, K)
        assert layer["quality"].shape == (B, Q, 2)
    assert out["instance_feature"].shape == (B, Q, C) and out["dn"] is None
    kinds = {type(m) for m in head.decoder.layers}
    assert (StandInBEVAgg in kinds) == ("bev_agg" in order) and (StandInPVAgg in kinds) == ("pv_agg" in order)


def test_default_operation_order_follows_sparse4dv3():
    assert default_operation_order(2, views=("bev", "pv")) == [
        *["bev_agg", "pv_agg", "ffn", "norm", "refine"],
        *["self_attn", "norm", "bev_agg", "pv_agg", "ffn", "norm", "refine"],
    ]
    temporal = default_operation_order(3, views=("pv",), temporal=True)
    assert temporal.count("temp_attn") == 2 and temporal.index("temp_attn") == temporal.index("refine") + 1


def test_each_op_has_its_own_parameters():
    head = make_head(BEV_PV)
    aggs = [m for m in head.decoder.layers if isinstance(m, StandInBEVAgg)]
    assert len(aggs) == 3
    ptrs = {p.data_ptr() for m in aggs for p in m.parameters()}
    assert len(ptrs) == 3 * len(list(aggs[0].parameters()))
    refines = [m for m in head.decoder.layers if isinstance(m, RefineLayer)]
    assert len({id(m) for m in refines}) == 3
    # a factory (e.g. a Hydra _partial_) builds one module per op
    dec = SparseDecoder(BEV_ONLY, C, K, bev_agg=StandInBEVAgg, num_heads=HEADS)
    assert sum(isinstance(m, StandInBEVAgg) for m in dec.layers) == 2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="pv_agg is None"), pytest.warns(UserWarning, match="bev_agg is given"):
        SparseDecoder(PV_ONLY, C, K, bev_agg=StandInBEVAgg(), num_heads=HEADS)
    with pytest.raises(ValueError, match="bev_agg is None"):
        SparseDecoder(BEV_PV, C, K, pv_agg=StandInPVAgg(), num_heads=HEADS)
    with pytest.raises(ValueError, match=r"operation_order\[1\] = 'deformable'"):
        SparseDecoder(["ffn", "deformable", "refine"], C, K)
    with pytest.raises(ValueError, match="must end with 'refine'"):
        SparseDecoder(["ffn", "refine", "norm"], C, K)
    with pytest.warns(UserWarning, match="pv_agg is given"):
        dec = SparseDecoder(BEV_ONLY, C, K, bev_agg=StandInBEVAgg(), pv_agg=StandInPVAgg(), num_heads=HEADS)
    assert not any(isinstance(m, StandInPVAgg) for m in dec.modules())  # no unused parameters
    with pytest.raises(ValueError, match="anchors_init"):
        SparseHead(Q, C, K, ["refine"], anchors_init=torch.zeros(Q + 1, 11))
    with pytest.raises(ValueError, match="num_temp_instances"):
        SparseHead(Q, C, K, ["refine"], num_temp_instances=Q)
    head = make_head(BEV_ONLY)
    with pytest.raises(AssertionError, match="bev must be"):
        head(img_feats=inputs()["img_feats"])
    with pytest.raises(ValueError, match="num_temp_instances"):
        head(bev=inputs()["bev"], carried=CarriedInstances(torch.zeros(B, 2, C), torch.zeros(B, 2, 11)))


# ---------------------------------------------------------------------------------------------
# Denoising


def test_denoising_queries_layout():
    boxes, labels = gts()
    g = torch.Generator().manual_seed(0)
    dn = make_denoising_queries(boxes, labels, num_groups=2, generator=g)
    Mx = 3
    assert dn["max_gt"] == Mx and dn["anchor"].shape == (B, 2 * 2 * Mx, 11)
    gt_a = boxes_to_anchors(boxes[0])
    for grp in range(2):
        base = grp * 2 * Mx
        assert dn["labels"][0, base : base + Mx].tolist() == [0, 2, 1]
        assert dn["labels"][0, base + Mx : base + 2 * Mx].tolist() == [-1, -1, -1]
        assert dn["valid"][1, base : base + 2 * Mx].tolist() == [True, False, False, True, False, False]
        torch.testing.assert_close(dn["gt_anchor"][0, base + Mx : base + 2 * Mx], gt_a, equal_nan=True)
        pos_err = (dn["anchor"][0, base : base + Mx, :3] - gt_a[:, :3]).abs()
        neg_err = (dn["anchor"][0, base + Mx : base + 2 * Mx, :3] - gt_a[:, :3]).abs()
        assert (pos_err <= 2.0).all() and (neg_err >= 2.0).all() and (neg_err <= 4.0).all()
    assert torch.isfinite(dn["anchor"]).all()  # an unknown velocity is noised from 0
    assert make_denoising_queries([torch.zeros(0, 9)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, 2) is None
    assert make_denoising_queries(boxes, labels, 1, max_gt=2)["max_gt"] == 2


def test_denoising_mask_hand_cases():
    T, F_ = True, False
    # Q = 1 normal query, 2 groups of one GT (positive, negative): groups see only themselves
    m = denoising_attn_mask(1, 2, torch.ones(1, 4, dtype=torch.bool))
    expected = [
        [F_, T, T, T, T],
        [T, F_, F_, T, T],
        [T, F_, F_, T, T],
        [T, T, T, F_, F_],
        [T, T, T, F_, F_],
    ]
    assert m.tolist() == [expected]
    # Q = 2, 1 group, M_max = 2 but this sample has 1 GT: (pos0, pos1, neg0, neg1), pos1 and neg1 are padding,
    # blocked as keys for every query but themselves
    m = denoising_attn_mask(2, 1, torch.tensor([[True, False, True, False]]))
    expected = [
        [F_, F_, T, T, T, T],
        [F_, F_, T, T, T, T],
        [T, T, F_, T, F_, T],
        [T, T, F_, F_, F_, T],
        [T, T, F_, T, F_, T],
        [T, T, F_, T, F_, F_],
    ]
    assert m.tolist() == [expected]


def test_denoising_mask_isolates_groups_and_normal_queries():
    torch.manual_seed(0)
    order = ["self_attn", *BEV_PV[:5], "self_attn", "norm", "refine"]
    dec = SparseDecoder(order, C, K, bev_agg=StandInBEVAgg(), pv_agg=StandInPVAgg(), num_heads=HEADS).eval()
    boxes, labels = gts()
    dn = make_denoising_queries(boxes, labels, num_groups=3, generator=torch.Generator().manual_seed(1))
    D, Dg = dn["anchor"].shape[1], dn["anchor"].shape[1] // 3
    mask = denoising_attn_mask(Q, 3, dn["valid"])
    anchor = torch.cat([default_anchors(Q, 15.0)[None].repeat(B, 1, 1), dn["anchor"]], 1)
    f = torch.randn(B, Q + D, C)

    def run(anchor, f):
        layers, feat = dec(f, anchor, attn_mask=mask, **inputs())
        return torch.cat([layers[-1]["anchor"], layers[-1]["cls"], feat], -1)

    base = run(anchor, f)
    pert_a, pert_f = anchor.clone(), f.clone()
    grp = slice(Q + Dg, Q + 2 * Dg)  # group 1
    pert_a[:, grp, :3] += 3.0
    pert_f[:, grp] += 1.0
    out = run(pert_a, pert_f)
    torch.testing.assert_close(out[:, : Q + Dg], base[:, : Q + Dg])  # normal queries and group 0
    torch.testing.assert_close(out[:, Q + 2 * Dg :], base[:, Q + 2 * Dg :])  # group 2
    assert not torch.allclose(out[:, grp], base[:, grp])
    # padding keys do not matter either: sample 1 has 1 GT, its queries 1, 2 of each half-group are padding
    pad = pert_f.clone()
    pad[1, Q + 1 : Q + 3] += 5.0
    out_pad = run(pert_a, pad)
    valid = torch.cat([torch.ones(B, Q, dtype=torch.bool), dn["valid"]], 1)
    torch.testing.assert_close(out_pad[valid], out[valid])
    # without the mask, the groups do interact
    layers, _ = dec(pert_f, pert_a, **inputs())
    assert not torch.allclose(layers[-1]["anchor"][:, :Q], base[:, :Q, :11])


def test_head_normal_queries_unchanged_by_denoising():
    head = make_head(BEV_PV, num_dn_groups=3)  # dropout 0: train mode is deterministic
    boxes, labels = gts()
    x = inputs()
    with_dn = head.train()(**x, gt_boxes=boxes, gt_labels=labels)
    without = head.train()(**x)
    assert with_dn["dn"] is not None and without["dn"] is None
    D = with_dn["dn"]["labels"].shape[1]
    assert D == 3 * 2 * 3 and with_dn["dn"]["layers"][0]["anchor"].shape == (B, D, 11)
    for a, b in zip(with_dn["layers"], without["layers"]):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    assert head.eval()(**x, gt_boxes=boxes, gt_labels=labels)["dn"] is None  # no denoising at inference


# ---------------------------------------------------------------------------------------------
# Decoding


def test_decode_sorts_and_returns_geometry_boxes():
    anchor = default_anchors(4)[None].repeat(2, 1, 1)
    anchor[1, :, X] += 100
    cls = torch.full((2, 4, K), -10.0)
    cls[0, 1, 2], cls[0, 3, 0], cls[0, 0, 1] = 2.0, 1.0, 3.0
    quality = torch.zeros(2, 4, 2)
    quality[0, 0, 0] = -5.0  # query 0 is confident but off-centre: it drops below the others
    out = decode({"anchor": anchor, "cls": cls, "quality": quality}, topk=3)
    o = out[0]
    assert o["query_index"].tolist() == [1, 3, 0] and o["labels"].tolist() == [2, 0, 1]
    expected = torch.tensor([2.0, 1.0, 3.0]).sigmoid() * torch.tensor([0.0, 0.0, -5.0]).sigmoid()
    torch.testing.assert_close(o["scores"], expected)
    assert (o["scores"][:-1] >= o["scores"][1:]).all()
    torch.testing.assert_close(o["boxes"], anchors_to_boxes(anchor[0, [1, 3, 0]]))
    assert o["boxes"].shape == (3, 9) and torch.allclose(o["boxes"][:, G.L], torch.tensor(4.0))
    assert out[1]["boxes"][:, G.X].min() > 50  # per sample
    thr = decode({"anchor": anchor, "cls": cls, "quality": None}, topk=100, score_threshold=0.5)
    assert thr[0]["labels"].tolist() == [1, 2, 0] and len(thr[1]["scores"]) == 0
    assert len(decode({"anchor": anchor, "cls": cls, "quality": None}, topk=100)[0]["scores"]) == 4 * K


def _dets(xy, scores, labels):
    n = len(scores)
    boxes = torch.zeros(n, 9)
    boxes[:, :2] = torch.tensor(xy, dtype=torch.float32)
    order = torch.tensor(scores).argsort(descending=True)
    return {
        "boxes": boxes[order],
        "scores": torch.tensor(scores)[order],
        "labels": torch.tensor(labels)[order],
        "query_index": torch.arange(n)[order],
    }


def test_class_nms_suppresses_within_a_class_only_and_filters_every_key_alike():
    car, ped = 0, 1
    radius = torch.tensor([2.0, 0.42, 0.0])  # class 2: radius 0, never suppressed
    d = _dets(
        xy=[[0, 0], [0.5, 0], [3.0, 0], [0, 0], [0.3, 0.0], [10, 0], [10.3, 0], [20, 0], [20.1, 0]],
        scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3],
        labels=[car, car, car, ped, ped, ped, ped, 2, 2],
    )
    out = class_nms(d, radius)
    # query 1 (car 0.5 m from a better car) and query 4 (pedestrian 0.3 m from a better one) go; the
    # pedestrian on top of the best car stays (another class); 0.3 m < 0.42 m suppresses at (10, 0) too;
    # class 2 (radius 0) keeps both of its boxes 0.1 m apart
    assert out["query_index"].tolist() == [0, 2, 3, 5, 7, 8]
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    for k in ("boxes", "scores", "labels"):
        keep = [d["query_index"].tolist().index(q) for q in out["query_index"].tolist()]
        torch.testing.assert_close(out[k], d[k][keep])
    with pytest.raises(ValueError, match="label 2 has no NMS radius"):
        class_nms(d, radius[:2])


def test_class_nms_equals_a_greedy_loop_on_random_detections():
    g = torch.Generator().manual_seed(3)
    n = 80
    d = _dets((torch.rand(n, 2, generator=g) * 12).tolist(), torch.rand(n, generator=g).tolist(),
              torch.randint(0, 3, (n,), generator=g).tolist())  # fmt: skip
    radius = torch.tensor([2.0, 1.0, 0.5])
    kept = []  # the textbook loop: best first, keep unless a kept box of its class is within its radius
    for i in range(n):
        lab, p = int(d["labels"][i]), d["boxes"][i, :2]
        if all(int(d["labels"][j]) != lab or (p - d["boxes"][j, :2]).norm() > radius[lab] for j in kept):
            kept.append(i)
    out = class_nms(d, radius)
    assert out["query_index"].tolist() == d["query_index"][kept].tolist()
    assert 0 < len(kept) < n  # the case suppresses something and keeps something


# ---------------------------------------------------------------------------------------------
# Gradients, temporal hooks


def test_every_parameter_gets_a_gradient_in_one_step():
    order = default_operation_order(3, views=("bev", "pv"), temporal=True)
    head = make_head(order, num_dn_groups=2, num_temp_instances=4, dropout=0.1).train()
    carried = CarriedInstances(torch.randn(B, 4, C), default_anchors(4, 15.0)[None].repeat(B, 1, 1))
    boxes, labels = gts()
    out = head(**inputs(), dt=torch.tensor([0.5, 0.5]), gt_boxes=boxes, gt_labels=labels, carried=carried)
    loss = sparse_detection_loss(out["layers"], boxes, labels, dn=out["dn"])
    assert torch.isfinite(loss["loss"])
    loss["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    assert not missing, missing


def test_temp_attn_is_skipped_without_carried_instances():
    order = default_operation_order(2, views=("bev",), temporal=True)
    head = make_head(order, num_temp_instances=4).eval()
    x = inputs()
    temp = [i for i, op in enumerate(head.decoder.operation_order) if op == "temp_attn"]
    assert len(temp) == 1
    out = head(**x)
    out["layers"][-1]["cls"].sum().backward()
    assert all(p.grad is None for p in head.decoder.layers[temp[0]].parameters())
    carried = CarriedInstances(torch.randn(B, 4, C), default_anchors(4, 15.0)[None].repeat(B, 1, 1))
    with_carried = head(**x, carried=carried)
    assert not torch.allclose(with_carried["layers"][-1]["cls"], out["layers"][-1]["cls"])
    torch.testing.assert_close(with_carried["layers"][0]["cls"], out["layers"][0]["cls"])  # first layer: no temp_attn
    # Sparse4D's fallback: a second self-attention
    self_head = make_head(order, num_temp_instances=4, temp_attn_without_carried="self").eval()
    self_head(**x)["layers"][-1]["cls"].sum().backward()
    assert all(p.grad is not None for p in self_head.decoder.layers[temp[0]].parameters())


def test_after_refine_hook_sees_normal_queries_and_replaces_them():
    head = make_head(BEV_ONLY, num_dn_groups=2).train()
    boxes, labels = gts()
    seen = []

    def hook(layer, f, anchor, cls, carried):
        seen.append((layer, f.shape, anchor.shape, cls.shape))
        anchor = anchor.clone()
        anchor[..., X] = anchor[..., X] + 1.0
        return f, anchor, carried

    plain = head(**inputs(), gt_boxes=boxes, gt_labels=labels)
    torch.manual_seed(0)
    hooked = head(**inputs(), gt_boxes=boxes, gt_labels=labels, after_refine=hook)
    assert seen == [(l, (B, Q, C), (B, Q, 11), (B, Q, K)) for l in (0, 1)]
    assert not torch.allclose(hooked["layers"][1]["anchor"], plain["layers"][1]["anchor"])
    torch.testing.assert_close(hooked["layers"][0]["anchor"], plain["layers"][0]["anchor"])


@pytest.mark.parametrize("detach", [False, True])
def test_anchor_detach_between_layers(detach):
    head = make_head(BEV_ONLY, detach_anchor=detach).eval()
    out = head(**inputs())
    out["layers"][1]["anchor"][..., X].sum().backward()
    first_refine = next(m for m in head.decoder.layers if isinstance(m, RefineLayer))
    g = first_refine.reg[-1].weight.grad
    # Sparse4D (detach=False): the next layer's box is a residual on this one, so its loss reaches this refine
    assert (g is not None and (g != 0).any()) != detach
