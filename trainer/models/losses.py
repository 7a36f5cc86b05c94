"""The training losses of the detectors, as pure functions: each one's definition, with a reference test.

A model's ``loss`` method (or its LightningModule) sums what its config weights; a weight of 0 skips
a term. Each function here is tested against a brute-force loop or a direct formula
(``tests/unit/test_losses.py``).

- :func:`gaussian_focal_loss`, :func:`masked_l1`: CenterPoint's dense-head losses (heatmaps, regression).
- :func:`depth_onehot`, :func:`depth_loss`: BEVDepth's depth BCE against one-hot LiDAR depth bins.
- :func:`distill_cosine_loss`, :func:`distill_cell_loss`: DualViewDistill's per-cell cosine distillation
  of the BEV map against the cached DINOv2 grid.

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV
grid rows / columns, K objects per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.lift_splat import DepthBins

# ---------------------------------------------------------------------------------------------
# Dense detection (CenterPoint's head)


def gaussian_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_objects: torch.Tensor | float,
    alpha: float = 2.0,
    gamma: float = 4.0,
) -> torch.Tensor:
    """CornerNet/CenterNet's penalty-reduced focal loss (a scalar) of heatmap ``logits`` against Gaussian ``target`` (same shape).

    ``-(sum_pos (1-p)^alpha log p + sum_neg (1-t)^gamma p^alpha log(1-p)) / max(num_objects, 1)``,
    positives where ``target == 1`` (the Gaussian peaks). Log-probabilities come from
    ``logsigmoid``, which is stable without CenterPoint's clamp of p to ``[1e-4, 1 - 1e-4]``.
    """
    assert logits.shape == target.shape, f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
    pos = target == 1
    p = torch.sigmoid(logits)
    pos_term = F.logsigmoid(logits) * (1 - p) ** alpha
    neg_term = F.logsigmoid(-logits) * p**alpha * (1 - target) ** gamma
    total = torch.where(pos, pos_term, neg_term).sum()
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
    probability is clamped.
    """
    B, N, D, h, w = depth_logits.shape
    assert depth_map.shape == (B, N, h, w), f"depth_map must be ({B}, {N}, {h}, {w}); got {tuple(depth_map.shape)}"
    assert D == bins.num, f"depth_logits have {D} bins; dbound gives {bins.num}"
    target, valid = depth_onehot(depth_map.float(), bins)  # (B, N, h, w, D), (B, N, h, w)
    if not valid.any():
        return depth_logits.sum() * 0.0  # keeps the graph (DDP) with a zero gradient
    logp = F.log_softmax(depth_logits.float(), dim=2).permute(0, 1, 3, 4, 2)[valid]  # (n, D)
    log1mp = torch.log1p(-logp.exp().clamp(max=1 - 1e-6))  # log(1 - p), p < 1 keeps it finite
    t = target[valid]  # (n, D)
    bce = -(t * logp + (1 - t) * log1mp).sum()
    return bce / valid.sum().clamp(min=1)


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


def distill_cell_loss(bev: torch.Tensor, proj: nn.Conv2d, target: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """:func:`distill_cosine_loss` of ``proj(bev)``, projecting only the cells with ``count > 0``.

    The 1x1 projection is per cell, so gathering the occupied cells of ``bev (B, C, H, W)`` first and
    projecting those ``(n, C) -> (n, C_dino)`` gives the same loss and gradients for the cost of
    the occupied share of the grid (about a quarter on the synthetic world) instead of all of it.
    """
    assert bev.shape[0] == target.shape[0] and bev.shape[2:] == target.shape[2:], (
        f"bev {tuple(bev.shape)} and the distillation target {tuple(target.shape)} differ in batch or grid"
    )
    assert count.shape == (bev.shape[0], *bev.shape[2:]), f"count must be (B, H, W); got {tuple(count.shape)}"
    mask = count > 0  # (B, H, W)
    if not mask.any():
        return bev.sum() * 0.0 + sum(p.sum() for p in proj.parameters()) * 0.0
    cells = bev.permute(0, 2, 3, 1)[mask]  # (n, C)
    pred = F.linear(cells, proj.weight.flatten(1), proj.bias)  # (n, C_dino)
    tgt = target.permute(0, 2, 3, 1)[mask]  # (n, C_dino)
    return (1.0 - F.cosine_similarity(pred.float(), tgt.float(), dim=1, eps=1e-6)).mean()
