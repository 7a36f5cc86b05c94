"""Sparse head matching and losses: hand-built assignments, permutation invariance, M = 0, a perfect
prediction, and every loss against a brute-force per-element / per-object loop (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from bevlabels import geometry as G
from trainer.models.components.sparse.anchors import COS, SIN, X, Y, Z, boxes_to_anchors
from trainer.models.components.sparse.matching import (
    DEFAULT_MATCH_BOX_WEIGHTS,
    hungarian_match,
    hungarian_match_many,
    matching_cost,
)
from trainer.models.losses import (
    DEFAULT_BOX_WEIGHTS,
    box_l1_loss,
    centerness_loss,
    sigmoid_focal_loss,
    sparse_detection_loss,
    yawness_loss,
)

K = 3


def box(x, y, z=0.0, l=4.0, w=2.0, h=1.5, yaw=0.0, vx=0.0, vy=0.0):
    return [x, y, z, l, w, h, yaw, vx, vy]


def logits_for(labels, hi=6.0, lo=-6.0):
    out = torch.full((len(labels), K), lo)
    for i, c in enumerate(labels):
        if c is not None:
            out[i, c] = hi
    return out


# ---------------------------------------------------------------------------------------------
# Matching


def test_hand_built_match_closest_query_with_right_class_wins():
    gt = torch.tensor([box(10, 0), box(-5, 5, l=1, w=1, h=2)])
    labels = torch.tensor([0, 2])
    q = torch.tensor(
        [
            box(30, 30),  # 0: far from both
            box(10.1, 0),  # 1: on GT 0, wrong class
            box(9.9, 0.1),  # 2: on GT 0, right class
            box(-5, 5.2, l=1, w=1, h=2),  # 3: on GT 1, right class
        ]
    )
    cls = logits_for([0, 1, 0, 2])
    qi, gi = hungarian_match(cls, boxes_to_anchors(q), gt, labels)
    assert dict(zip(qi.tolist(), gi.tolist())) == {2: 0, 3: 1}
    assert qi.dtype == gi.dtype == torch.long


def test_match_is_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    Q, M = 9, 4
    gt = torch.tensor([box(*(torch.rand(2, generator=g) * 40 - 20).tolist()) for _ in range(M)])
    labels = torch.randint(0, K, (M,), generator=g)
    anchors = boxes_to_anchors(gt[torch.randint(0, M, (Q,), generator=g)]) + torch.randn(Q, 11, generator=g)
    cls = torch.randn(Q, K, generator=g)
    qi, gi = hungarian_match(cls, anchors, gt, labels)
    pairs = set(zip(qi.tolist(), gi.tolist()))
    assert len(pairs) == M
    pq, pg = torch.randperm(Q, generator=g), torch.randperm(M, generator=g)
    qi2, gi2 = hungarian_match(cls[pq], anchors[pq], gt[pg], labels[pg])
    assert {(pq[a].item(), pg[b].item()) for a, b in zip(qi2.tolist(), gi2.tolist())} == pairs


def test_matching_cost_equals_brute_force_loop():
    g = torch.Generator().manual_seed(1)
    Q, M = 5, 3
    cls = torch.randn(Q, K, generator=g, dtype=torch.float64)
    anchors = torch.randn(Q, 11, generator=g, dtype=torch.float64)
    gt = torch.tensor([box(1, 2, yaw=0.3, vx=1.0), box(-3, 0, vy=float("nan")), box(0, 0, l=1.0)], dtype=torch.float64)
    labels = torch.tensor([2, 0, 1])
    w = torch.arange(11, dtype=torch.float64) / 10  # every column weighted, to see NaN handling and the layout
    cost = matching_cost(cls, anchors, gt, labels, cls_weight=1.5, box_weights=w, alpha=0.3, gamma=2.5)
    for i in range(Q):
        for j in range(M):
            p = 1 / (1 + math.exp(-cls[i, labels[j]].item()))
            pos = -0.3 * (1 - p) ** 2.5 * math.log(p + 1e-12)
            neg = -0.7 * p**2.5 * math.log(1 - p + 1e-12)
            ga = boxes_to_anchors(gt[j])
            l1 = sum(w[d].item() * abs(anchors[i, d].item() - ga[d].item()) for d in range(11) if not ga[d].isnan())
            assert cost[i, j].item() == pytest.approx(1.5 * (pos - neg) + l1, rel=1e-9, abs=1e-12)


def test_match_with_no_gt_and_fewer_queries_than_gt():
    qi, gi = hungarian_match(torch.zeros(4, K), torch.zeros(4, 11), torch.zeros(0, 9), torch.zeros(0, dtype=torch.long))
    assert qi.shape == gi.shape == (0,)
    gt = torch.tensor([box(0, 0), box(5, 0), box(10, 0)])
    qi, gi = hungarian_match(logits_for([0, 0]), boxes_to_anchors(gt[[2, 0]]), gt, torch.tensor([0, 0, 0]))
    assert dict(zip(qi.tolist(), gi.tolist())) == {0: 2, 1: 0}


def test_default_match_weights_ignore_yaw_and_velocity():
    w = torch.tensor(DEFAULT_MATCH_BOX_WEIGHTS)
    assert (w[[SIN, COS]] == 0).all() and (w[8:] == 0).all() and (w[[X, Y, Z]] == 0.5).all()


# ---------------------------------------------------------------------------------------------
# Losses against brute force


def _sig(x):
    return 1 / (1 + torch.exp(-x))


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    v = fn(*xs)
    g = torch.autograd.grad(v, xs, allow_unused=True)
    return v.detach(), [torch.zeros_like(x) if d is None else d for x, d in zip(xs, g)]


def test_sigmoid_focal_loss_equals_brute_force():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, K, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(4, K, generator=g) > 0.6).double()

    def brute(x):
        total = 0.0
        for i in range(x.shape[0]):
            for k in range(K):
                p = _sig(x[i, k])
                if t[i, k] == 1:
                    total = total - 0.25 * (1 - p) ** 2 * torch.log(p)
                else:
                    total = total - 0.75 * p**2 * torch.log(1 - p)
        return total

    v, (gx,) = _grads(lambda x: sigmoid_focal_loss(x, t, 0.25, 2.0, "sum"), x)
    vr, (gr,) = _grads(brute, x)
    torch.testing.assert_close(v, vr)
    torch.testing.assert_close(gx, gr)
    assert sigmoid_focal_loss(x, t, reduction="none").shape == (4, K)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, reduction="mean"), v / (4 * K))


def _pair(g, P=5):
    pred = torch.randn(P, 11, generator=g, dtype=torch.float64)
    boxes = torch.randn(P, 9, generator=g, dtype=torch.float64)
    boxes[:, [G.L, G.W, G.H]] = boxes[:, [G.L, G.W, G.H]].abs() + 0.5
    boxes[1, G.VX] = float("nan")
    return pred, boxes_to_anchors(boxes)


def test_box_l1_loss_equals_brute_force_and_ignores_nan_gt():
    pred, gt = _pair(torch.Generator().manual_seed(3))
    w = torch.tensor(DEFAULT_BOX_WEIGHTS, dtype=torch.float64)

    def brute(pred):
        total = 0.0
        for i in range(len(pred)):
            for d in range(11):
                if not torch.isnan(gt[i, d]):
                    total = total + w[d] * (pred[i, d] - gt[i, d]).abs()
        return total

    v, (gp,) = _grads(lambda p: box_l1_loss(p, gt, w), pred)
    vr, (gr,) = _grads(brute, pred)
    torch.testing.assert_close(v, vr)
    torch.testing.assert_close(gp, gr)
    assert torch.isfinite(gp).all() and gp[1, 8] == 0


def test_centerness_and_yawness_losses_equal_brute_force():
    g = torch.Generator().manual_seed(4)
    pred, gt = _pair(g, P=6)
    pred[0, [SIN, COS]] = -gt[0, [SIN, COS]]  # a reversed yaw: yawness target 0
    logit = torch.randn(6, generator=g, dtype=torch.float64) * 2

    def brute_cns(logit, pred):
        total = 0.0
        for i in range(len(logit)):
            d = math.sqrt(sum((pred[i, c].item() - gt[i, c].item()) ** 2 for c in (X, Y, Z)))
            t = math.exp(-d)  # a label: no gradient through it
            p = _sig(logit[i])
            total = total - (t * torch.log(p) + (1 - t) * torch.log(1 - p))
        return total

    def brute_yns(logit, pred):
        total = 0.0
        for i in range(len(logit)):
            a, b = pred[i, [SIN, COS]].detach(), gt[i, [SIN, COS]]
            t = 1.0 if float(a @ b) / float(a.norm() * b.norm()) > 0 else 0.0
            p = _sig(logit[i])
            total = total - (t * (1 - p) ** 2 * torch.log(p) + (1 - t) * p**2 * torch.log(1 - p))
        return total

    for fn, ref in ((centerness_loss, brute_cns), (yawness_loss, brute_yns)):
        v, (gl, gp) = _grads(lambda lo, p, fn=fn: fn(lo, p, gt), logit, pred)
        vr, (glr, gpr) = _grads(ref, logit, pred)
        torch.testing.assert_close(v, vr)
        torch.testing.assert_close(gl, glr)
        assert (gp == 0).all() and (gpr == 0).all()  # targets are labels


# ---------------------------------------------------------------------------------------------
# The detection loss


def _outputs(g, B, Q, layers=2, dtype=torch.float64):
    return [
        {
            "anchor": torch.randn(B, Q, 11, generator=g, dtype=dtype).requires_grad_(),
            "cls": torch.randn(B, Q, K, generator=g, dtype=dtype).requires_grad_(),
            "quality": torch.randn(B, Q, 2, generator=g, dtype=dtype).requires_grad_(),
        }
        for _ in range(layers)
    ]


def test_sparse_detection_loss_equals_per_object_loop():
    g = torch.Generator().manual_seed(5)
    B, Q, D = 2, 6, 4
    gt_boxes = [
        torch.tensor([box(1, 2, yaw=0.5, vx=1.0), box(-4, 3, vy=float("nan"))], dtype=torch.float64),
        torch.tensor([box(0, -6, l=1.0, w=0.5)], dtype=torch.float64),
    ]
    gt_labels = [torch.tensor([2, 0]), torch.tensor([1])]
    layers = _outputs(g, B, Q)
    dn_gt = torch.cat([boxes_to_anchors(gt_boxes[0]), boxes_to_anchors(gt_boxes[0])])[None].repeat(B, 1, 1)
    dn = {
        "layers": _outputs(g, B, D),
        "gt_anchor": dn_gt,
        "labels": torch.tensor([[2, 0, -1, -1], [1, -1, -1, -1]]),
        "valid": torch.tensor([[True, True, True, True], [True, False, True, False]]),
    }
    w = torch.tensor(DEFAULT_BOX_WEIGHTS, dtype=torch.float64)
    out = sparse_detection_loss(layers, gt_boxes, gt_labels, dn=dn, dn_weight=0.7)
    assert set(out) == {f"{t}_{l}" for t in ("cls", "box", "cns", "yns", "dn_cls", "dn_box") for l in (0, 1)} | {"loss"}

    expected = 0.0
    for layer in layers:
        for b in range(B):
            qi, gi = hungarian_match(layer["cls"][b].detach(), layer["anchor"][b].detach(), gt_boxes[b], gt_labels[b])
            onehot = torch.zeros(Q, K, dtype=torch.float64)
            for q, j in zip(qi.tolist(), gi.tolist()):
                onehot[q, gt_labels[b][j]] = 1
                ga = boxes_to_anchors(gt_boxes[b][j])
                pred, qt = layer["anchor"][b, q], layer["quality"][b, q]
                expected = expected + box_l1_loss(pred, ga, w) / 3
                expected = expected + centerness_loss(qt[0:1], pred[None], ga[None]) / 3
                expected = expected + yawness_loss(qt[1:2], pred[None], ga[None]) / 3
            expected = expected + 2.0 * sigmoid_focal_loss(layer["cls"][b], onehot) / 3
    for layer in dn["layers"]:
        for b in range(B):
            for d in range(D):
                if not dn["valid"][b, d]:
                    continue
                onehot = torch.zeros(K, dtype=torch.float64)
                if dn["labels"][b, d] >= 0:
                    onehot[dn["labels"][b, d]] = 1
                    expected = expected + 0.7 * box_l1_loss(layer["anchor"][b, d], dn_gt[b, d], w) / 6
                expected = expected + 0.7 * 2.0 * sigmoid_focal_loss(layer["cls"][b, d], onehot) / 6
    torch.testing.assert_close(out["loss"], expected)
    params = [t for layer in layers + dn["layers"] for t in layer.values()]
    grads = torch.autograd.grad(out["loss"], params, retain_graph=True, allow_unused=True)
    grads_ref = torch.autograd.grad(expected, params, allow_unused=True)
    assert sum(a is not None for a in grads) == len(params) - 2  # the denoising queries' quality has no loss
    for a, r in zip(grads, grads_ref):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r)


def test_perfect_prediction_has_zero_box_loss_and_near_zero_focal():
    gt_boxes = [torch.tensor([box(3, 4, yaw=1.0, vx=2.0), box(-10, 1, l=0.8, w=0.6, h=1.7)])]
    gt_labels = [torch.tensor([1, 2])]
    Q = 5
    anchor = torch.zeros(1, Q, 11)
    anchor[0, 0] = boxes_to_anchors(gt_boxes[0][1])
    anchor[0, 3] = boxes_to_anchors(gt_boxes[0][0])
    anchor[0, [1, 2, 4], X] = 40.0
    cls = torch.full((1, Q, K), -20.0)
    cls[0, 0, 2] = cls[0, 3, 1] = 20.0
    quality = torch.full((1, Q, 2), 20.0)
    out = sparse_detection_loss([{"anchor": anchor, "cls": cls, "quality": quality}], gt_boxes, gt_labels)
    assert out["box_0"].item() == 0.0
    assert 0 <= out["cls_0"].item() < 1e-12
    assert out["cns_0"].item() < 1e-6 and out["yns_0"].item() < 1e-6
    # a wrong class on a matched query is not perfect
    cls[0, 0, 2], cls[0, 0, 0] = -20.0, 20.0
    assert sparse_detection_loss([{"anchor": anchor, "cls": cls, "quality": None}], gt_boxes, gt_labels)["cls_0"] > 1


def test_no_gt_is_handled_and_keeps_every_prediction_in_the_graph():
    g = torch.Generator().manual_seed(6)
    layers = _outputs(g, 2, 4, layers=1, dtype=torch.float32)
    empty = [torch.zeros(0, 9), torch.zeros(0, 9)]
    out = sparse_detection_loss(layers, empty, [torch.zeros(0, dtype=torch.long)] * 2)
    assert out["box_0"].item() == 0 and out["cns_0"].item() == 0 and torch.isfinite(out["loss"])
    # no GT: every logit is pushed down, normalised by max(#GT, 1) = 1
    ref = 2.0 * sigmoid_focal_loss(layers[0]["cls"], torch.zeros(2, 4, K))
    torch.testing.assert_close(out["cls_0"], ref)
    out["loss"].backward()
    assert all(t.grad is not None for t in layers[0].values())  # DDP: the quality branch is still in the graph
    # one sample with GT, one without
    mixed = sparse_detection_loss(
        layers, [torch.tensor([box(0, 0)]), torch.zeros(0, 9)], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    )
    assert mixed["box_0"] > 0


def test_bad_labels_raise():
    layers = _outputs(torch.Generator().manual_seed(7), 1, 3, layers=1)
    with pytest.raises(ValueError, match="num_classes"):
        sparse_detection_loss(layers, [torch.tensor([box(0, 0)], dtype=torch.float64)], [torch.tensor([K])])


def test_one_host_copy_for_the_matching_of_a_whole_step(monkeypatch):
    """scipy solves on the host, so the cost matrices must come over; on a GPU each copy is a device sync, and
    one per decoder layer and sample made about 24 a step for ``dvd``. Every layer's and sample's matrix (and the
    labels' range check) now travel in one ``.cpu()``; nothing else reads a value back (``item``, ``tolist``,
    ``bool``, ``nonzero``: each a sync on a GPU)."""
    g = torch.Generator().manual_seed(8)
    B, Q, layers = 3, 6, 4
    gt_boxes = [torch.tensor([box(1, 2), box(-4, 3, vy=float("nan"))]), torch.zeros(0, 9), torch.tensor([box(0, -6)])]
    gt_labels = [torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    outputs = _outputs(g, B, Q, layers=layers, dtype=torch.float32)
    dn = {
        "layers": _outputs(g, B, 4, layers=layers, dtype=torch.float32),
        "gt_anchor": torch.zeros(B, 4, 11),
        "labels": torch.tensor([[2, 0, -1, -1], [-1, -1, -1, -1], [1, -1, -1, -1]]),
        "valid": torch.tensor([[True] * 4, [False] * 4, [True, False, True, False]]),
    }
    ref = sparse_detection_loss(outputs, gt_boxes, gt_labels, dn=dn)

    reads: dict[str, int] = {}
    for name in ("cpu", "item", "tolist", "__bool__", "nonzero"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            reads[_name] = reads.get(_name, 0) + 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = sparse_detection_loss(outputs, gt_boxes, gt_labels, dn=dn)
    monkeypatch.undo()
    assert reads == {"cpu": 1}, reads
    for k in ref:  # and the same loss as before
        torch.testing.assert_close(out[k], ref[k])
    # the per-matrix path is the batched one's special case
    qi, gi = hungarian_match(outputs[1]["cls"][0].detach(), outputs[1]["anchor"][0].detach(), gt_boxes[0], gt_labels[0])
    cost = matching_cost(outputs[1]["cls"][0].detach(), outputs[1]["anchor"][0].detach(), gt_boxes[0], gt_labels[0])
    (qm, gm), (qe, ge) = hungarian_match_many([cost, cost[:, :0]])
    assert torch.equal(qi, qm) and torch.equal(gi, gm) and len(qe) == len(ge) == 0
