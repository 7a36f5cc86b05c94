"""BEVDepth (Li et al., 2022), the camera student: images to a BEV map, CenterPoint's head on it, and its losses.

``images -> ResNetBackbone -> FPN -> DepthNet (camera-aware) -> LiftSplat -> BEVEncoder -> CenterHead``
                                                                            ``└-> 1x1 conv (DINOv2 distillation)``

Every part is its own ``nn.Module`` built from its own ``_target_`` config, with channel counts
passed explicitly; the constructor checks that they chain. The BEV map (``bev``) lies on the store's
grid, cell for cell, so the CenterHead's targets and the cached ``dino/feat`` grids line up with it.

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
from torch import nn

from trainer.models.components.bev_encoder import BEVEncoder
from trainer.models.components.center_head import CenterHead
from trainer.models.components.depth_net import DepthNet
from trainer.models.components.fpn import FPN
from trainer.models.components.image_backbone import ResNetBackbone
from trainer.models.components.lift_splat import DepthBins, LiftSplat
from trainer.models.losses import depth_loss, distill_cell_loss


class BEVDepth(nn.Module):
    """Camera BEV detector: ``forward(images, K, ego_from_cam) -> {"bev", "preds", "depth_logits"}``.

    Args:
        backbone, neck, depth_net, lift_splat, bev_encoder, head: the components.
        distill_channels: C of the store's ``dino/feat``; adds the 1x1 distillation projection
            (``None``: no projection, no distillation loss).
        channels_last: keep the weights, and run the convolutions, in the channels-last memory format
            (the same numbers; faster oneDNN convolutions on CPU, and tensor-core layouts on GPU). The
            layout is this setting's alone: the images and the splatted BEV map are put in it
            explicitly, whatever layout lift-splat's scatter happens to produce. Every 1x1 convolution
            runs as a GEMM on the CPU in either layout (``components/pointwise.py``: oneDNN's AVX-512
            1x1 kernel corrupts the heap for some channels-last shapes).

    Attributes:
        grid: the BEV grid of ``bev`` and of the head's maps (lift-splat's).
        bins: the depth bins.
    """

    def __init__(
        self,
        backbone: ResNetBackbone,
        neck: FPN,
        depth_net: DepthNet,
        lift_splat: LiftSplat,
        bev_encoder: BEVEncoder,
        head: CenterHead,
        distill_channels: int | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        checks = [
            (neck.in_channels == list(backbone.out_channels), f"neck.in_channels {neck.in_channels} != backbone.out_channels {backbone.out_channels}"),
            (neck.in_strides == list(backbone.out_strides), f"neck.in_strides {neck.in_strides} != backbone.out_strides {backbone.out_strides}"),
            (neck.out_strides == [lift_splat.downsample], f"neck.out_strides {neck.out_strides} != [{lift_splat.downsample}] (lift_splat.downsample): BEVDepth reads that one level, and a level no loss reaches breaks DDP"),
            (depth_net.in_channels == neck.out_channels, f"depth_net.in_channels {depth_net.in_channels} != neck.out_channels {neck.out_channels}"),
            (depth_net.depth_bins == lift_splat.depth_bins, f"depth_net.depth_bins {depth_net.depth_bins} != {lift_splat.depth_bins} bins of dbound {lift_splat.bins}"),
            (bev_encoder.in_channels == lift_splat.nz * depth_net.context_channels, f"bev_encoder.in_channels {bev_encoder.in_channels} != z slabs {lift_splat.nz} x depth_net.context_channels {depth_net.context_channels}"),
            (head.in_channels == bev_encoder.out_channels, f"head.in_channels {head.in_channels} != bev_encoder.out_channels {bev_encoder.out_channels}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"BEVDepth: {msg}")
        self.level = neck.level_of_stride(lift_splat.downsample)  # the FPN level lift-splat reads
        self.backbone, self.neck, self.depth_net = backbone, neck, depth_net
        self.lift_splat, self.bev_encoder, self.head = lift_splat, bev_encoder, head
        self.distill_channels = int(distill_channels) if distill_channels else None
        self.distill = nn.Conv2d(bev_encoder.out_channels, self.distill_channels, 1) if self.distill_channels else None
        self.channels_last = bool(channels_last)
        if self.channels_last:  # load_state_dict copies into these parameters, so the format survives loading
            self.to(memory_format=torch.channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the images and BEV maps the convolutions see (the ``channels_last`` setting)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def grid(self):
        return self.lift_splat.grid

    @property
    def bins(self) -> DepthBins:
        return self.lift_splat.bins

    @property
    def downsample(self) -> int:
        return self.lift_splat.downsample

    def forward(self, images: torch.Tensor, K: torch.Tensor, ego_from_cam: torch.Tensor) -> dict[str, Any]:
        """Outputs of a batch of N-camera images ``(B, N, 3, H, W)`` (uint8 or [0, 255] floats).

        ``K (B, N, 3, 3)`` are the intrinsics of the images as given (augmentation folded in) and
        ``ego_from_cam (B, N, 4, 4)`` the cameras' poses in the (BEV-augmented) ego frame.

        Returns ``bev (B, C, H, W)``, ``preds`` (the CenterHead's per-task maps) and ``depth_logits
        (B, N, D, h, w)``. The distillation's projection of ``bev`` is :meth:`distill_map` (the loss
        projects the occupied cells only).
        """
        assert images.ndim == 5 and images.shape[2] == 3, f"images must be (B, N, 3, H, W); got {tuple(images.shape)}"
        B, N = images.shape[:2]
        assert K.shape == (B, N, 3, 3) and ego_from_cam.shape == (B, N, 4, 4), (
            f"K must be ({B}, {N}, 3, 3), ego_from_cam ({B}, {N}, 4, 4); got {tuple(K.shape)}, {tuple(ego_from_cam.shape)}"
        )
        x = images.flatten(0, 1).contiguous(memory_format=self.memory_format)  # (B*N, 3, H, W)
        feats = self.neck(self.backbone(x))[self.level]  # (B*N, C_fpn, h, w)
        h, w = feats.shape[-2:]
        depth_logits, context = self.depth_net(feats, K.flatten(0, 1).float(), ego_from_cam.flatten(0, 1).float())
        depth_logits = depth_logits.view(B, N, -1, h, w)  # (B, N, D, h, w)
        context = context.view(B, N, -1, h, w)  # (B, N, C_ctx, h, w)
        bev = self.lift_splat(depth_logits.softmax(2), context, K, ego_from_cam)  # (B, Z*C_ctx, H, W)
        bev = self.bev_encoder(bev.contiguous(memory_format=self.memory_format))  # (B, C, H, W)
        return {"bev": bev, "preds": self.head(bev), "depth_logits": depth_logits}

    def distill_map(self, bev: torch.Tensor) -> torch.Tensor:
        """The distillation projection of a BEV map ``(B, C, H, W)`` to ``(B, C_dino, H, W)`` (for inspection)."""
        if self.distill is None:
            raise ValueError("this BEVDepth has no distillation projection (model.detector.distill_channels is null)")
        return self.distill(bev)

    def loss(
        self,
        outputs: dict[str, Any],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        depth_map: torch.Tensor | None = None,
        dino_feat: torch.Tensor | None = None,
        dino_count: torch.Tensor | None = None,
        depth_weight: float = 3.0,
        distill_weight: float = 7.0,
    ) -> dict[str, torch.Tensor]:
        """Losses of :meth:`forward`'s outputs: ``loss`` (the weighted total) and its parts.

        ``loss = det + depth_weight * depth + distill_weight * distill`` (BEVDepth's depth factor 3.0,
        DualViewDistill's best distillation weight 7.0); a zero weight skips its term.

        ``det`` (the CenterHead's total, its parts prefixed ``det.``), ``depth`` (unweighted; skipped
        without ``depth_map (B, N, h, w)``), ``distill`` (unweighted; only with a projection and
        ``dino_feat (B, C, H, W)``, ``dino_count (B, H, W)``). ``gt_boxes`` are B ``(M_b, 9)`` in
        the (augmented) ego frame of the batch, ``gt_labels`` B ``(M_b,)``.
        """
        det = self.head.loss(outputs["preds"], self.head.targets(gt_boxes, gt_labels, self.grid))
        out = {f"det.{k}": v for k, v in det.items() if k != "loss"}
        out["det"] = det["loss"]
        total = det["loss"]
        if depth_map is not None and depth_weight > 0:
            out["depth"] = depth_loss(outputs["depth_logits"], depth_map, self.bins)
            total = total + depth_weight * out["depth"]
        if self.distill is not None and dino_feat is not None and distill_weight > 0:
            assert dino_count is not None, "the distillation loss needs dino_count with dino_feat"
            if dino_feat.shape[1] != self.distill_channels:
                raise ValueError(
                    f"the store's dino/feat has {dino_feat.shape[1]} channels; the model projects to "
                    f"{self.distill_channels}: set model.distill_channels={dino_feat.shape[1]}"
                )
            out["distill"] = distill_cell_loss(outputs["bev"], self.distill, dino_feat, dino_count)
            total = total + distill_weight * out["distill"]
        out["loss"] = total
        return out

    def decode(self, outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{"boxes": (M, 9), "scores": (M,), "labels": (M,)}`` in the frame of the batch's BEV map."""
        return self.head.decode(outputs["preds"], self.grid)

    @torch.no_grad()
    def expected_depth(self, depth_logits: torch.Tensor) -> torch.Tensor:
        """Expected depth ``(B, N, h, w)`` in metres (the bin centres weighted by the distribution) of ``(B, N, D, h, w)`` logits."""
        centres = self.bins.centres(depth_logits.device, torch.float32)
        return (depth_logits.float().softmax(2) * centres.view(1, 1, -1, 1, 1)).sum(2)
