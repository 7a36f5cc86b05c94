"""Denoising queries of the sparse head in training (Sparse4Dv3's ``SparseBox3DTarget.get_dn_anchors``, with a
fixed assignment): noisy copies of the GT anchors, and the attention mask that keeps them apart.

Shape letters: B batch, Q normal queries, M GT boxes, G denoising groups, D denoising queries (``G * 2 * M_max``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.models.components.sparse.anchors import ANCHOR_DIM, boxes_to_anchors

#: Sparse4Dv3's denoising noise (dn_noise_scale [2.0] * 3 + [0.5] * 7) in the anchor layout; VZ has no GT
DEFAULT_DN_NOISE_SCALE = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0)


def make_denoising_queries(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_groups: int,
    noise_scale: torch.Tensor | Sequence[float] = DEFAULT_DN_NOISE_SCALE,
    max_gt: int = 32,
    generator: torch.Generator | None = None,
) -> dict | None:
    """Noisy copies of the GT anchors, ``num_groups`` groups of ``2 * M_max`` (None when no sample has GT).

    ``gt_boxes``: B tensors ``(M_b, 9)``; ``gt_labels``: B ``(M_b,)``; only the first ``max_gt`` of each
    sample are used; ``M_max = max_b min(M_b, max_gt)``. In group g, query ``g * 2 M_max + j`` is a positive
    copy of GT j (noise ``U(-1, 1) * noise_scale`` per anchor column) and ``g * 2 M_max + M_max + j`` a
    negative one (noise ``+-U(1, 2) * noise_scale``, the sign drawn per column) whose target is background;
    ``j >= M_b`` are padding (``valid`` False). The noise is added in anchor space to the GT anchors, an
    unknown (NaN) velocity read as 0. Sparse4D re-assigns each group's 2M noisy anchors to the M GT by a
    Hungarian match on L1; here the assignment is the known one (DN-DETR's).

    Returns ``{"anchor": (B, D, 11), "gt_anchor": (B, D, 11) (NaN kept where the GT velocity is unknown),
    "labels": (B, D) long (-1: background or padding), "valid": (B, D) bool, "max_gt": M_max}``.
    """
    B = len(gt_boxes)
    assert len(gt_labels) == B, f"gt_boxes and gt_labels must both have B entries; got {B}, {len(gt_labels)}"
    assert num_groups >= 1, f"num_groups must be >= 1; got {num_groups}"
    counts = [min(len(g), max_gt) for g in gt_boxes]
    Mx = max(counts, default=0)
    if Mx == 0:
        return None
    device, dtype = gt_boxes[0].device, gt_boxes[0].dtype
    gt = torch.zeros(B, Mx, ANCHOR_DIM, device=device, dtype=dtype)
    labels = torch.full((B, Mx), -1, device=device, dtype=torch.long)
    valid = torch.zeros(B, Mx, device=device, dtype=torch.bool)
    for b, m in enumerate(counts):
        assert gt_boxes[b].ndim == 2 and gt_boxes[b].shape[1] == 9 and gt_labels[b].shape == (len(gt_boxes[b]),), (
            f"sample {b}: gt_boxes must be (M, 9), gt_labels (M,); got {gt_boxes[b].shape}, {gt_labels[b].shape}"
        )
        gt[b, :m] = boxes_to_anchors(gt_boxes[b][:m].to(device=device, dtype=dtype))
        labels[b, :m] = gt_labels[b][:m].to(device)
        valid[b, :m] = True
    s = torch.as_tensor(noise_scale, device=device, dtype=dtype)
    assert s.shape == (ANCHOR_DIM,), f"noise_scale (dn_noise_scale) must have {ANCHOR_DIM} entries; got {s.shape}"
    G = num_groups

    def rand(*shape):  # on the device (no copy, no sync) unless a (CPU) generator is given
        if generator is None:
            return torch.rand(*shape, dtype=dtype, device=device)
        return torch.rand(*shape, generator=generator, dtype=dtype).to(device)

    clean = torch.nan_to_num(gt, nan=0.0)[:, None]  # (B, 1, Mx, 11)
    pos = clean + (rand(B, G, Mx, ANCHOR_DIM) * 2 - 1) * s  # (B, G, Mx, 11)
    sign = torch.where(rand(B, G, Mx, ANCHOR_DIM) > 0.5, 1.0, -1.0).to(dtype)
    neg = clean + (rand(B, G, Mx, ANCHOR_DIM) + 1) * sign * s  # (B, G, Mx, 11)
    D = G * 2 * Mx
    anchor = torch.stack([pos, neg], dim=2).reshape(B, D, ANCHOR_DIM)  # (B, G, 2, Mx, 11) -> (B, D, 11)
    gt_anchor = gt[:, None, None].expand(B, G, 2, Mx, ANCHOR_DIM).reshape(B, D, ANCHOR_DIM)  # (B, D, 11)
    lab = labels[:, None, None].expand(B, G, 2, Mx).clone()  # (B, G, 2, Mx)
    lab[:, :, 1] = -1
    valid_d = valid[:, None, None].expand(B, G, 2, Mx).reshape(B, D)  # (B, D)
    return {"anchor": anchor, "gt_anchor": gt_anchor, "labels": lab.reshape(B, D), "valid": valid_d, "max_gt": Mx}


def denoising_attn_mask(num_queries: int, num_groups: int, valid: torch.Tensor) -> torch.Tensor:
    """The self-attention mask ``(B, Q + D, Q + D)`` (True = blocked) of Q normal queries then G denoising groups.

    ``valid (B, D)``: the denoising queries that are not padding (:func:`make_denoising_queries`). Query i may
    attend key j iff both are normal queries, or both are in the same denoising group and j is not padding;
    every query may attend itself. So normal queries never see denoising ones (their outputs are those of a
    run without denoising), no group sees another, and denoising queries do not see the normal ones
    (Sparse4D blocks both off-diagonal blocks too; it does not mask padding).
    """
    B, D = valid.shape
    Q, G = num_queries, num_groups
    assert D % G == 0, f"valid (B, D={D}) must hold num_groups={G} groups"
    device = valid.device
    group = torch.cat(
        [torch.zeros(Q, dtype=torch.long, device=device), 1 + torch.arange(G, device=device).repeat_interleave(D // G)]
    )  # (Q + D,): 0 normal, g + 1 denoising group g
    blocked = group[:, None] != group[None, :]  # (Q + D, Q + D)
    key_ok = torch.cat([torch.ones(B, Q, dtype=torch.bool, device=device), valid], dim=1)  # (B, Q + D)
    blocked = blocked[None] | ~key_ok[:, None, :]  # (B, Q + D, Q + D)
    eye = torch.eye(Q + D, dtype=torch.bool, device=device)
    return blocked & ~eye
