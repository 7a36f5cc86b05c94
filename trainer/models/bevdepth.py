"""BEVDepth (Li et al., 2022), the camera student: images to a BEV map, CenterPoint's head on it, and its losses.

``images -> CameraBEV (backbone, FPN, depth net, lift-splat, BEV encoder) -> CenterHead``
                                                      ``└-> 1x1 conv (DINOv2 distillation)``

The camera network is the shared component :class:`~trainer.models.components.camera_bev.CameraBEV`
(every part its own ``_target_`` config; the constructors check that channel counts chain). The BEV
map (``bev``) lies on the store's grid, cell for cell, so the CenterHead's targets and the cached
``dino/feat`` grids line up with it.

Losses (:meth:`BEVDepth.loss`), as in the papers:

- detection: the CenterHead's Gaussian focal loss plus weighted L1 (CenterPoint);
- depth: BEVDepth's binary cross-entropy between the predicted depth distribution and the one-hot
  bin of the LiDAR depth, on the feature cells that have LiDAR (:func:`depth_loss`), weighted by
  ``depth_weight`` (BEVDepth's ``depth_loss_factor`` 3.0);
- DINOv2 distillation (DualViewDistill): a linear 1x1 projection of ``bev`` to the store's feature
  channels, ``1 - cos`` per cell against ``dino/feat``, averaged over the cells with
  ``dino/count > 0`` (:func:`distill_cosine_loss`; computed by :func:`distill_cell_loss`, which
  projects the occupied cells only), weighted by ``distill_weight`` (the paper's
  best, 7.0). The projection exists only when ``distill_channels`` is set.

The weights are arguments of :meth:`BEVDepth.loss`; the LightningModule holds them (``model.loss``).

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV
grid rows (ego y) / columns (ego x), K_t classes of a head task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.models.camera_detector import CameraDetector
from trainer.models.components.camera_bev import CameraBEV
from trainer.models.components.center_head import CenterHead
from trainer.models.components.map_input import MapInput


class BEVDepth(CameraDetector):
    """Camera BEV detector: ``forward(images, K, ego_from_cam) -> {"bev", "preds", "depth_logits", "img_feats"}``.

    Args:
        camera_bev: the shared camera BEV network (its FPN must return only the level it lifts:
            a CenterHead reads no other, and an unread level is an unused parameter under DDP).
        head: the CenterHead on ``bev``.
        distill_channels: C of the store's ``dino/feat``; adds the 1x1 distillation projection
            (``None``: no projection, no distillation loss).
        map_input: a given BEV map read into the head's input (the oracle-input upper bound), or ``None``.

    Attributes (:class:`~trainer.models.camera_detector.CameraDetector`'s):
        grid: the BEV grid of ``bev`` and of the head's maps (lift-splat's).
        bins: the depth bins; downsample: the stride of the lifted level.
    """

    def __init__(
        self,
        camera_bev: CameraBEV,
        head: CenterHead,
        distill_channels: int | None = None,
        map_input: MapInput | None = None,
    ):
        super().__init__()
        if camera_bev.img_strides != [camera_bev.downsample]:
            raise ValueError(
                f"BEVDepth: camera_bev.neck.out_strides {camera_bev.img_strides} must be [{camera_bev.downsample}] "
                "(lift_splat.downsample): the CenterHead reads no other level, and a level no loss reaches breaks DDP"
            )
        if head.in_channels != camera_bev.out_channels:
            raise ValueError(
                f"BEVDepth: head.in_channels {head.in_channels} != camera_bev.bev_encoder.out_channels "
                f"{camera_bev.out_channels}"
            )
        self.camera_bev, self.head = camera_bev, head
        self._init_distill(distill_channels)
        self._init_map_input(map_input)
        if camera_bev.channels_last:  # the head's convolutions read the channels-last BEV map
            self.head.to(memory_format=torch.channels_last)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label space of the head's outputs."""
        return tuple(self.head.class_names)

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        ego_from_cam: torch.Tensor,
        map_feat: torch.Tensor | None = None,
        map_count: torch.Tensor | None = None,
        prev: dict[str, torch.Tensor] | None = None,
        dt: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """:meth:`CameraBEV.forward`'s ``bev``, ``depth_logits``, ``img_feats``, and the CenterHead's ``preds``
        (``map_feat``, ``map_count``: the given map of :attr:`map_input`, :meth:`camera_forward`; ``prev``: the
        previous keyframe of a two-frame camera network). ``dt (B,)`` seconds since the previous keyframe is kept as
        ``outputs["dt"]``, over which a displacement head's velocity is regressed and decoded (None: the default).

        The distillation's projection of ``bev`` is :meth:`distill_map` (the loss projects the
        occupied cells only).
        """
        out = self.camera_forward(images, K, ego_from_cam, map_feat, map_count, prev)
        out["preds"] = self.head(out["bev"])
        if dt is not None:
            out["dt"] = dt
        return out

    def detection_loss(
        self,
        outputs: dict[str, Any],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        has_boxes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The CenterHead's loss on targets drawn on :attr:`grid` (:meth:`CameraDetector.loss` adds the rest); only
        the samples in ``has_boxes (B,)`` count (None: all)."""
        targets = self.head.targets(gt_boxes, gt_labels, self.grid, dt=outputs.get("dt"))
        return self.head.loss(outputs["preds"], targets, sample_mask=has_boxes)

    def decode(self, outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{"boxes": (M, 9), "scores": (M,), "labels": (M,)}`` in the frame of the batch's BEV map."""
        return self.head.decode(outputs["preds"], self.grid, dt=outputs.get("dt"))
