"""Dense proposals: query anchors from a CenterPoint heatmap on the BEV map (TransFusion's query initialisation).

An option of the DualViewDistill detector, not part of the paper: Sparse4D starts every keyframe from its
learned anchors (k-means here), and its decoder has to move each query to an object from features alone.
That is slow to learn (``results/bench_dvd_cpu_sparse_head.md``: on a perfect, painted BEV map the head needs hundreds
of steps to bring its nearest box within 0.4 m of an object, and a CPU-hour of training leaves the camera
detector's box loss nearly flat over the layers). A dense head learns where objects are much faster; here
its best peaks become the anchors of the first ``num_proposals`` queries, so the decoder starts from boxes
near the objects and refines, classifies and (with a bank) tracks them.

- ``head``: a :class:`~trainer.models.components.center_head.CenterHead` on the BEV map, trained with its own
  loss (Gaussian focal heatmap + L1 at centres), weighted by ``loss_weight``.
- Proposals: the head's 3x3 local maxima of every task (:meth:`CenterHead.candidates`), the best
  ``num_proposals`` by score over tasks; their boxes, turned into anchors (unknown velocity read as 0), are
  **detached** (the position is a choice, not a path, as in TransFusion); the query feature is
  ``Linear(bev at the peak's cell) + class embedding of the peak's class``, which the detection loss trains.

The head replaces the learned queries ``0 .. num_proposals - 1`` (:class:`SparseHead`'s ``proposals``), so the
number of queries, the denoising layout and the instance bank are as without proposals.

Shape letters: B batch, C_bev the BEV map's channels, C the head's embed dims, H/W the grid, K proposals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bevlabels.grid import GridSpec
from trainer.models.components.center_head import CenterHead
from trainer.models.components.sparse.anchors import VX, VY, VZ, boxes_to_anchors


class DenseProposals(nn.Module):
    """``forward(bev (B, C_bev, H, W), grid) -> {"preds", "anchor" (B, K, 11), "feature" (B, K, C), "scores", "labels"}``.

    Args:
        head: the dense head (``head.in_channels`` = the BEV map's channels).
        num_proposals: K, the queries that start at a heatmap peak.
        embed_dims: C of the sparse head's queries.
        loss_weight: the weight of the dense head's loss in the detector's total (:meth:`loss`).
    """

    def __init__(self, head: CenterHead, num_proposals: int, embed_dims: int, loss_weight: float = 1.0):
        super().__init__()
        if num_proposals < 1:
            raise ValueError(f"num_proposals must be >= 1; got {num_proposals}")
        self.head, self.num_proposals, self.embed_dims = head, int(num_proposals), int(embed_dims)
        self.loss_weight = float(loss_weight)
        self.feature_proj = nn.Linear(head.in_channels, self.embed_dims)
        self.class_embed = nn.Embedding(len(head.class_names), self.embed_dims)

    @property
    def in_channels(self) -> int:
        return self.head.in_channels

    def forward(self, bev: torch.Tensor, grid: GridSpec) -> dict:
        B, Cb, Hh, Ww = bev.shape
        assert Cb == self.head.in_channels and (Hh, Ww) == grid.shape, (
            f"bev must be (B, C={self.head.in_channels}, {grid.shape[0]}, {grid.shape[1]}) on grid {grid.name}; "
            f"got {tuple(bev.shape)}"
        )
        preds = self.head(bev)
        K = self.num_proposals
        per_task = self.head.candidates(preds, grid, topk=K)  # no grad
        boxes = torch.cat([c["boxes"] for c in per_task], 1)  # (B, T*K, 9)
        scores = torch.cat([c["scores"] for c in per_task], 1)
        labels = torch.cat([c["labels"] for c in per_task], 1)
        cells = torch.cat([c["cell"] for c in per_task], 1)
        if boxes.shape[1] < K:
            raise ValueError(f"num_proposals {K} exceeds the grid's {boxes.shape[1]} candidate peaks")
        scores, best = scores.topk(K, dim=1)  # (B, K), descending
        boxes = boxes.gather(1, best[..., None].expand(-1, -1, boxes.shape[-1]))
        labels, cells = labels.gather(1, best), cells.gather(1, best)
        anchor = boxes_to_anchors(boxes.float())  # (B, K, 11)
        anchor[..., [VX, VY, VZ]] = anchor[..., [VX, VY, VZ]].nan_to_num(0.0)  # unknown velocity -> 0
        at = bev.flatten(2).gather(2, cells[:, None, :].expand(-1, Cb, -1)).transpose(1, 2)  # (B, K, C_bev)
        feature = self.feature_proj(at.float()) + self.class_embed(labels)  # (B, K, C)
        return {"preds": preds, "anchor": anchor.detach(), "feature": feature, "scores": scores, "labels": labels}

    def loss(
        self,
        preds: Sequence[dict],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        grid: GridSpec,
        sample_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The dense head's CenterPoint loss (:meth:`CenterHead.loss`, unweighted) against the batch's GT
        (``sample_mask (B,)``: only the samples whose boxes are known count)."""
        return self.head.loss(preds, self.head.targets(gt_boxes, gt_labels, grid), sample_mask=sample_mask)
