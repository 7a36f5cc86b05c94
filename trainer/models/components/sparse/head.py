"""The sparse query head of DualViewDistill (Sparse4Dv3's): learned queries, the decoder, denoising queries.

:class:`SparseHead` owns the learned queries (instance features and anchors) and runs them, with denoising
queries in training, through the decoder. Its parts, each in its own module of this package:

- :mod:`~trainer.models.components.sparse.layers`: the decoder's ops (anchor encoder, attention, FFN, refine);
- :mod:`~trainer.models.components.sparse.decoder`: :class:`~.decoder.SparseDecoder`, whose order of ops is
  data (:func:`~.decoder.default_operation_order`), and the carried instances of the temporal bank;
- :mod:`~trainer.models.components.sparse.denoising`: the denoising queries and their attention mask;
- :mod:`~trainer.models.components.sparse.decoding`: detections of the head's output (:func:`~.decoding.decode`).

Configs name ``trainer.models.components.sparse.head.SparseHead`` and ``...head.default_operation_order`` (so do the
checkpoints' stored configs): the latter is re-exported here.

Shape letters: B batch, Q queries (inside the decoder: normal then denoising), C channels (``embed_dims``),
K classes, T carried instances, N cameras, H/W BEV grid, h/w image feature size, M GT boxes,
D denoising queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from trainer.models.components.sparse.anchors import ANCHOR_DIM, boxes_to_anchors
from trainer.models.components.sparse.decoder import (
    AfterRefine,
    CarriedInstances,
    SparseDecoder,
    default_operation_order,
)
from trainer.models.components.sparse.denoising import (
    DEFAULT_DN_NOISE_SCALE,
    denoising_attn_mask,
    make_denoising_queries,
)

#: what this module gives: the head, and (for configs and checkpoints, ``_target_``) ``default_operation_order``
__all__ = ["SparseHead", "default_anchors", "default_operation_order"]


def default_anchors(num_anchors: int, xy_range: float = 51.2, seed: int = 0) -> torch.Tensor:
    """Stand-in anchors ``(num_anchors, 11)`` when no k-means anchors are given (tests, debugging).

    Centres uniform in ``[-xy_range, xy_range]^2`` at z = 0 (fixed seed), a 4 x 2 x 1.5 m car facing +x, at rest.
    """
    g = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(num_anchors, 9)
    boxes[:, :2] = (torch.rand(num_anchors, 2, generator=g) * 2 - 1) * xy_range
    boxes[:, 3:6] = torch.tensor([4.0, 2.0, 1.5])
    return boxes_to_anchors(boxes)


def _batch_size(bev, img_feats, dt) -> int:
    if bev is not None:
        return bev.shape[0]
    if img_feats is not None and len(img_feats):
        return img_feats[0].shape[0]
    if isinstance(dt, torch.Tensor):
        return dt.shape[0]
    raise ValueError("SparseHead.forward needs bev or img_feats (or dt (B,)) to know the batch size")


class SparseHead(nn.Module):
    """Learned queries + :class:`SparseDecoder` (+ denoising queries in training).

    ``num_anchors`` learned instance features (zeros) and anchors (a Parameter initialised from
    ``anchors_init (num_anchors, 11)``, e.g. k-means of the training boxes; None: :func:`default_anchors`).
    ``decoder_kwargs`` go to :class:`SparseDecoder` (``num_heads``, ``dropout``, ``detach_anchor``, ...).

    Denoising (training with GT, ``num_dn_groups > 0``): :func:`make_denoising_queries` appended after the
    normal queries with zero features, and :func:`denoising_attn_mask` given to every self-attention op.

    ``forward(*, bev, img_feats, img_from_ego, image_hw, dt (B,), gt_boxes (B x (M_b, 9)), gt_labels
    (B x (M_b,)), carried, after_refine) -> {"layers": per refine {"anchor" (B, Q, 11), "cls" (B, Q, K),
    "quality" (B, Q, 2)} of the normal queries, "instance_feature": (B, Q, C), "dn": None or {"layers": the
    same of the denoising queries (B, D, ...), "gt_anchor", "labels", "valid"}}``, the input of
    :func:`~trainer.models.losses.sparse_detection_loss` (``layers``, ..., ``dn=out["dn"]``).

    ``proposals`` (``(anchor (B, K, 11), feature (B, K, C))``, e.g. from
    :class:`~trainer.models.components.sparse.proposals.DenseProposals`) replace the learned queries
    ``0 .. K - 1`` of every sample, so the number of queries stays ``num_anchors``.

    Tracking hook (the instance bank is the next issue): ``carried`` (:class:`CarriedInstances`, T =
    ``num_temp_instances`` of them, in the current ego frame) are the keys of every ``temp_attn`` op, and
    ``after_refine`` (see :data:`AfterRefine`) receives and may replace the *normal* queries after each layer,
    which is where the bank merges the carried instances in after the first layer (Sparse4D keeps Q fixed:
    ``num_temp_instances`` carried + the best new ones). ``num_temp_instances = 0`` is a single-frame head.
    """

    def __init__(
        self,
        num_anchors: int,
        embed_dims: int,
        num_classes: int,
        operation_order: Sequence[str],
        anchors_init: torch.Tensor | np.ndarray | Sequence | None = None,
        bev_agg: nn.Module | Callable[[], nn.Module] | None = None,
        pv_agg: nn.Module | Callable[[], nn.Module] | None = None,
        num_dn_groups: int = 5,
        dn_noise_scale: Sequence[float] = DEFAULT_DN_NOISE_SCALE,
        max_dn_gt: int = 32,
        num_temp_instances: int = 0,
        **decoder_kwargs,
    ):
        super().__init__()
        anchors = default_anchors(num_anchors) if anchors_init is None else torch.as_tensor(anchors_init).float()
        if anchors.shape != (num_anchors, ANCHOR_DIM):
            raise ValueError(f"anchors_init must be (num_anchors={num_anchors}, 11); got {tuple(anchors.shape)}")
        if num_dn_groups < 0 or max_dn_gt < 0:
            raise ValueError(f"num_dn_groups ({num_dn_groups}) and max_dn_gt ({max_dn_gt}) must be >= 0")
        if len(dn_noise_scale) != ANCHOR_DIM:
            raise ValueError(f"dn_noise_scale must have {ANCHOR_DIM} entries (anchor columns); got {dn_noise_scale}")
        if not 0 <= num_temp_instances < num_anchors:
            raise ValueError(f"num_temp_instances must be in [0, num_anchors={num_anchors}); got {num_temp_instances}")
        self.num_anchors, self.embed_dims, self.num_classes = num_anchors, embed_dims, num_classes
        self.num_dn_groups, self.max_dn_gt, self.num_temp_instances = num_dn_groups, max_dn_gt, num_temp_instances
        self.dn_noise_scale = tuple(float(s) for s in dn_noise_scale)
        self.anchor = nn.Parameter(anchors.clone())
        self.instance_feature = nn.Parameter(torch.zeros(num_anchors, embed_dims))
        self.decoder = SparseDecoder(operation_order, embed_dims, num_classes, bev_agg, pv_agg, **decoder_kwargs)

    def forward(
        self,
        *,
        bev: torch.Tensor | None = None,
        img_feats: Sequence[torch.Tensor] | None = None,
        img_from_ego: torch.Tensor | None = None,
        image_hw=None,
        dt: torch.Tensor | None = None,
        gt_boxes: Sequence[torch.Tensor] | None = None,
        gt_labels: Sequence[torch.Tensor] | None = None,
        carried: CarriedInstances | None = None,
        after_refine: AfterRefine | None = None,
        proposals: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        B, Q = _batch_size(bev, img_feats, dt), self.num_anchors
        if carried is not None and carried.anchor.shape[1] != self.num_temp_instances:
            raise ValueError(
                f"{carried.anchor.shape[1]} carried instances given, but num_temp_instances is "
                f"{self.num_temp_instances} (0: a single-frame head)"
            )
        f = self.instance_feature[None].expand(B, -1, -1)  # (B, Q, C)
        anchor = self.anchor[None].expand(B, -1, -1)  # (B, Q, 11)
        if proposals is not None:  # the first K queries start at the given anchors and features
            p_anchor, p_feature = proposals
            K = p_anchor.shape[1]
            assert p_anchor.shape == (B, K, ANCHOR_DIM) and p_feature.shape == (B, K, self.embed_dims), (
                f"proposals must be anchor (B={B}, K, 11) and feature (B, K, C={self.embed_dims}); got "
                f"{tuple(p_anchor.shape)}, {tuple(p_feature.shape)}"
            )
            if K > Q - self.num_temp_instances:
                raise ValueError(
                    f"{K} proposals for {Q} queries of which {self.num_temp_instances} are carried: at most "
                    f"{Q - self.num_temp_instances}"
                )
            anchor = torch.cat([p_anchor.to(anchor.dtype), anchor[:, K:]], dim=1)
            f = torch.cat([p_feature.to(f.dtype), f[:, K:]], dim=1)
        dn = None
        if self.training and self.num_dn_groups > 0 and gt_boxes is not None:
            assert gt_labels is not None, "gt_boxes given without gt_labels"
            assert len(gt_boxes) == B, f"gt_boxes must hold B={B} samples; got {len(gt_boxes)}"
            gt_boxes = [g.to(device=anchor.device, dtype=anchor.dtype) for g in gt_boxes]
            dn = make_denoising_queries(gt_boxes, gt_labels, self.num_dn_groups, self.dn_noise_scale, self.max_dn_gt)
        attn_mask, hook = None, after_refine
        if dn is not None:
            D = dn["anchor"].shape[1]
            anchor = torch.cat([anchor, dn["anchor"]], dim=1)  # (B, Q + D, 11)
            f = torch.cat([f, f.new_zeros(B, D, self.embed_dims)], dim=1)  # (B, Q + D, C)
            attn_mask = denoising_attn_mask(Q, self.num_dn_groups, dn["valid"])
            if after_refine is not None:

                def hook(layer, feat, anc, cls, carried_):
                    new_f, new_a, carried_ = after_refine(layer, feat[:, :Q], anc[:, :Q], cls[:, :Q], carried_)
                    return torch.cat([new_f, feat[:, Q:]], 1), torch.cat([new_a, anc[:, Q:]], 1), carried_

        layers, f = self.decoder(
            f,
            anchor,
            bev=bev,
            img_feats=img_feats,
            img_from_ego=img_from_ego,
            image_hw=image_hw,
            dt=dt,
            attn_mask=attn_mask,
            carried=carried,
            after_refine=hook,
        )

        def part(layer, sl):
            return {k: (v[:, sl] if v is not None else None) for k, v in layer.items()}

        out = {"layers": [part(l, slice(0, Q)) for l in layers], "instance_feature": f[:, :Q], "dn": None}
        if dn is not None:
            out["dn"] = {
                "layers": [part(l, slice(Q, None)) for l in layers],
                "gt_anchor": dn["gt_anchor"],
                "labels": dn["labels"],
                "valid": dn["valid"],
            }
        return out
