"""The training losses of the detectors, as pure functions: each one's definition, with a reference test.

A model's ``loss`` method (or its LightningModule) sums what its config weights; a weight of 0 skips
a term. Each function here is tested against a brute-force loop or a direct formula
(``tests/unit/test_losses.py``).

- :func:`gaussian_focal_loss`, :func:`masked_l1`: CenterPoint's dense-head losses (heatmaps, regression).
- :func:`depth_onehot`, :func:`depth_loss`: BEVDepth's depth BCE against one-hot LiDAR depth bins.
- :func:`distill_cosine_loss`, :func:`distill_cell_loss`: DualViewDistill's per-cell cosine distillation
  of the BEV map against the cached DINOv2 grid.
- :func:`sigmoid_focal_loss`, :func:`box_l1_loss`, :func:`centerness_loss`, :func:`yawness_loss` and their
  sum over a sparse head's decoder layers after Hungarian matching, :func:`sparse_detection_loss`
  (Sparse4Dv3's; see the section's notes below). Reference tests: ``tests/unit/test_sparse_matching.py``.
- :func:`inner_depth_loss`, :func:`inter_channel_loss`, :func:`inter_keypoint_loss`: TiG-BEV's inner-depth
  supervision and inner-feature BEV distillation (their targets: ``trainer.models.components.tig``).
  Reference tests: ``tests/unit/test_tig.py``.

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV
grid rows / columns, K objects per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.lift_splat import DepthBins
from trainer.models.components.precision import at_least_float32, autocast_off
from trainer.models.components.sparse.anchors import ANCHOR_DIM, CNS, COS, SIN, YNS, X, Y, Z, boxes_to_anchors
from trainer.models.components.sparse.matching import (
    DEFAULT_MATCH_BOX_WEIGHTS,
    assignments_to,
    host_copy,
    matching_cost,
    solve_assignments,
)

# ---------------------------------------------------------------------------------------------
# Dense detection (CenterPoint's head)


def gaussian_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_objects: torch.Tensor | float,
    alpha: float = 2.0,
    gamma: float = 4.0,
    sample_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CornerNet/CenterNet's penalty-reduced focal loss (a scalar) of heatmap ``logits`` against Gaussian ``target`` (same shape).

    ``-(sum_pos (1-p)^alpha log p + sum_neg (1-t)^gamma p^alpha log(1-p)) / max(num_objects, 1)``,
    positives where ``target == 1`` (the Gaussian peaks). Log-probabilities come from
    ``logsigmoid``, which is stable without CenterPoint's clamp of p to ``[1e-4, 1 - 1e-4]``.

    ``sample_mask (B,)`` bool (``logits (B, ...)``): only these samples' cells count; the others (keyframes whose
    boxes are withheld, ``data.box_fraction``) add exactly 0, so an empty target never teaches "no objects".
    """
    assert logits.shape == target.shape, f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
    pos = target == 1
    p = torch.sigmoid(logits)
    pos_term = F.logsigmoid(logits) * (1 - p) ** alpha
    neg_term = F.logsigmoid(-logits) * p**alpha * (1 - target) ** gamma
    per_cell = torch.where(pos, pos_term, neg_term)
    if sample_mask is not None:
        assert sample_mask.shape == logits.shape[:1], f"sample_mask must be (B,); got {tuple(sample_mask.shape)}"
        # a multiply, not an index: the masked samples' cells stay in the graph with a zero gradient
        per_cell = per_cell * sample_mask.to(per_cell.dtype).view(-1, *([1] * (logits.ndim - 1)))
    total = per_cell.sum()
    return -total / torch.clamp(torch.as_tensor(num_objects, dtype=logits.dtype, device=logits.device), min=1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel L1 ``(C,)``: ``sum |pred - target|`` over the entries where ``mask (B, K)``, over ``max(mask.sum(), 1)``.

    ``pred, target (B, K, C)``; entries outside the mask (padding, unknown velocity) contribute
    nothing, NaN or not.
    """
    assert pred.shape == target.shape and pred.shape[:2] == mask.shape, (
        f"pred {tuple(pred.shape)}, target {tuple(target.shape)} must be (B, K, C) and mask {tuple(mask.shape)} (B, K)"
    )
    # Replace masked-out targets before the difference: a NaN there would poison the gradient.
    target = torch.where(mask[..., None], target, pred.detach())
    err = (pred - target).abs() * mask[..., None]
    return err.sum((0, 1)) / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Depth (BEVDepth) and DINOv2 distillation (DualViewDistill)


def depth_onehot(depth_map: torch.Tensor, bins: DepthBins) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot bin targets ``(..., D)`` of a depth map ``(...)`` (metres, 0 = no LiDAR) and its valid mask ``(...)``."""
    k, valid = bins.index(depth_map)
    return F.one_hot(k, bins.num).to(depth_map.dtype) * valid[..., None], valid


def depth_loss(depth_logits: torch.Tensor, depth_map: torch.Tensor, bins: DepthBins) -> torch.Tensor:
    """BEVDepth's depth loss (a scalar): BCE of the softmax depth distribution against one-hot bins, over valid cells.

    ``depth_logits (B, N, D, h, w)``; ``depth_map (B, N, h, w)`` the min LiDAR depth per feature cell
    (0 where none). BEVDepth sums the BCE over bins and divides by the number of cells with a
    target (``max(1, n)``); the same is done here, computed from log-probabilities so no
    probability is clamped. The cells without a target are masked by a product, not indexed away: no
    device sync (``valid.any()``, a boolean index), and every logit stays in the graph (DDP) when none has one.
    """
    B, N, D, h, w = depth_logits.shape
    assert depth_map.shape == (B, N, h, w), f"depth_map must be ({B}, {N}, {h}, {w}); got {tuple(depth_map.shape)}"
    assert D == bins.num, f"depth_logits have {D} bins; dbound gives {bins.num}"
    target, valid = depth_onehot(depth_map.float(), bins)  # (B, N, h, w, D), (B, N, h, w)
    logp = F.log_softmax(depth_logits.float(), dim=2).permute(0, 1, 3, 4, 2)  # (B, N, h, w, D)
    log1mp = torch.log1p(-logp.exp().clamp(max=1 - 1e-6))  # log(1 - p), p < 1 keeps it finite
    bce = -(target * logp + (1 - target) * log1mp).sum(-1)  # (B, N, h, w), finite everywhere
    return (bce * valid).sum() / valid.sum().clamp(min=1)


def distill_cosine_loss(pred: torch.Tensor, target: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """DualViewDistill's per-cell cosine loss (a scalar): mean of ``1 - cos(pred, target)`` over cells with ``count > 0``.

    The definition on whole maps; training computes it with :func:`distill_cell_loss`, which is tested against it.

    ``pred (B, C, H, W)`` the projected BEV map, ``target (B, C, H, W)`` the cached DINOv2 grid,
    ``count (B, H, W)`` its pooled-point counts. Zero (with a graph) when no cell has a target.
    """
    assert pred.shape == target.shape, f"distill pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
    assert count.shape == (pred.shape[0], *pred.shape[2:]), f"count must be (B, H, W); got {tuple(count.shape)}"
    mask = count > 0  # (B, H, W)
    if not mask.any():
        return pred.sum() * 0.0
    cos = F.cosine_similarity(pred.float(), target.float(), dim=1, eps=1e-6)  # (B, H, W)
    return (1.0 - cos)[mask].mean()


def distill_cell_cosine(
    bev: torch.Tensor, proj: nn.Conv2d, target: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos (n,), mask (B, H, W))``: the cosine of ``proj(bev)`` to ``target`` on the n cells with ``count > 0``.

    The 1x1 projection is per cell, so gathering the occupied cells of ``bev (B, C, H, W)`` first and
    projecting those ``(n, C) -> (n, C_dino)`` costs the occupied share of the grid (about a quarter on
    the synthetic world) instead of all of it. ``cos[i]`` is the cell ``mask.nonzero()[i]``.
    """
    assert bev.shape[0] == target.shape[0] and bev.shape[2:] == target.shape[2:], (
        f"bev {tuple(bev.shape)} and the distillation target {tuple(target.shape)} differ in batch or grid"
    )
    assert count.shape == (bev.shape[0], *bev.shape[2:]), f"count must be (B, H, W); got {tuple(count.shape)}"
    mask = count > 0  # (B, H, W)
    cells = bev.permute(0, 2, 3, 1)[mask]  # (n, C)
    pred = F.linear(cells, proj.weight.flatten(1), proj.bias)  # (n, C_dino)
    tgt = target.permute(0, 2, 3, 1)[mask]  # (n, C_dino)
    return F.cosine_similarity(pred.float(), tgt.float(), dim=1, eps=1e-6), mask


def distill_cell_loss(
    bev: torch.Tensor,
    proj: nn.Conv2d,
    target: torch.Tensor,
    count: torch.Tensor,
    objects: torch.Tensor | None = None,
    object_weight: float | None = None,
) -> torch.Tensor:
    """:func:`distill_cosine_loss` of ``proj(bev)`` by :func:`distill_cell_cosine` (same loss and gradients).

    With ``object_weight`` (and ``objects (B, H, W)`` bool): :func:`object_weighted_distill_loss` instead, the
    object cells and the other occupied cells averaged apart and mixed. ``None``: the uniform mean (the paper's).
    """
    cos, mask = distill_cell_cosine(bev, proj, target, count)
    if not mask.any():
        return bev.sum() * 0.0 + sum(p.sum() for p in proj.parameters()) * 0.0
    if object_weight is None:
        return (1.0 - cos).mean()
    assert objects is not None and objects.shape == mask.shape, (
        f"an object-weighted distillation needs objects (B, H, W) as count; got "
        f"{None if objects is None else tuple(objects.shape)}"
    )
    return region_mixed_mean(1.0 - cos, objects.to(mask.device)[mask], object_weight)


def region_mixed_mean(loss: torch.Tensor, is_object: torch.Tensor, object_weight: float) -> torch.Tensor:
    """``w * mean(loss[is_object]) + (1 - w) * mean(loss[~is_object])`` (a scalar) of per-cell ``loss (n,)``.

    ``is_object (n,)`` bool, ``w = object_weight`` in ``[0, 1]``. A region without cells gives its weight to the other
    (the mean of the cells there are); with neither region weighted and present the result is an exact 0 (with a
    graph). Counts stay on the device (no host sync).
    """
    assert loss.shape == is_object.shape and loss.ndim == 1, (
        f"loss {tuple(loss.shape)} and is_object {tuple(is_object.shape)} must both be (n,)"
    )
    if not 0.0 <= float(object_weight) <= 1.0:
        raise ValueError(f"model.loss.distill_object_weight must lie in [0, 1] (or be null); got {object_weight}")
    obj = is_object.to(loss.dtype)
    n_obj, n_bg = obj.sum(), (1 - obj).sum()
    mean_obj = (loss * obj).sum() / n_obj.clamp(min=1)
    mean_bg = (loss * (1 - obj)).sum() / n_bg.clamp(min=1)
    w_obj = float(object_weight) * (n_obj > 0).to(loss.dtype)
    w_bg = (1.0 - float(object_weight)) * (n_bg > 0).to(loss.dtype)
    return (w_obj * mean_obj + w_bg * mean_bg) / (w_obj + w_bg).clamp(min=1e-12)


def distinct_cells(target: torch.Tensor, count: torch.Tensor, max_cos: float) -> torch.Tensor:
    """``(B, H, W)`` bool: occupied cells whose target is *distinct* from its keyframe's dominant surface, found
    without boxes.

    Per sample, ``m`` is the mean of the unit target vectors over its occupied cells (``count > 0``), normalised; a
    cell is distinct where ``cos(target, m) < max_cos``. On a driving scene ``m`` is the road's direction (most
    occupied cells are road), so the distinct cells are the objects and what stands beside the road; unoccupied cells
    are never distinct. The object-weighted distillation uses them in place of GT footprints where boxes are scarce
    (``model.loss.distill_distinct_cos``). ``target (B, C, H, W)``, ``count (B, H, W)``.
    """
    assert count.shape == (target.shape[0], *target.shape[2:]), (
        f"count {tuple(count.shape)} must be (B, H, W) of target {tuple(target.shape)}"
    )
    occupied = count > 0  # (B, H, W)
    unit = F.normalize(target.float(), dim=1, eps=1e-6)  # (B, C, H, W)
    m = (unit * occupied[:, None]).sum((2, 3))  # (B, C)
    m = F.normalize(m, dim=1, eps=1e-6)
    cos = torch.einsum("bchw,bc->bhw", unit, m)
    return occupied & (cos < float(max_cos))


def object_weighted_distill_loss(
    pred: torch.Tensor, target: torch.Tensor, count: torch.Tensor, objects: torch.Tensor, object_weight: float
) -> torch.Tensor:
    """The distillation loss averaged over object cells and over the other occupied cells apart, then mixed (a scalar).

    The definition on whole maps (training: :func:`distill_cell_loss` with ``objects``, tested against it): the
    per-cell ``1 - cos(pred, target)`` of :func:`distill_cosine_loss` on cells with ``count > 0``, split by
    ``objects (B, H, W)`` bool (GT footprints: :func:`~trainer.metrics_distill.object_cells`) and mixed by
    :func:`region_mixed_mean` with weight ``object_weight`` on the objects. On a driving scene a few percent of the
    occupied cells are objects; the uniform mean (the paper's) lets road and buildings set the loss.
    """
    assert pred.shape == target.shape, f"distill pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
    assert count.shape == objects.shape == (pred.shape[0], *pred.shape[2:]), (
        f"count {tuple(count.shape)} and objects {tuple(objects.shape)} must be (B, H, W)"
    )
    mask = count > 0  # (B, H, W)
    cos = F.cosine_similarity(pred.float(), target.float(), dim=1, eps=1e-6)  # (B, H, W)
    return region_mixed_mean((1.0 - cos)[mask], objects[mask], object_weight) + pred.float().sum() * 0.0


def camera_bev_losses(
    outputs: dict,
    bins: DepthBins,
    distill_proj: nn.Conv2d | None,
    depth_map: torch.Tensor | None = None,
    dino_feat: torch.Tensor | None = None,
    dino_count: torch.Tensor | None = None,
    *,
    depth_weight: float,
    distill_weight: float,
    distill_objects: torch.Tensor | None = None,
    distill_object_weight: float | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | float]:
    """The camera BEV network's own losses, shared by every camera detector: ``(parts, weighted sum)``.

    The weights have no default here: their one source is the config (``model.loss``), which the
    LightningModule passes on.

    ``parts``: ``depth`` (:func:`depth_loss` of ``outputs["depth_logits"]``, unweighted; only with
    ``depth_map (B, N, h, w)`` and ``depth_weight > 0``) and ``distill`` (:func:`distill_cell_loss` of
    ``outputs["bev"]`` through ``distill_proj``, unweighted; only with a projection, ``dino_feat
    (B, C, H, W)``, ``dino_count (B, H, W)`` and ``distill_weight > 0``). The sum is 0.0 when neither runs.
    A store whose feature channels differ from the projection's is refused, naming the config key.
    ``distill_object_weight`` (with ``distill_objects (B, H, W)`` bool): the object-weighted distillation
    (:func:`object_weighted_distill_loss`); ``None``: the uniform mean.
    """
    parts: dict[str, torch.Tensor] = {}
    total: torch.Tensor | float = 0.0
    if depth_map is not None and depth_weight > 0:
        parts["depth"] = depth_loss(outputs["depth_logits"], depth_map, bins)
        total = total + depth_weight * parts["depth"]
    if distill_proj is not None and dino_feat is not None and distill_weight > 0:
        assert dino_count is not None, "the distillation loss needs dino_count with dino_feat"
        if dino_feat.shape[1] != distill_proj.out_channels:
            raise ValueError(
                f"the store's dino/feat has {dino_feat.shape[1]} channels; the model projects to "
                f"{distill_proj.out_channels}: set model.detector.distill_channels={dino_feat.shape[1]}"
            )
        parts["distill"] = distill_cell_loss(
            outputs["bev"], distill_proj, dino_feat, dino_count, distill_objects, distill_object_weight
        )
        total = total + distill_weight * parts["distill"]
    return parts, total


# ---------------------------------------------------------------------------------------------
# Sparse query head (Sparse4Dv3): matched focal, L1 and quality losses
#
# Losses of the sparse query head (Sparse4Dv3's), as pure functions.
#
# Each per-element loss takes ``reduction`` in ``{"none", "sum", "mean"}`` and is checked against a
# brute-force loop in ``tests/unit/test_sparse_matching.py``. :func:`sparse_detection_loss` applies
# them to every decoder layer of :class:`~trainer.models.components.sparse.head.SparseHead`'s output.
#
# What Sparse4Dv3 does, and what is kept (``projects/mmdet3d_plugin/models/detection3d/losses.py``,
# ``sparse4d_head.py``, config ``sparse4dv3_temporal_r50_1x8_bs6_256x704.py``):
#
# - classification: sigmoid focal loss (alpha 0.25, gamma 2) over every query and class, weight 2.0;
# - box: L1 on the anchor columns of matched queries, weights ``0.25 * [2, 2, 2, 1 x 7]`` over
#   ``X, Y, Z, sizes, SIN, COS, VX, VY`` (``VZ`` has no ground truth: weight 0); GT entries that are
#   NaN (unknown velocity) carry weight 0;
# - centerness: BCE-with-logits of the centerness logit against ``exp(-||xyz_pred - xyz_gt||)``;
# - yawness: Sparse4Dv3 does *not* regress the cosine similarity: its target is the binary
#   ``cos_sim((sin, cos)_pred, (sin, cos)_gt) > 0`` and its loss mmdet's ``GaussianFocalLoss`` on the
#   sigmoid (alpha 2, gamma 4), which for a binary target is ``-(1-p)^2 log p`` (t = 1) and
#   ``-p^2 log(1-p)`` (t = 0). Kept as is.
# - every term is a sum divided by the number of matched queries (the number of GT when Q >= M),
#   clamped to >= 1; the denoising terms by the number of valid denoising queries (positives and
#   negatives), as Sparse4D. Pass ``avg_factor`` to use a count all-reduced over DDP ranks.
#
# Departures: quality targets are detached (Sparse4D's centerness target ``exp(-||Δ||)`` is built from
# the prediction and, through ``binary_cross_entropy_with_logits``'s target gradient, back-propagates
# into the box); masked terms are multiplied by zero instead of being indexed away, so every parameter
# stays in the graph (DDP); no class-wise box weights (Sparse4D's traffic-cone row) and no yaw
# reversal for barriers (``cls_allow_reverse``).
#
# Precision: under bf16 / fp16 autocast the GT boxes, their anchors, the matching costs and every loss term
# are float32 (predictions are cast up where they meet them): bf16 would round a GT centre beyond 16 m to
# 0.125-0.25 m in matching and in the L1 targets. Host syncs: the cost matrices of every layer and sample
# (and the GT labels' range check) come to the host in one copy per step (``hungarian_match_many``).
#
# Shape letters: B batch, Q queries, K classes, M GT boxes of one sample, P matched pairs, D denoising
# queries (all groups), L decoder layers.

#: Sparse4Dv3's L1 weights (0.25 x reg_weights [2, 2, 2, 1, ...]) in the anchor layout; VZ has no GT.
DEFAULT_BOX_WEIGHTS = (0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.0)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean'; got {reduction!r}")


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets_onehot: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """RetinaNet's sigmoid focal loss of ``logits (..., K)`` against ``targets_onehot (..., K)`` in [0, 1].

    ``BCE(x, t) * (alpha t + (1 - alpha)(1 - t)) * (p (1 - t) + (1 - p) t) ** gamma`` with ``p = sigmoid(x)``
    (mmdet's ``py_sigmoid_focal_loss``); ``alpha < 0`` disables the class balance.
    """
    assert logits.shape == targets_onehot.shape, (
        f"logits {tuple(logits.shape)} and targets_onehot {tuple(targets_onehot.shape)} must match"
    )
    t = targets_onehot.to(logits.dtype)
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pt = p * (1 - t) + (1 - p) * t  # the probability of the wrong answer
    loss = bce * pt.pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return _reduce(loss, reduction)


def box_l1_loss(
    pred_anchor: torch.Tensor, gt_anchor: torch.Tensor, weights: torch.Tensor | Sequence[float], reduction: str = "sum"
) -> torch.Tensor:
    """Weighted L1 ``weights * |pred - gt|`` of anchors ``(..., 11)``; NaN GT entries (unknown velocity) weigh 0.

    ``weights (11,)`` per anchor column. ``reduction="none"`` gives ``(..., 11)``.
    """
    assert pred_anchor.shape == gt_anchor.shape and pred_anchor.shape[-1] == ANCHOR_DIM, (
        f"pred_anchor {tuple(pred_anchor.shape)} and gt_anchor {tuple(gt_anchor.shape)} must be the same (..., 11)"
    )
    w = torch.as_tensor(weights, dtype=pred_anchor.dtype, device=pred_anchor.device)
    assert w.shape == (ANCHOR_DIM,), f"weights must be ({ANCHOR_DIM},); got {tuple(w.shape)}"
    known = ~gt_anchor.isnan()
    gt = torch.where(known, gt_anchor, torch.zeros_like(gt_anchor))
    loss = (pred_anchor - gt).abs() * w * known
    return _reduce(loss, reduction)


def centerness_targets(pred_anchor: torch.Tensor, gt_anchor: torch.Tensor) -> torch.Tensor:
    """``exp(-||xyz_pred - xyz_gt||)`` ``(...)`` of anchors ``(..., 11)``, detached (a label, not a path)."""
    d = (pred_anchor[..., [X, Y, Z]] - gt_anchor[..., [X, Y, Z]]).norm(dim=-1)
    return torch.exp(-d).detach()


def yawness_targets(pred_anchor: torch.Tensor, gt_anchor: torch.Tensor) -> torch.Tensor:
    """``1[cos_sim((sin, cos)_pred, (sin, cos)_gt) > 0]`` ``(...)`` as float (Sparse4Dv3's yawness label)."""
    cos = F.cosine_similarity(pred_anchor[..., [SIN, COS]], gt_anchor[..., [SIN, COS]], dim=-1)
    return (cos > 0).to(pred_anchor.dtype).detach()


def centerness_loss(
    cns_logits: torch.Tensor, pred_anchor: torch.Tensor, gt_anchor: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """BCE-with-logits of ``cns_logits (P,)`` against :func:`centerness_targets` of anchors ``(P, 11)``."""
    assert cns_logits.shape == pred_anchor.shape[:-1] == gt_anchor.shape[:-1], (
        f"cns_logits {tuple(cns_logits.shape)} must be (P,) for anchors {tuple(pred_anchor.shape)}"
    )
    target = centerness_targets(pred_anchor, gt_anchor)
    return _reduce(F.binary_cross_entropy_with_logits(cns_logits, target, reduction="none"), reduction)


def yawness_loss(
    yns_logits: torch.Tensor,
    pred_anchor: torch.Tensor,
    gt_anchor: torch.Tensor,
    alpha: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Sparse4Dv3's yawness loss ``(P,)``: Gaussian focal loss of ``sigmoid(yns_logits)`` against :func:`yawness_targets`.

    For a binary target t: ``-t (1-p)^alpha log p - (1-t) p^alpha log(1-p)`` (log-sigmoid for stability;
    mmdet's version adds 1e-12 inside the logs).
    """
    assert yns_logits.shape == pred_anchor.shape[:-1] == gt_anchor.shape[:-1], (
        f"yns_logits {tuple(yns_logits.shape)} must be (P,) for anchors {tuple(pred_anchor.shape)}"
    )
    t = yawness_targets(pred_anchor, gt_anchor)
    p = yns_logits.sigmoid()
    pos = -F.logsigmoid(yns_logits) * (1 - p).pow(alpha)
    neg = -F.logsigmoid(-yns_logits) * p.pow(alpha)
    return _reduce(t * pos + (1 - t) * neg, reduction)


def _check_gt(gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], B: int) -> None:
    """Shapes only (no device sync); the labels' range is checked on the host copy of :func:`_match_all`."""
    assert len(gt_boxes) == len(gt_labels) == B, (
        f"gt_boxes and gt_labels must be lists of B={B} tensors; got {len(gt_boxes)}, {len(gt_labels)}"
    )
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        assert boxes.ndim == 2 and boxes.shape[1] == 9 and labels.shape == (len(boxes),), (
            f"sample {b}: gt_boxes must be (M, 9) and gt_labels (M,); got {tuple(boxes.shape)}, {tuple(labels.shape)}"
        )


def _match_all(
    layer_outputs: Sequence[dict],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    K: int,
    **cost_kwargs,
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer, per sample ``(query_idx, gt_idx)`` of the Hungarian matching, with one host copy for the step.

    Every layer's and sample's cost matrix (:func:`matching_cost`) and the GT labels travel to the host together
    (:func:`host_copy`), so the labels' range (``[0, K)``) is checked there without a sync of its own.
    """
    B = len(gt_boxes)
    costs = [
        # labels clamped for the cost's gather only: out-of-range ones are refused below, on the host copy
        matching_cost(
            layer["cls"][b].detach(),
            layer["anchor"][b].detach(),
            gt_boxes[b],
            gt_labels[b].clamp(0, K - 1),
            **cost_kwargs,
        )
        for layer in layer_outputs
        for b in range(B)
    ]
    device = layer_outputs[0]["cls"].device
    labels = torch.cat([torch.zeros(0, dtype=torch.long, device=device)] + [g.reshape(-1) for g in gt_labels])
    *host_costs, host_labels = host_copy([*costs, labels])
    if len(host_labels) and (host_labels.min() < 0 or host_labels.max() >= K):
        b = next(i for i, g in enumerate(gt_labels) if len(g) and (g.min() < 0 or g.max() >= K))
        raise ValueError(f"sample {b}: gt_labels must lie in [0, {K}) (num_classes); got {gt_labels[b].tolist()}")
    pairs = assignments_to(solve_assignments(host_costs), device)
    return [pairs[l * B : (l + 1) * B] for l in range(len(layer_outputs))]


def sparse_detection_loss(
    layer_outputs: Sequence[dict],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    dn: dict | None = None,
    *,
    cls_weight: float = 2.0,
    box_weights: torch.Tensor | Sequence[float] = DEFAULT_BOX_WEIGHTS,
    centerness_weight: float = 1.0,
    yawness_weight: float = 1.0,
    dn_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    match_cls_weight: float = 2.0,
    match_box_weights: torch.Tensor | Sequence[float] = DEFAULT_MATCH_BOX_WEIGHTS,
    cls_threshold_to_reg: float | None = None,
    avg_factor: float | None = None,
    sample_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sparse4Dv3's detection loss summed over every decoder layer, plus the denoising groups' loss.

    Args:
        layer_outputs: per layer ``{"anchor": (B, Q, 11), "cls": (B, Q, K), "quality": (B, Q, 2) or None}``
            (``SparseHead.forward(...)["layers"]``).
        gt_boxes: B tensors ``(M_b, 9)`` in the box layout of ``bevlabels.geometry``; ``gt_labels``: B ``(M_b,)``.
        dn: ``SparseHead.forward(...)["dn"]``: ``{"layers": [...] (B, D, ...), "gt_anchor": (B, D, 11),
            "labels": (B, D) (-1: background), "valid": (B, D) bool}``, or None.
        cls_threshold_to_reg: Sparse4Dv3 uses 0.05: box and quality terms only for matched queries
            whose best class probability exceeds it (None: all matched queries).
        avg_factor: the normaliser of the matched terms (default: the number of matched queries, >= 1).
        sample_mask: ``(B,)`` bool, the samples whose boxes are known (``data.box_fraction``; None: all). The others
            are not matched and their queries get no classification target at all (not "all background"): their
            every term, denoising included, is multiplied by 0, so they add exactly 0 and stay in the graph (DDP).

    Returns ``{"cls_l", "box_l", "cns_l", "yns_l", "dn_cls_l", "dn_box_l": weighted scalar terms per layer l,
    "loss": their sum}``. Each layer is matched on its own (Hungarian, on detached predictions; every layer's
    and sample's cost matrix comes to the host in one copy, :func:`_match_all`); the denoising queries have a
    known assignment. GT, matching and every term are float32 at least (module notes).
    """
    assert len(layer_outputs) > 0, "layer_outputs is empty: the decoder's operation_order has no 'refine'"
    B, Q, K = layer_outputs[0]["cls"].shape
    _check_gt(gt_boxes, gt_labels, B)
    device = layer_outputs[0]["cls"].device
    box_dtype = torch.promote_types(layer_outputs[0]["anchor"].dtype, torch.float32)  # never bf16 / fp16
    gt_boxes = [g.to(device=device, dtype=box_dtype) for g in gt_boxes]
    gt_labels = [g.to(device=device, dtype=torch.long) for g in gt_labels]
    if sample_mask is not None:
        assert sample_mask.shape == (B,), f"sample_mask must be (B={B},); got {tuple(sample_mask.shape)}"
        keep_sample = sample_mask.to(device=device, dtype=torch.bool)
        # an unlabelled sample is matched to nothing (its GT list, if any, is not read)
        labelled = keep_sample.tolist()  # B booleans: one small host copy
        gt_boxes = [g if on else g[:0] for g, on in zip(gt_boxes, labelled)]
        gt_labels = [g if on else g[:0] for g, on in zip(gt_labels, labelled)]
        sample_w = keep_sample.to(box_dtype)  # (B,)
    else:
        sample_w = None
    gt_anchors = [boxes_to_anchors(g) for g in gt_boxes]  # B x (M_b, 11)
    num_matched = sum(min(Q, len(g)) for g in gt_boxes)
    norm = float(avg_factor) if avg_factor is not None else float(max(num_matched, 1))
    for l, layer in enumerate(layer_outputs):
        assert layer["cls"].shape == (B, Q, K) and layer["anchor"].shape == (B, Q, ANCHOR_DIM), (
            f"layer {l}: cls {tuple(layer['cls'].shape)} and anchor {tuple(layer['anchor'].shape)} must be "
            "(B, Q, K), (B, Q, 11)"
        )
    matches = _match_all(
        layer_outputs,
        gt_boxes,
        gt_labels,
        K,
        cls_weight=match_cls_weight,
        box_weights=match_box_weights,
        alpha=alpha,
        gamma=gamma,
    )

    out: dict[str, torch.Tensor] = {}
    for l, layer in enumerate(layer_outputs):
        # the predictions meet the GT in float32 at least (bf16 / fp16 under autocast)
        cls, anchor = at_least_float32(layer["cls"]), at_least_float32(layer["anchor"])
        quality = layer.get("quality")
        b_idx, q_idx, g_anchor, g_label = [], [], [], []
        for b, (qi, gi) in enumerate(matches[l]):
            b_idx.append(torch.full_like(qi, b))
            q_idx.append(qi)
            g_anchor.append(gt_anchors[b][gi])
            g_label.append(gt_labels[b][gi])
        b_idx, q_idx = torch.cat(b_idx), torch.cat(q_idx)  # (P,)
        g_anchor, g_label = torch.cat(g_anchor), torch.cat(g_label)  # (P, 11), (P,)

        target = torch.zeros_like(cls)
        target[b_idx, q_idx, g_label] = 1.0
        focal = sigmoid_focal_loss(cls, target, alpha, gamma, "none")  # (B, Q, K)
        if sample_w is not None:
            focal = focal * sample_w[:, None, None]
        out[f"cls_{l}"] = cls_weight * focal.sum() / norm

        pred = anchor[b_idx, q_idx]  # (P, 11)
        keep = torch.ones_like(g_label, dtype=cls.dtype)
        if cls_threshold_to_reg is not None:
            keep = (cls[b_idx, q_idx].detach().sigmoid().amax(-1) > cls_threshold_to_reg).to(cls.dtype)
        box = box_l1_loss(pred, g_anchor, box_weights, "none").sum(-1)  # (P,)
        out[f"box_{l}"] = (box * keep).sum() / norm
        if quality is not None:
            qt = at_least_float32(quality[b_idx, q_idx])  # (P, 2)
            cns = centerness_loss(qt[:, CNS], pred, g_anchor, "none")
            yns = yawness_loss(qt[:, YNS], pred, g_anchor, reduction="none")
            out[f"cns_{l}"] = centerness_weight * (cns * keep).sum() / norm
            out[f"yns_{l}"] = yawness_weight * (yns * keep).sum() / norm

    if dn is not None:
        if sample_w is not None:
            dn = {**dn, "valid": dn["valid"] & keep_sample[:, None]}
        out.update(_denoising_loss(dn, cls_weight, box_weights, dn_weight, alpha, gamma))
    out["loss"] = sum(out.values())
    return out


def _denoising_loss(
    dn: dict, cls_weight: float, box_weights, dn_weight: float, alpha: float, gamma: float
) -> dict[str, torch.Tensor]:
    """Focal + L1 of the denoising queries against their known GT (Sparse4D: no quality terms for them)."""
    gt_anchor, labels, valid = dn["gt_anchor"], dn["labels"], dn["valid"]
    B, D = labels.shape
    assert gt_anchor.shape == (B, D, ANCHOR_DIM) and valid.shape == (B, D), (
        f"dn: gt_anchor {tuple(gt_anchor.shape)}, labels {tuple(labels.shape)}, valid {tuple(valid.shape)} "
        "must be (B, D, 11), (B, D), (B, D)"
    )
    pos = valid & (labels >= 0)  # (B, D)
    gt_anchor = at_least_float32(gt_anchor)
    norm = valid.sum().clamp(min=1).to(gt_anchor.dtype)
    out = {}
    for l, layer in enumerate(dn["layers"]):
        cls, anchor = at_least_float32(layer["cls"]), at_least_float32(layer["anchor"])
        assert cls.shape[:2] == (B, D), f"dn layer {l}: cls {tuple(cls.shape)} must be (B={B}, D={D}, K)"
        # one-hot of the positives (a mask, not nonzero(): no device sync)
        target = F.one_hot(labels.clamp(min=0), cls.shape[-1]).to(cls.dtype) * pos[..., None]
        focal = sigmoid_focal_loss(cls, target, alpha, gamma, "none").sum(-1)  # (B, D)
        out[f"dn_cls_{l}"] = dn_weight * cls_weight * (focal * valid).sum() / norm
        box = box_l1_loss(anchor, gt_anchor, box_weights, "none").sum(-1)  # (B, D)
        out[f"dn_box_{l}"] = dn_weight * (box * pos).sum() / norm
    return out


# ---------------------------------------------------------------------------------------------
# TiG-BEV: inner-depth supervision (its Eqs. 1-4) and inner-feature BEV distillation (Eqs. 5-9)
#
# The targets (which cells belong to which object, the keypoints, the sampled features) are built by
# trainer.models.components.tig; the functions here take them flat. Reference tests:
# tests/unit/test_tig.py (brute-force per-object loops).
#
# Normalisation, chosen here (the paper writes Gram matrices and an L2 norm without scale):
# - inner depth: per object and camera, the mean squared error of the relative depths over its cells,
#   then the mean over the objects with at least two cells (one cell has no relative depth). Per-object
#   means keep a near car's hundreds of cells from drowning a far pedestrian's few.
# - inner feature: cosine similarities, not raw products. The camera BEV map and the LiDAR teacher's
#   differ in scale by orders of magnitude (the teacher's post-ReLU neck features are unbounded), and a
#   raw Gram matrix grows with |f|^2, so the raw loss would be set by the teacher's scale and
#   channel count. With both sides' features L2-normalised (each channel over the N keypoints for the
#   C x C inter-channel matrix, each keypoint over the C channels for the N x N inter-keypoint matrix),
#   every entry lies in [-1, 1]; the loss is the mean squared entry difference, averaged over objects.


def inner_depth_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    group: torch.Tensor,
    ref_score: torch.Tensor | None = None,
    detach_reference: bool = True,
) -> torch.Tensor:
    """TiG-BEV's inner-depth loss (a scalar) over E cells grouped into objects.

    Args:
        pred: ``(E,)`` predicted continuous depth of each cell (the expectation over the depth bins, Eq. 1).
        gt: ``(E,)`` its LiDAR depth.
        group: ``(E,)`` int64, the object (and camera) each cell belongs to (any ids).
        ref_score: ``(E,)`` where given, each group's reference is its cell of least score (an
            "all-to-certain" reference, e.g. the distance to a projected centre); None: the cell of least
            ``|gt - pred|`` (Eq. 2, "all-to-adaptive"). The choice is not differentiated; ties go to the
            first cell.
        detach_reference: True (default): the reference's predicted depth is a constant of the loss, so each
            cell is pulled towards ``gt + (pred_ref - gt_ref)`` and the reference itself is not moved by it, as
            the authors' code does (``ADLab3Ds/TiG-BEV``, ``get_inner_depth_loss``; the paper's Eqs. 3-4 are
            silent). False: the reference's value is differentiated too, and carries minus the sum of its
            group's residual gradients (measured to flatten the depth distributions, ``results/bench_tig_cpu.md``).

    Per group: relative depths ``pred - pred[ref]`` and ``gt - gt[ref]`` (Eq. 3), their mean squared
    difference over the group's cells (Eq. 4's L2); the mean over groups of >= 2 cells. 0 (with a graph)
    when there are none.
    """
    assert pred.ndim == 1 and pred.shape == gt.shape == group.shape, (
        f"pred, gt and group must be (E,); got {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(group.shape)}"
    )
    assert ref_score is None or ref_score.shape == pred.shape, f"ref_score must be (E,); got {tuple(ref_score.shape)}"
    if pred.numel() == 0:
        return pred.sum() * 0.0
    gt = gt.to(pred.dtype)
    score = (gt - pred).abs() if ref_score is None else ref_score.to(pred.dtype)
    score = score.detach()
    _, inv, counts = torch.unique(group, return_inverse=True, return_counts=True)
    G, E = len(counts), len(pred)
    best = score.new_full((G,), float("inf")).scatter_reduce(0, inv, score, reduce="amin")
    is_best = score == best[inv]
    idx = torch.arange(E, device=pred.device)
    ref = torch.full((G,), E, dtype=torch.long, device=pred.device)
    ref = ref.scatter_reduce(0, inv[is_best], idx[is_best], reduce="amin")  # the first cell of least score
    ref_pred = pred[ref].detach() if detach_reference else pred[ref]
    r_pred = pred - ref_pred[inv]
    r_gt = gt - gt[ref][inv]
    per_group = pred.new_zeros(G).index_add(0, inv, (r_pred - r_gt).square()) / counts.to(pred.dtype)
    keep = counts >= 2
    if not keep.any():
        return pred.sum() * 0.0
    return per_group[keep].mean()


def _similarity_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over objects of the mean squared entry difference of two ``(M, X, X)`` similarity matrices."""
    if a.shape[0] == 0:
        return a.sum() * 0.0
    return (a - b).square().flatten(1).mean(1).mean()


def inter_channel_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """TiG-BEV's inter-channel distillation (Eqs. 5-6): ``(M, N, C)`` keypoint features of M objects each.

    ``A = f_hat^T f_hat (C x C)`` per object with each channel's column ``f[:, c]`` L2-normalised over the
    N keypoints (the cosine similarity between channels); the loss is the mean over objects of the mean
    squared difference between the student's and the teacher's ``A`` (module notes). The teacher side
    carries no gradient.
    """
    assert student.ndim == 3 and student.shape == teacher.shape, (
        f"student and teacher keypoint features must be the same (M, N, C); got {tuple(student.shape)}, "
        f"{tuple(teacher.shape)}"
    )
    dt = torch.promote_types(student.dtype, torch.float32)  # bf16 / fp16 features: the products in float32
    s = F.normalize(student.to(dt), dim=1, eps=eps)  # (M, N, C), unit columns
    t = F.normalize(teacher.detach().to(dt), dim=1, eps=eps)
    with autocast_off(s):  # autocast would run the products in bf16 / fp16 again
        return _similarity_loss(s.transpose(1, 2) @ s, t.transpose(1, 2) @ t)


def inter_keypoint_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """TiG-BEV's inter-keypoint distillation (Eqs. 7-8): ``(M, N, C)`` keypoint features of M objects each.

    ``B = f_hat f_hat^T (N x N)`` per object with each keypoint's feature L2-normalised over the C
    channels (the cosine similarity between keypoints); the loss as :func:`inter_channel_loss`.
    """
    assert student.ndim == 3 and student.shape[:2] == teacher.shape[:2], (
        f"student and teacher keypoint features must be (M, N, C) with the same M, N; got "
        f"{tuple(student.shape)}, {tuple(teacher.shape)}"
    )
    dt = torch.promote_types(student.dtype, torch.float32)
    s = F.normalize(student.to(dt), dim=2, eps=eps)  # (M, N, C), unit rows
    t = F.normalize(teacher.detach().to(dt), dim=2, eps=eps)
    with autocast_off(s):
        return _similarity_loss(s @ s.transpose(1, 2), t @ t.transpose(1, 2))
