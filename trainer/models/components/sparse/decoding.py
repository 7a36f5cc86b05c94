"""Detections of the sparse head's output: Sparse4Dv3's ``SparseBox3DDecoder`` (:func:`decode`).

The circle NMS a DualViewDistill may add after it is :func:`trainer.models.components.nms.class_nms`.

Shape letters: B batch, Q queries, K classes, M detections.
"""

from __future__ import annotations

import torch

from trainer.models.components.sparse.anchors import ANCHOR_DIM, CNS, anchors_to_boxes


@torch.no_grad()
def decode(layer_out: dict, topk: int = 300, score_threshold: float | None = None) -> list[dict]:
    """Detections of one layer's output (Sparse4Dv3's ``SparseBox3DDecoder``), per sample.

    ``layer_out``: ``{"anchor": (B, Q, 11), "cls": (B, Q, K), "quality": (B, Q, 2) or None}``. As Sparse4Dv3:
    the top ``topk`` (query, class) pairs over ``Q * K`` by ``sigmoid(cls)``, ``score_threshold`` applied to
    that class score, then each score multiplied by ``sigmoid(centerness)`` (when quality is given) and
    re-sorted. Returns B dicts ``{"boxes": (M, 9) (bevlabels.geometry layout, via anchors_to_boxes),
    "scores": (M,) descending, "labels": (M,) long, "query_index": (M,) long}``, boxes and scores float32 at
    least (bf16 / fp16 outputs of autocast are cast up first).
    """
    cls, anchor, quality = layer_out["cls"], layer_out["anchor"], layer_out.get("quality")
    up = torch.promote_types(cls.dtype, torch.float32)
    cls, anchor = cls.to(up), anchor.to(torch.promote_types(anchor.dtype, torch.float32))
    quality = quality.to(up) if quality is not None else None
    B, Q, K = cls.shape
    assert anchor.shape == (B, Q, ANCHOR_DIM), f"anchor must be (B, Q, 11); got {tuple(anchor.shape)}"
    assert quality is None or quality.shape == (B, Q, 2), f"quality must be (B, Q, 2); got {tuple(quality.shape)}"
    k = min(topk, Q * K)
    cls_score, idx = cls.sigmoid().flatten(1).topk(k, dim=1)  # (B, k) over (B, Q*K)
    query, label = idx // K, idx % K
    score = cls_score
    if quality is not None:
        score = cls_score * quality[..., CNS].sigmoid().gather(1, query)
        score, order = score.sort(dim=1, descending=True)
        cls_score, query, label = cls_score.gather(1, order), query.gather(1, order), label.gather(1, order)
    out = []
    for b in range(B):
        keep = slice(None) if score_threshold is None else cls_score[b] >= score_threshold
        q = query[b][keep]
        out.append(
            {
                "boxes": anchors_to_boxes(anchor[b, q]),
                "scores": score[b][keep],
                "labels": label[b][keep],
                "query_index": q,
            }
        )
    return out
