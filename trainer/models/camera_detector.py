"""What every camera detector shares (:class:`CameraDetector`): the camera BEV network, the DINOv2 distillation
projection, and their losses.

:class:`~trainer.models.bevdepth.BEVDepth` (a CenterHead on the BEV map) and
:class:`~trainer.models.dualviewdistill.DualViewDistill` (a sparse query head) differ in their heads; both own a
:class:`~trainer.models.components.camera_bev.CameraBEV` as ``camera_bev`` and an optional 1x1 projection of its
BEV map to the label store's DINOv2 channels as ``distill``, and add the same depth and distillation losses
(:func:`~trainer.models.losses.camera_bev_losses`) to their detection loss. :meth:`CameraDetector.loss` is that
sum, once for both; a subclass gives its head's loss (:meth:`~CameraDetector.detection_loss`) and any terms of its
own (:meth:`~CameraDetector.extra_losses`). What the LightningModule of a camera detector
(:class:`~trainer.lit_bevdepth.BEVDepthModule`) reads of its detector is defined here: ``grid``, ``bins``,
``downsample``, ``distill``, ``distill_channels``, :meth:`~CameraDetector.expected_depth`.

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV grid.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainer.models.components.camera_bev import CameraBEV
from trainer.models.components.lift_splat import DepthBins
from trainer.models.components.map_input import MapInput
from trainer.models.losses import camera_bev_losses


class CameraDetector(nn.Module, metaclass=ABCMeta):
    """Base of the camera detectors: a subclass sets ``self.camera_bev`` and calls :meth:`_init_distill`.

    Attributes:
        camera_bev: the shared camera BEV network.
        distill_channels: C of the store's ``dino/feat`` (``None``: no distillation).
        distill: the 1x1 projection of ``bev`` to ``distill_channels`` (``None`` without one).
        map_input: a given BEV map's way into the head (:class:`~trainer.models.components.map_input.MapInput`,
            the oracle-input upper bound), or ``None``: :meth:`camera_forward` applies it.
    """

    camera_bev: CameraBEV
    map_input: MapInput | None  # set by _init_map_input (a class default would hide the registered module)

    def _init_map_input(self, map_input: MapInput | None) -> None:
        """Register ``map_input`` (``None``: none), checking its channels against the camera BEV map's."""
        if map_input is not None and map_input.bev_channels != self.camera_bev.out_channels:
            raise ValueError(
                f"model.detector.map_input.bev_channels {map_input.bev_channels} != camera_bev.bev_encoder."
                f"out_channels {self.camera_bev.out_channels}"
            )
        self.map_input = map_input

    def camera_forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        ego_from_cam: torch.Tensor,
        map_feat: torch.Tensor | None = None,
        map_count: torch.Tensor | None = None,
        prev: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """:meth:`CameraBEV.forward` (``prev``: the previous keyframe of a two-frame camera network), with a given map
        (``map_feat (B, C_m, H_m, W_m)``, ``map_count (B, H_m, W_m)``) read into ``bev`` by :attr:`map_input` when there
        is one (the camera's own map is kept as ``camera_bev``)."""
        out = self.camera_bev(images, K, ego_from_cam, prev)
        map_input = getattr(self, "map_input", None)  # a detector that never called _init_map_input has none
        if map_input is not None:
            if map_feat is None or map_count is None:
                raise ValueError(
                    "model.detector.map_input reads the store's grid: the batch needs dino_feat and dino_count "
                    "(data.load_dino=true)"
                )
            out["camera_bev"] = out["bev"]
            out["bev"] = map_input(out["bev"], map_feat, map_count)
        return out

    def _init_distill(self, distill_channels: int | None) -> None:
        """The distillation projection of ``bev`` to ``distill_channels`` (none when ``None`` or 0).

        A subclass calls this where it builds its modules: the projection's place among them fixes the order
        of the parameters (the optimizer's state) and of their random initialisation.
        """
        self.distill_channels = int(distill_channels) if distill_channels else None
        self.distill = (
            nn.Conv2d(self.camera_bev.out_channels, self.distill_channels, 1) if self.distill_channels else None
        )

    @property
    def grid(self):
        """The BEV grid of ``bev`` (lift-splat's)."""
        return self.camera_bev.grid

    @property
    def bins(self) -> DepthBins:
        """The depth bins of ``depth_logits``."""
        return self.camera_bev.bins

    @property
    def downsample(self) -> int:
        """The stride of the lifted feature level (of ``depth_logits``)."""
        return self.camera_bev.downsample

    def distill_map(self, bev: torch.Tensor) -> torch.Tensor:
        """The distillation projection of a BEV map ``(B, C, H, W)`` to ``(B, C_dino, H, W)`` (for inspection; the
        loss projects the occupied cells only)."""
        if self.distill is None:
            raise ValueError(
                f"this {type(self).__name__} has no distillation projection (model.detector.distill_channels is null)"
            )
        return self.distill(bev)

    def camera_losses(
        self,
        outputs: dict[str, Any],
        depth_map: torch.Tensor | None,
        dino_feat: torch.Tensor | None,
        dino_count: torch.Tensor | None,
        *,
        depth_weight: float,
        distill_weight: float,
        distill_objects: torch.Tensor | None = None,
        distill_object_weight: float | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | float]:
        """The camera BEV network's losses: ``(parts, weighted sum)`` of
        :func:`~trainer.models.losses.camera_bev_losses` (``depth``, ``distill``; see there)."""
        return camera_bev_losses(
            outputs,
            self.bins,
            self.distill,
            depth_map,
            dino_feat,
            dino_count,
            depth_weight=depth_weight,
            distill_weight=distill_weight,
            distill_objects=distill_objects,
            distill_object_weight=distill_object_weight,
        )

    def loss(
        self,
        outputs: dict[str, Any],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        depth_map: torch.Tensor | None = None,
        dino_feat: torch.Tensor | None = None,
        dino_count: torch.Tensor | None = None,
        *,
        depth_weight: float,
        distill_weight: float,
        has_boxes: torch.Tensor | None = None,
        distill_objects: torch.Tensor | None = None,
        distill_object_weight: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of ``forward``'s outputs: ``loss`` (the weighted total) and its parts.

        ``loss = det + depth_weight * depth + distill_weight * distill`` (+ the subclass's :meth:`extra_losses`):
        BEVDepth's depth factor 3.0, DualViewDistill's best distillation weight 7.0; a zero weight skips its term.
        The weights are the config's ``model.loss`` (no default here: the config is their one source).

        ``det``: :meth:`detection_loss`, the head's total (its parts prefixed ``det.``); ``depth`` (unweighted;
        skipped without ``depth_map (B, N, h, w)``) and ``distill`` (unweighted; only with a projection and
        ``dino_feat (B, C, H, W)``, ``dino_count (B, H, W)``): :meth:`camera_losses`. ``gt_boxes`` are B
        ``(M_b, 9)`` in the batch's (augmented) ego frame, ``gt_labels`` B ``(M_b,)``.

        ``has_boxes (B,)`` bool: the samples whose boxes are known (``data.box_fraction``; None: all). The detection
        terms of the others are exactly 0 (an empty box list is not "no objects"); depth and distillation are not
        masked. ``distill_object_weight`` with ``distill_objects (B, H, W)`` bool: the object-weighted distillation
        (:func:`~trainer.models.losses.object_weighted_distill_loss`); None: the uniform mean.
        """
        det = self.detection_loss(outputs, gt_boxes, gt_labels, has_boxes=has_boxes)
        out = {f"det.{k}": v for k, v in det.items() if k != "loss"}
        out["det"] = det["loss"]
        parts, aux = self.camera_losses(
            outputs,
            depth_map,
            dino_feat,
            dino_count,
            depth_weight=depth_weight,
            distill_weight=distill_weight,
            distill_objects=distill_objects,
            distill_object_weight=distill_object_weight,
        )
        out.update(parts)
        out["loss"] = self.extra_losses(outputs, gt_boxes, gt_labels, out, det["loss"] + aux, has_boxes=has_boxes)
        return out

    @abstractmethod
    def detection_loss(
        self,
        outputs: dict[str, Any],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        has_boxes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The head's detection loss, ``{"loss": total, <part>: ...}``: each subclass its own (a subclass without
        one cannot be built); the samples outside ``has_boxes (B,)`` (None: none) add exactly 0."""

    def extra_losses(
        self, outputs: dict[str, Any], gt_boxes, gt_labels, out: dict, total: torch.Tensor, has_boxes=None
    ) -> torch.Tensor:
        """``total`` plus a subclass's own weighted terms, their parts written into ``out`` (here: none)."""
        return total

    def expected_depth(self, depth_logits: torch.Tensor) -> torch.Tensor:
        """Expected depth ``(B, N, h, w)`` in metres of ``(B, N, D, h, w)`` logits (:meth:`CameraBEV.expected_depth`)."""
        return self.camera_bev.expected_depth(depth_logits)
