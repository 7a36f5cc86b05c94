"""One-to-one assignment of the sparse head's queries to ground-truth boxes (Sparse4D's ``SparseBox3DTarget``).

The cost of giving GT ``j`` (class ``c_j``) to query ``i`` is

    cls_weight * (focal_pos(p_ic) - focal_neg(p_ic)) + sum_d box_weights[d] * |anchor_id - gt_anchor_jd|

with ``p = sigmoid(logit)``, ``focal_pos(p) = -alpha (1-p)^gamma log(p + eps)`` and
``focal_neg(p) = -(1-alpha) p^gamma log(1 - p + eps)`` (the DETR / Deformable-DETR focal cost), the GT boxes
converted with :func:`~trainer.models.components.sparse.anchors.boxes_to_anchors`. Sparse4Dv3's values:
``cls_weight`` 2.0 and box weights ``0.25 * [2, 2, 2, 0.5, 0.5, 0.5, 0, 0, 0, 0]`` over
``X, Y, Z, sizes, SIN, COS, VX, VY``: only centre and size take part in matching
(:data:`DEFAULT_MATCH_BOX_WEIGHTS`, in the 11-column anchor layout). NaN GT entries (unknown
velocity) cost nothing (Sparse4D's would turn the whole row into its 1e8 fallback).

The cost is computed in float32 at least (bf16 / fp16 logits and anchors are cast up: under autocast bf16
would round a GT centre beyond 16 m to 0.125-0.25 m). The assignment is solved on the host by scipy, so the
cost matrices must come over from the device: :func:`hungarian_match_many` brings every matrix of a training
step (all decoder layers, all samples) in one copy, one device sync per step instead of one per layer and
sample; :func:`hungarian_match` is its one-matrix case.

Shape letters: Q queries, K classes, M GT boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from trainer.models.components.precision import at_least_float32
from trainer.models.components.sparse.anchors import ANCHOR_DIM, boxes_to_anchors

#: 0.25 x [2, 2, 2, 0.5, 0.5, 0.5, 0 (sin), 0 (cos), 0 (vx), 0 (vy)] (Sparse4Dv3), plus 0 for VZ
DEFAULT_MATCH_BOX_WEIGHTS = (0.5, 0.5, 0.5, 0.125, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0)


@torch.no_grad()
def matching_cost(
    cls_logits: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    cls_weight: float = 2.0,
    box_weights: torch.Tensor | Sequence[float] = DEFAULT_MATCH_BOX_WEIGHTS,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """The cost matrix ``(Q, M)`` of the module docstring; ``cls_logits (Q, K)``, ``anchors (Q, 11)``,
    ``gt_boxes (M, 9)``, ``gt_labels (M,)`` in [0, K)."""
    Q, K = cls_logits.shape
    M = len(gt_boxes)
    assert anchors.shape == (Q, ANCHOR_DIM), f"anchors must be (Q={Q}, {ANCHOR_DIM}); got {tuple(anchors.shape)}"
    assert gt_boxes.shape == (M, 9), f"gt_boxes must be (M, 9); got {tuple(gt_boxes.shape)}"
    assert gt_labels.shape == (M,), f"gt_labels must be (M={M},); got {tuple(gt_labels.shape)}"
    cls_logits, anchors = at_least_float32(cls_logits), at_least_float32(anchors)  # bf16 / fp16 under autocast
    w = torch.as_tensor(box_weights, dtype=anchors.dtype, device=anchors.device)
    assert w.shape == (ANCHOR_DIM,), f"box_weights must be ({ANCHOR_DIM},); got {tuple(w.shape)}"
    if M == 0:
        return anchors.new_zeros(Q, 0)
    labels = gt_labels.to(device=cls_logits.device, dtype=torch.long)
    p = cls_logits.sigmoid()[:, labels]  # (Q, M)
    pos = -alpha * (1 - p).pow(gamma) * (p + eps).log()
    neg = -(1 - alpha) * p.pow(gamma) * (1 - p + eps).log()
    gt = boxes_to_anchors(gt_boxes.to(device=anchors.device, dtype=anchors.dtype))  # (M, 11)
    known = ~gt.isnan()
    gt = torch.where(known, gt, torch.zeros_like(gt))
    box = ((anchors[:, None] - gt[None]).abs() * (w * known)[None]).sum(-1)  # (Q, M)
    return cls_weight * (pos - neg) + box


def hungarian_match(
    cls_logits: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, **cost_args: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment (scipy's ``linear_sum_assignment``) of queries to GT boxes.

    ``cls_logits (Q, K)``, ``anchors (Q, 11)``, ``gt_boxes (M, 9)``, ``gt_labels (M,)``; ``cost_args``: the
    keywords of :func:`matching_cost` (``cls_weight``, ``box_weights``, ``alpha``, ``gamma``; their defaults are
    there). Returns ``(query_idx, gt_idx)``, two int64 ``(min(Q, M),)`` tensors on ``cls_logits``' device, sorted
    by query; empty when M = 0. Non-finite costs are replaced by 1e8 (as Sparse4D).
    """
    cost = matching_cost(cls_logits, anchors, gt_boxes, gt_labels, **cost_args)
    return hungarian_match_many([cost])[0]


def host_copy(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """float64 numpy copies of ``tensors`` (any shapes, all on one device), made by *one* device-to-host copy.

    Integers are exact below 2**53 (labels, indices).
    """
    if not tensors:
        return []
    device = tensors[0].device
    for t in tensors:
        assert t.device == device, f"tensors must share one device; got {t.device} and {device}"
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()  # the one copy
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].reshape(tuple(t.shape)))
        offset += t.numel()
    return out


def solve_assignments(costs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """scipy's ``linear_sum_assignment`` of each host cost matrix ``(Q_i, M_i)`` (non-finite costs read as 1e8, as
    Sparse4D): per matrix ``(rows, cols)`` int64 ``(min(Q_i, M_i),)``, sorted by row; empty where a side is 0."""
    out = []
    for c in costs:
        if c.shape[0] == 0 or c.shape[1] == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        rows, cols = linear_sum_assignment(np.where(np.isfinite(c), c, 1e8))
        out.append((rows.astype(np.int64), cols.astype(np.int64)))
    return out


def assignments_to(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device | str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Host index pairs as int64 tensors on ``device``, moved by one host-to-device copy (no device sync)."""
    counts = [len(r) for r, _ in pairs]
    n = sum(counts)
    both = np.concatenate([np.zeros(0, dtype=np.int64)] + [r for r, _ in pairs] + [g for _, g in pairs])
    back = torch.as_tensor(both, dtype=torch.long).to(device, non_blocking=True)
    return list(zip(back[:n].split(counts), back[n:].split(counts)))


def hungarian_match_many(costs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The assignments of many cost matrices ``(Q_i, M_i)`` (:func:`matching_cost`'s), each as :func:`hungarian_match`.

    The matrices travel to the host in one copy (:func:`host_copy`: one device sync, however many layers and
    samples), are solved there one by one (:func:`solve_assignments`), and the index pairs come back in one copy.
    Returns, per matrix, ``(query_idx, gt_idx)`` int64 ``(min(Q_i, M_i),)`` on the matrices' device.
    """
    for c in costs:
        assert c.ndim == 2, f"cost matrices must be (Q, M); got {tuple(c.shape)}"
    if not costs:
        return []
    return assignments_to(solve_assignments(host_copy(costs)), costs[0].device)
