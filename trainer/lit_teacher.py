"""The LiDAR teacher as a LightningModule: :class:`TeacherModule` wraps a :class:`~trainer.models.centerpoint.CenterPoint`.

It reads ``batch["points"] (P, 1+5)`` (see :mod:`trainer.data.common`), trains on CenterPoint's
Gaussian-heatmap and regression losses against ``gt_boxes``/``gt_labels`` (targets made on the
model's output grid), and decodes boxes in the keyframe's ego frame. Its neck map
(``outputs["bev"] (B, C, H, W)``) is what ``pipelines.teacher`` caches as ``teacher/bev``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bevlabels.grid import GridSpec
from trainer.lit_base import DetectionModule
from trainer.models.centerpoint import CenterPoint


class TeacherModule(DetectionModule):
    """CenterPoint trained with Lightning (optimizer/scheduler partials as :class:`~trainer.lit_base.DetectionModule`).

    Args:
        detector: the CenterPoint model; its head's ``class_names`` must equal ``class_names``.
        kwargs: :class:`~trainer.lit_base.DetectionModule`'s keywords (``class_names``, ``scheduler_interval``),
            passed on: they are declared there once.
    """

    use_lidar = True

    def __init__(self, detector: CenterPoint, optimizer, scheduler=None, **kwargs: Any):
        super().__init__(optimizer, scheduler, detector=detector, **kwargs)

    @property
    def out_grid(self) -> GridSpec:
        """The grid of the teacher's BEV map and head (bounds of the voxeliser, cells x output stride)."""
        return self.detector.out_grid

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``{"bev": (B, C, H, W), "preds": per-task maps}`` of ``batch["points"] (P, 1+5)``."""
        points = batch["points"]
        assert points.ndim == 2 and points.shape[1] == 6, (
            f"points must be (P, 1+5) [b, x, y, z, intensity, dt]; got {tuple(points.shape)}"
        )
        return self.detector(points, batch_size=self.batch_size_of(batch))

    def compute_loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        targets = self.detector.targets(batch["gt_boxes"], batch["gt_labels"])
        return self.detector.loss(outputs, targets)

    def decode(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor]]:
        return self.detector.decode(outputs)
