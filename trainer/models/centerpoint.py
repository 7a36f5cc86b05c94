"""The LiDAR teacher: a pillar CenterPoint in plain torch (no spconv, no custom CUDA).

``points -> PillarVoxelizer -> PillarEncoder (PFN + scatter) -> BEVBackbone (blocks + neck) -> CenterHead``

The neck's output, ``bev``, is the map TiG-BEV distils into the camera student and the teacher
stage caches as ``teacher/bev``. It lives on the *output grid*: the voxeliser's pillar grid
coarsened by the backbone's output stride, i.e. the store's bounds with cells of
``pillar_size * out_stride`` metres. By default (pillars of the grid's cell size, stride 1) that
is exactly the store's grid; a finer pillar size needs a backbone whose stride brings it back
(0.2 m pillars with stride 4 on a 0.8 m grid, as CenterPoint on nuScenes). The constructor refuses
any other combination unless ``strict_grid=False``, since a cached teacher map must line up cell
for cell with the student's BEV map.

Input points are ``x, y, z, intensity, dt`` in the keyframe's ego frame: the sweeps of
``Frame.prev_sweeps`` moved there with ``Frame.key_ego_from_lidar`` and stamped with their time
lag ``dt`` (seconds) behind the keyframe sweep, as a batch ``(P, 1+5)`` with a leading batch-index
column or a list of B ``(P_b, 5)`` clouds.

Shape letters: B batch, C channels of the neck, H/W rows (ego y) and columns (ego x) of the output grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bevlabels.grid import GridSpec
from trainer.models.components.bev_backbone import BEVBackbone
from trainer.models.components.center_head import CenterHead
from trainer.models.components.pillar_encoder import PillarEncoder
from trainer.models.components.voxelize import PillarVoxelizer


def output_grid(voxelizer: PillarVoxelizer, out_stride: int) -> GridSpec:
    """The GridSpec of the head's maps: the pillar grid's bounds with ``out_stride`` times larger cells."""
    pg = voxelizer.pillar_grid
    return GridSpec(
        (pg.xbound[0], pg.xbound[1], pg.xbound[2] * out_stride),
        (pg.ybound[0], pg.ybound[1], pg.ybound[2] * out_stride),
        pg.zbound,
        name=voxelizer.grid.name,
    )


class CenterPoint(nn.Module):
    """Pillar CenterPoint: ``forward(points) -> {"bev": (B, C, H, W), "preds": per-task dicts of maps}``.

    Args:
        voxelizer, encoder, backbone, head: the components (each built from its own ``_target_``).
        strict_grid: require the output grid to equal the voxeliser's (the store's) grid.

    Attributes:
        out_grid: the GridSpec of ``bev`` and of the head's maps; targets and decoding use it.
    """

    def __init__(
        self,
        voxelizer: PillarVoxelizer,
        encoder: PillarEncoder,
        backbone: BEVBackbone,
        head: CenterHead,
        strict_grid: bool = True,
    ):
        super().__init__()
        if encoder.in_channels != voxelizer.point_dim:
            raise ValueError(f"encoder.in_channels {encoder.in_channels} != voxelizer.point_dim {voxelizer.point_dim}")
        if backbone.in_channels != encoder.out_channels:
            raise ValueError(
                f"backbone.in_channels {backbone.in_channels} != encoder.out_channels {encoder.out_channels}"
            )
        if head.in_channels != backbone.out_channels:
            raise ValueError(f"head.in_channels {head.in_channels} != backbone.out_channels {backbone.out_channels}")
        try:
            self.out_grid = output_grid(voxelizer, backbone.out_stride)
        except ValueError as e:
            raise ValueError(
                f"pillar grid {voxelizer.pillar_grid.shape} with backbone output stride {backbone.out_stride} "
                f"does not tile the grid bounds: {e}"
            ) from e
        if strict_grid and not self.out_grid.same_geometry(voxelizer.grid):
            raise ValueError(
                f"the head's output grid ({self.out_grid.shape} cells of {self.out_grid.cell_size} m) is not the store's "
                f"grid ({voxelizer.grid.shape} cells of {voxelizer.grid.cell_size} m): pillar_size "
                f"{voxelizer.pillar_grid.cell_size} x backbone out_stride {backbone.out_stride} must equal the grid cell"
            )
        self.voxelizer, self.encoder, self.backbone, self.head = voxelizer, encoder, backbone, head

    @property
    def class_names(self) -> tuple[str, ...]:
        """The label space of the head's outputs."""
        return tuple(self.head.class_names)

    def forward(self, points: torch.Tensor | Sequence[torch.Tensor], batch_size: int | None = None) -> dict[str, Any]:
        """``{"bev": (B, C, H, W) neck map, "preds": [per task {"hm": (B, K_t, H, W), "reg", ...}]}`` of a batch of clouds."""
        pillars = self.voxelizer(points, batch_size)
        pseudo_image = self.encoder(pillars)  # (B, C_pfn, H_p, W_p) on the pillar grid
        bev = self.backbone(pseudo_image)  # (B, C, H, W) on the output grid
        assert bev.shape[-2:] == self.out_grid.shape, (
            f"bev {tuple(bev.shape[-2:])} is not on the output grid {self.out_grid.shape}"
        )
        return {"bev": bev, "preds": self.head(bev)}

    def targets(
        self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """Head targets on :attr:`out_grid` for B samples of GT ``(M_b, 9)`` boxes (ego frame) and ``(M_b,)`` labels."""
        return self.head.targets(gt_boxes, gt_labels, self.out_grid)

    def loss(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Losses (``loss`` the total, plus its parts) of :meth:`forward`'s outputs against :meth:`targets`."""
        return self.head.loss(outputs["preds"], targets)

    def decode(self, outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{"boxes": (M, 9) ego frame, "scores": (M,), "labels": (M,)}`` of :meth:`forward`'s outputs."""
        return self.head.decode(outputs["preds"], self.out_grid)
