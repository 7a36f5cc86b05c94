"""Circle NMS of detections, the one implementation of the models: the dense CenterHead's decoding and the
sparse DualViewDistill's optional NMS after its top-K (:func:`class_nms`) both use :func:`circle_nms`.

A centre-distance test, not rotated IoU (see :mod:`~trainer.models.components.center_head`): for detectors that
keep heatmap peaks or one query per object, duplicates are near-coincident centres.

Shapes: n detections, K classes.
"""

from __future__ import annotations

import torch


def circle_nms(
    xy: torch.Tensor, scores: torch.Tensor, radius: torch.Tensor | float, max_keep: int | None = None
) -> torch.Tensor:
    """Indices of the detections kept by greedy circle NMS, highest score first.

    A kept detection suppresses every lower-scoring one whose centre lies within its own
    ``radius`` (metres; a float or per detection ``(n,)``). ``xy (n, 2)``, ``scores (n,)``.
    Vectorised: the greedy result is the unique fixed point of "keep j unless a kept
    higher-scoring i suppresses it", reached by iterating that rule on the whole suppression
    matrix (it fixes at least one more rank per pass, usually all in a few).
    """
    assert xy.ndim == 2 and xy.shape[1] == 2 and scores.shape == (len(xy),), (
        f"xy must be (n, 2) and scores (n,); got {tuple(xy.shape)}, {tuple(scores.shape)}"
    )
    order = torch.argsort(scores, descending=True, stable=True)
    if len(order) == 0:
        return order
    r = torch.as_tensor(radius, dtype=xy.dtype, device=xy.device).expand(len(xy))[order]
    c = xy[order]
    d2 = ((c[:, None] - c[None]) ** 2).sum(-1)  # (n, n)
    suppresses = torch.triu(d2 <= r[:, None] ** 2, diagonal=1)  # [i, j]: i outranks j and covers it
    keep = torch.ones(len(c), dtype=torch.bool, device=xy.device)
    for _ in range(len(c)):
        new = ~(suppresses & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    kept = order[keep]
    return kept if max_keep is None else kept[:max_keep]


@torch.no_grad()
def class_nms(detection: dict, radius_per_label: torch.Tensor) -> dict:
    """One sample's detections (the sparse head's :func:`~trainer.models.components.sparse.decoding.decode` output)
    with duplicates removed by circle NMS within each class.

    Not in Sparse4D, whose one-to-one matching is to teach the queries to suppress each other. An
    under-trained head has not learned that yet: the CPU-budget ``dvd`` runs put a second car within 1 m
    of a third to a half of their car detections (``results/bench_dvd_cpu_hour.md``), and each counts as a false
    positive in the devkit's AP. DETR's ablation shows the same by depth: NMS helps the outputs of its
    first decoder layers, which have not yet suppressed duplicates, and stops helping at the last. Greedy, highest
    score first (:func:`circle_nms`); a detection suppresses only the lower-scoring ones of its own label whose
    centres lie within ``radius_per_label[label]`` metres (CenterPoint's per-class radii, ``dataset.nms_radius``). A radius of 0 keeps that class as it is. Keys and their row order (score
    descending) are kept; every ``(M, ...)`` value is filtered alike (``boxes``, ``scores``, ``labels``,
    ``query_index``).
    """
    labels, scores = detection["labels"], detection["scores"]
    assert radius_per_label.ndim == 1, f"radius_per_label must be (K,); got {tuple(radius_per_label.shape)}"
    if len(labels) and int(labels.max()) >= len(radius_per_label):
        raise ValueError(f"label {int(labels.max())} has no NMS radius (radius_per_label has {len(radius_per_label)})")
    keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    xy = detection["boxes"][:, :2]
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero(as_tuple=True)[0]
        r = float(radius_per_label[k])
        keep[idx if r <= 0 else idx[circle_nms(xy[idx], scores[idx], r)]] = True
    return {
        key: (v[keep] if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape else v)
        for key, v in detection.items()
    }
