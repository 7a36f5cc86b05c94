"""DualViewDistill, the camera detector: a Sparse4D-style query head that reads the BEV map, then the six cameras.

``images -> CameraBEV (backbone, FPN, depth net, lift-splat, BEV encoder) -> SparseHead (queries)``
                                                      ``└-> 1x1 conv (DINOv2 distillation)``

The camera network is the shared :class:`~trainer.models.components.camera_bev.CameraBEV`; the head is
:class:`~trainer.models.components.sparse.head.SparseHead`, whose decoder order is data
(``operation_order``): ``bev_agg`` samples the BEV map ``bev`` (one view, one level), ``pv_agg`` every
returned FPN level of every camera, through ``img_from_ego = K_aug @ cam_from_ego`` (the image and BEV
augmentations are folded into ``K`` and ``ego_from_cam`` by the data module, so into ``img_from_ego``).
BEV-then-PV, PV-only and BEV-only are configs (``conf/experiment/dvd*.yaml``).

Losses (:meth:`DualViewDistill.loss`): Sparse4Dv3's detection loss over every decoder layer plus the
denoising groups (:func:`~trainer.models.losses.sparse_detection_loss`), BEVDepth's depth loss and the
DINOv2 BEV distillation (as :class:`~trainer.models.bevdepth.BEVDepth`).

Every parameter is reached by a loss (DDP): the FPN returns only the lifted level unless ``pv_agg`` reads
the pyramid; with no ``bev_agg`` and no distillation nothing reads ``bev`` (PV-only), and the loss then
adds ``0 * bev.mean()`` so the lift-splat context and the BEV encoder get a (zero) gradient (they are
still computed: ``CameraBEV`` always builds the BEV map).

Temporal (``bank``, :class:`~trainer.models.components.sparse.instance_bank.InstanceBank`, experiments
``dvd*_temporal``): given the batch's scene streams (``stream``: keys, timestamps, ``aug_from_global``), the
bank's carried instances are the keys of the ``temp_attn`` ops and join the queries after the first layer;
after the last one the bank keeps the best, and in evaluation each query gets a track id (``track_ids``,
decoded with the boxes). Without ``stream`` (or without a bank) the model is single-frame.

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV grid,
Q queries, M boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bevlabels.datasets.base import DEFAULT_DT
from trainer.models.camera_detector import CameraDetector
from trainer.models.components.camera_bev import CameraBEV, img_from_ego_of
from trainer.models.components.map_input import MapInput
from trainer.models.components.nms import class_nms
from trainer.models.components.sparse.decoding import decode as decode_layer
from trainer.models.components.sparse.head import SparseHead
from trainer.models.components.sparse.instance_bank import InstanceBank
from trainer.models.components.sparse.proposals import DenseProposals
from trainer.models.losses import sparse_detection_loss


class DualViewDistill(CameraDetector):
    """Camera sparse detector: ``forward(images, K, ego_from_cam, ...) -> CameraBEV's outputs + the head's``.

    Args:
        camera_bev: the shared camera BEV network. Its FPN returns every level the head's ``pv_agg``
            reads (``neck.out_strides``, as many as ``pv_agg.num_levels``), or only the lifted one when
            the order has no ``pv_agg``.
        head: the sparse head (``embed_dims`` = ``camera_bev.bev_encoder.out_channels`` =
            ``camera_bev.neck.out_channels`` where its aggregations read them).
        distill_channels: C of the store's ``dino/feat``; adds the 1x1 distillation projection of ``bev``.
        class_names: the label space of the head's classifier (``head.num_classes`` of them; no default: it is
            the dataset's, which a nuScenes default would only match by chance).
        topk: detections kept per sample by :meth:`decode` (Sparse4Dv3: 300).
        nms_radius: per class name, the radius in metres of a circle NMS within each class after the top-K
            (:func:`~trainer.models.components.nms.class_nms`; CenterPoint's radii are
            ``dataset.nms_radius``). Not in Sparse4D; None (default) decodes as Sparse4Dv3, top-K only.
            :meth:`set_nms` changes it on a built model (``python -m trainer.evaluate ... nms=circle``).
        bank: the temporal instance bank (None: single-frame).
        proposals: dense proposals (not in the paper; None: the learned anchors only): a CenterHead on
            ``bev`` whose best peaks start the first ``num_proposals`` queries, its loss added with its
            ``loss_weight`` (:class:`~trainer.models.components.sparse.proposals.DenseProposals`).
        map_input: a given BEV map read into ``bev`` before the head (the oracle-input upper bound,
            :class:`~trainer.models.components.map_input.MapInput`), or None; needs ``bev_agg`` in the order.
    """

    def __init__(
        self,
        camera_bev: CameraBEV,
        head: SparseHead,
        distill_channels: int | None = None,
        *,
        class_names: Sequence[str],
        topk: int = 300,
        bank: InstanceBank | None = None,
        proposals: DenseProposals | None = None,
        nms_radius: Mapping[str, float] | None = None,
        map_input: MapInput | None = None,
    ):
        super().__init__()
        self._class_names = tuple(str(c) for c in class_names)
        self.set_nms(nms_radius)
        if head.num_classes != len(self._class_names):
            raise ValueError(
                f"DualViewDistill: head.num_classes {head.num_classes} != {len(self._class_names)} class_names "
                f"{list(self._class_names)}"
            )
        order = head.decoder.operation_order
        self.uses_bev, self.uses_pv = "bev_agg" in order, "pv_agg" in order
        if self.uses_bev and head.embed_dims != camera_bev.out_channels:
            raise ValueError(
                f"DualViewDistill: head.embed_dims {head.embed_dims} != camera_bev.bev_encoder.out_channels "
                f"{camera_bev.out_channels} (bev_agg samples the BEV map)"
            )
        if self.uses_pv:
            if head.embed_dims != camera_bev.img_channels:
                raise ValueError(
                    f"DualViewDistill: head.embed_dims {head.embed_dims} != camera_bev.neck.out_channels "
                    f"{camera_bev.img_channels} (pv_agg samples the FPN levels)"
                )
            levels = {layer.num_levels for op, layer in zip(order, head.decoder.layers) if op == "pv_agg"}
            if levels != {len(camera_bev.img_strides)}:
                raise ValueError(
                    f"DualViewDistill: head.pv_agg.num_levels {sorted(levels)} != the "
                    f"{len(camera_bev.img_strides)} levels of camera_bev.neck.out_strides {camera_bev.img_strides}"
                )
        elif camera_bev.img_strides != [camera_bev.downsample]:
            raise ValueError(
                f"DualViewDistill: the head's operation_order has no 'pv_agg', so camera_bev.neck.out_strides "
                f"{camera_bev.img_strides} must be [{camera_bev.downsample}] (lift_splat.downsample): a level no "
                "loss reaches breaks DDP"
            )
        if bank is not None:
            if head.num_temp_instances != bank.num_temp_instances:
                raise ValueError(
                    f"DualViewDistill: head.num_temp_instances {head.num_temp_instances} != bank.num_temp_instances "
                    f"{bank.num_temp_instances}"
                )
            if "temp_attn" not in order:
                raise ValueError("DualViewDistill: a bank needs 'temp_attn' ops (operation_order.temporal=true)")
        elif head.num_temp_instances:
            raise ValueError(f"DualViewDistill: head.num_temp_instances {head.num_temp_instances} without a bank")
        if proposals is not None:
            if proposals.in_channels != camera_bev.out_channels or proposals.embed_dims != head.embed_dims:
                raise ValueError(
                    f"DualViewDistill: proposals.head.in_channels {proposals.in_channels} and proposals.embed_dims "
                    f"{proposals.embed_dims} must be camera_bev.bev_encoder.out_channels {camera_bev.out_channels} "
                    f"and head.embed_dims {head.embed_dims}"
                )
            if tuple(proposals.head.class_names) != self._class_names:
                raise ValueError(
                    f"DualViewDistill: proposals.head.class_names {list(proposals.head.class_names)} != class_names "
                    f"{list(self._class_names)}"
                )
            free = head.num_anchors - head.num_temp_instances
            if proposals.num_proposals > free:
                raise ValueError(
                    f"DualViewDistill: proposals.num_proposals {proposals.num_proposals} > head.num_anchors "
                    f"{head.num_anchors} - head.num_temp_instances {head.num_temp_instances} = {free}"
                )
            if camera_bev.channels_last:  # its convolutions read the channels-last BEV map
                proposals.head.to(memory_format=torch.channels_last)
        self.proposals = proposals
        self.bank = bank
        self.camera_bev, self.head, self.topk = camera_bev, head, int(topk)
        self._init_distill(distill_channels)
        if map_input is not None and not self.uses_bev:
            raise ValueError(
                "DualViewDistill: model.detector.map_input feeds the BEV map, which this operation_order never reads "
                "(no 'bev_agg'): its adapter would be an unused parameter"
            )
        self._init_map_input(map_input)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label space of the head's outputs."""
        return self._class_names

    def set_nms(self, nms_radius: Mapping[str, float] | None) -> None:
        """Decode with a circle NMS of these per-class radii (metres), or without (None): see ``nms_radius``."""
        if nms_radius is None:
            self.nms_radius = None
            return
        lacking = [c for c in self._class_names if c not in nms_radius]
        if lacking:
            raise ValueError(f"DualViewDistill: nms_radius has no radius for {lacking} (it has {sorted(nms_radius)})")
        self.nms_radius = torch.tensor([float(nms_radius[c]) for c in self._class_names])

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        ego_from_cam: torch.Tensor,
        gt_boxes: Sequence[torch.Tensor] | None = None,
        gt_labels: Sequence[torch.Tensor] | None = None,
        dt: torch.Tensor | None = None,
        stream: dict[str, Any] | None = None,
        map_feat: torch.Tensor | None = None,
        map_count: torch.Tensor | None = None,
        prev: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """``img_feats``, ``depth_logits``, ``bev`` (:meth:`CameraBEV.forward`) and the head's ``layers``,
        ``instance_feature``, ``dn`` (denoising, in training with ``gt_boxes``/``gt_labels``).

        ``images (B, N, 3, H, W)``, ``K (B, N, 3, 3)`` (image augmentation folded in), ``ego_from_cam
        (B, N, 4, 4)`` (BEV augmentation folded in); ``dt (B,)`` seconds since the previous frame (None:
        the head's default, or the bank's intervals). ``stream``: ``{"keys": B scene keys, "timestamps": (B,)
        microseconds, "aug_from_global": (B, 4, 4)}`` for the bank (ignored without one); then ``track_ids
        (B, Q)`` joins the outputs outside training. ``map_feat``, ``map_count``: the given map of
        :attr:`map_input` (:meth:`camera_forward`). ``prev``: the previous keyframe of a two-frame camera network.
        """
        out = self.camera_forward(images, K, ego_from_cam, map_feat, map_count, prev)
        img_from_ego = img_from_ego_of(K, ego_from_cam)  # (B, N, 4, 4)
        proposals = None
        if self.proposals is not None:
            p = self.proposals(out["bev"], self.grid)
            out["proposal_preds"] = p["preds"]
            proposals = (p["anchor"], p["feature"])
        carried, hook = None, None
        if self.bank is not None and stream is not None:
            carried, intervals = self.bank.carried(stream["keys"], stream["timestamps"], stream["aug_from_global"])
            if dt is None and carried is not None:
                dt = torch.where(intervals > 0, intervals, torch.full_like(intervals, DEFAULT_DT))
                dt = dt.to(device=images.device, dtype=torch.float32)
            bank = self.bank

            def hook(layer, f, a, cls, carried_):
                if layer == 0:
                    f, a = bank.merge(carried_, f, a, cls)
                return f, a, carried_

        out.update(
            self.head(
                bev=out["bev"],
                img_feats=out["img_feats"],
                img_from_ego=img_from_ego,
                image_hw=tuple(images.shape[-2:]),
                dt=dt,
                gt_boxes=gt_boxes,
                gt_labels=gt_labels,
                carried=carried,
                after_refine=hook,
                proposals=proposals,
            )
        )
        if self.bank is not None and stream is not None:
            last = out["layers"][-1]
            ids = self.bank.cache(
                stream["keys"],
                stream["timestamps"],
                stream["aug_from_global"],
                out["instance_feature"],
                last["anchor"],
                last["cls"],
                assign_ids=not self.training,
            )
            if ids is not None:
                out["track_ids"] = ids
        return out

    def detection_loss(
        self,
        outputs: dict[str, Any],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        has_boxes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:func:`sparse_detection_loss` of every layer and the denoising groups (:meth:`CameraDetector.loss` adds
        the depth and distillation terms, then :meth:`extra_losses`); samples outside ``has_boxes`` are not matched."""
        return sparse_detection_loss(
            outputs["layers"], gt_boxes, gt_labels, dn=outputs.get("dn"), sample_mask=has_boxes
        )

    def extra_losses(
        self, outputs: dict[str, Any], gt_boxes, gt_labels, out: dict, total: torch.Tensor, has_boxes=None
    ) -> torch.Tensor:
        """``total`` plus ``proposals.loss_weight * proposal``: the dense proposals' CenterPoint loss (unweighted in
        ``out``, parts ``proposal.hm``, ``proposal.loc``; with dense proposals only), and, PV-only without
        distillation, a zero term on ``bev``."""
        if self.proposals is not None and "proposal_preds" in outputs:
            dense = self.proposals.loss(
                outputs["proposal_preds"], gt_boxes, gt_labels, self.grid, sample_mask=has_boxes
            )
            out["proposal.hm"], out["proposal.loc"] = dense["hm"], dense["loc"]
            out["proposal"] = dense["loss"]
            total = total + self.proposals.loss_weight * dense["loss"]
        if not self.uses_bev and "distill" not in out:
            # PV-only without distillation: nothing reads bev; a zero term gives the BEV network a (zero)
            # gradient, so DDP finds no unused parameter.
            total = total + 0.0 * outputs["bev"].float().mean()
        return total

    @torch.no_grad()
    def decode(self, outputs: dict[str, Any], topk: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{"boxes": (M, 9), "scores": (M,), "labels": (M,)}`` of the last layer, in the batch's BEV frame."""
        dets = decode_layer(outputs["layers"][-1], self.topk if topk is None else topk)
        if self.nms_radius is not None:
            dets = [class_nms(d, self.nms_radius.to(d["boxes"].device)) for d in dets]
        out = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"]} for d in dets]
        if "track_ids" in outputs:  # the bank's ids of the decoded queries
            for b, (o, d) in enumerate(zip(out, dets)):
                o["track_ids"] = outputs["track_ids"][b, d["query_index"]]
        return out
