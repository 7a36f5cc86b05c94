"""The camera BEV network every camera detector shares: images to an FPN pyramid, depth distributions and a BEV map.

``images -> ResNetBackbone -> FPN -> DepthNet (camera-aware, one level) -> LiftSplat -> BEVEncoder``

:class:`CameraBEV` returns all three products, for whichever head and losses read them:

- ``img_feats``: every level the FPN returns, ``[(B, N, C, h_l, w_l)]`` finest first (a sparse
  head's perspective-view aggregation samples them);
- ``depth_logits (B, N, D, h, w)``: the depth net's bins on the level of stride
  ``lift_splat.downsample`` (the depth and inner-depth losses);
- ``bev (B, C, H, W)``: the encoded BEV map on the store's grid, cell for cell (a CenterHead, a
  sparse head's BEV aggregation, the DINOv2 and teacher distillations).

Every part is its own ``nn.Module`` built from its own ``_target_`` config with explicit channel
counts; the constructor checks that they chain. The FPN builds only the levels it returns and the
coarser ones feeding them (``FPN.out_strides``): a detector whose head reads no other level than the
depth net's sets ``out_strides`` to that one (unused parameters break DDP).

Two-frame fusion (``frames=2``, BEVDet4D's and BEVDepth's multi-frame input): the previous keyframe's images go
through the same network without gradient (as BEVDepth's and BEVDet4D's sweep frames: batches may be shuffled and no
stream is needed), lift-splat places them in the previous keyframe's (augmented) ego frame, and that map is warped
into the current one by the known ego motion ``cur_from_prev`` (:func:`~bevlabels.grid.resample_bev`, bilinear
``grid_sample``), then concatenated with the current map before the BEV encoder (``bev_encoder.in_channels`` doubles).
A static object's cells then line up in the two halves and a moving one's are displaced by velocity x dt: the
motion a single frame cannot show. Without a previous keyframe (a scene's first) the previous map is the current one,
zero motion, as BEVDet4D does. With a ``pre_encoder`` (BEVDet4D's per-frame pre-process,
:class:`~trainer.models.components.bev_encoder.BEVPreEncoder`) each frame's map goes through it before the warp and
the concatenation, so the two frames are compared as features rather than as raw splats, whose local pattern follows
the cameras (``results/two_frame.md``).

Memory layout: ``channels_last`` is this module's decision alone; the images and the splatted BEV
map are put in that layout explicitly (lift-splat's scatter yields a ``(B, H, W, C)`` buffer), and
every 1x1 convolution runs as a GEMM on the CPU (``components/pointwise.py``).

Shape letters: B batch, N cameras, D depth bins, C channels, h/w feature-map rows/columns, H/W BEV
grid rows (ego y) / columns (ego x).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bevlabels.grid import resample_bev
from trainer.models.components.bev_encoder import BEVEncoder, BEVPreEncoder
from trainer.models.components.depth_net import DepthNet
from trainer.models.components.fpn import FPN
from trainer.models.components.image_backbone import ResNetBackbone
from trainer.models.components.lift_splat import DepthBins, LiftSplat


def img_from_ego_of(K: torch.Tensor, ego_from_cam: torch.Tensor) -> torch.Tensor:
    """``(B, N, 4, 4)`` float32 ``K`` (padded to 4x4) ``@ inverse(ego_from_cam)`` of ``K (B, N, 3, 3)``, poses ``(B, N, 4, 4)``.

    Computed in float64, which autocast leaves alone (a float32 matmul would run in bf16 under it: pixels off
    by a few at a focal length of 1000).
    """
    K4 = torch.zeros(*K.shape[:-2], 4, 4, dtype=torch.float64, device=K.device)
    K4[..., :3, :3] = K.double()
    K4[..., 3, 3] = 1.0
    return (K4 @ torch.linalg.inv(ego_from_cam.double())).float()


class CameraBEV(nn.Module):
    """``forward(images, K, ego_from_cam) -> {"img_feats", "depth_logits", "bev"}`` (module docstring).

    Args:
        backbone, neck, depth_net, lift_splat, bev_encoder: the components.
        channels_last: keep the weights, and run the convolutions, in the channels-last layout (the
            same numbers; faster oneDNN convolutions on CPU, tensor-core layouts on GPU).
        frames: 1 (the current keyframe) or 2 (and the previous one, warped: the module docstring);
            ``bev_encoder.in_channels`` is ``frames x`` lift-splat's channels.
        pre_encoder: applied to each frame's lift-splat map before the fusion (two frames only; None: none).

    Attributes:
        grid, bins, downsample: lift-splat's BEV grid, depth bins and the stride of the level it lifts.
        out_channels: C of ``bev``; img_channels, img_strides: C and strides of ``img_feats``.
    """

    def __init__(
        self,
        backbone: ResNetBackbone,
        neck: FPN,
        depth_net: DepthNet,
        lift_splat: LiftSplat,
        bev_encoder: BEVEncoder,
        channels_last: bool = False,
        frames: int = 1,
        pre_encoder: BEVPreEncoder | None = None,
    ):
        super().__init__()
        if int(frames) not in (1, 2):
            raise ValueError(f"CameraBEV: frames must be 1 or 2; got {frames}")
        self.frames = int(frames)
        if pre_encoder is not None and self.frames != 2:
            raise ValueError("CameraBEV: a pre_encoder prepares each frame for the two-frame fusion; frames is 1")
        splat_channels = lift_splat.nz * depth_net.context_channels
        checks = [
            (neck.in_channels == list(backbone.out_channels), f"neck.in_channels {neck.in_channels} != backbone.out_channels {backbone.out_channels}"),
            (neck.in_strides == list(backbone.out_strides), f"neck.in_strides {neck.in_strides} != backbone.out_strides {backbone.out_strides}"),
            (lift_splat.downsample in neck.out_strides, f"neck.out_strides {neck.out_strides} lack lift_splat.downsample {lift_splat.downsample}, the level the depth net reads"),
            (depth_net.in_channels == neck.out_channels, f"depth_net.in_channels {depth_net.in_channels} != neck.out_channels {neck.out_channels}"),
            (depth_net.depth_bins == lift_splat.depth_bins, f"depth_net.depth_bins {depth_net.depth_bins} != {lift_splat.depth_bins} bins of dbound {lift_splat.bins}"),
            (bev_encoder.in_channels == self.frames * splat_channels, f"bev_encoder.in_channels {bev_encoder.in_channels} != frames {self.frames} x z slabs {lift_splat.nz} x depth_net.context_channels {depth_net.context_channels}"),
        ]  # fmt: skip
        if pre_encoder is not None:
            checks.append((pre_encoder.channels == splat_channels, f"pre_encoder.channels {pre_encoder.channels} != z slabs {lift_splat.nz} x depth_net.context_channels {depth_net.context_channels}"))  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"CameraBEV: {msg}")
        self.level = neck.level_of_stride(lift_splat.downsample)  # the returned FPN level lift-splat reads
        self.backbone, self.neck, self.depth_net = backbone, neck, depth_net
        self.lift_splat, self.bev_encoder = lift_splat, bev_encoder
        self.pre_encoder = pre_encoder
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

    @property
    def out_channels(self) -> int:
        return self.bev_encoder.out_channels

    @property
    def img_channels(self) -> int:
        return self.neck.out_channels

    @property
    def img_strides(self) -> list[int]:
        return list(self.neck.out_strides)

    def _splat(self, images: torch.Tensor, K: torch.Tensor, ego_from_cam: torch.Tensor):
        """FPN levels ``[(B*N, C_fpn, h_l, w_l)]``, ``depth_logits (B, N, D, h, w)`` and the splatted map ``(B, Z*C_ctx,
        H, W)`` of one keyframe's images."""
        assert images.ndim == 5 and images.shape[2] == 3, f"images must be (B, N, 3, H, W); got {tuple(images.shape)}"
        B, N = images.shape[:2]
        assert K.shape == (B, N, 3, 3) and ego_from_cam.shape == (B, N, 4, 4), (
            f"K must be ({B}, {N}, 3, 3), ego_from_cam ({B}, {N}, 4, 4); got {tuple(K.shape)}, {tuple(ego_from_cam.shape)}"
        )
        x = images.flatten(0, 1).contiguous(memory_format=self.memory_format)  # (B*N, 3, H, W)
        levels = self.neck(self.backbone(x))  # [(B*N, C_fpn, h_l, w_l)]
        feats = levels[self.level]  # (B*N, C_fpn, h, w)
        h, w = feats.shape[-2:]
        depth_logits, context = self.depth_net(feats, K.flatten(0, 1).float(), ego_from_cam.flatten(0, 1).float())
        depth_logits = depth_logits.view(B, N, -1, h, w)  # (B, N, D, h, w)
        context = context.view(B, N, -1, h, w)  # (B, N, C_ctx, h, w)
        splat = self.lift_splat(depth_logits.softmax(2), context, K, ego_from_cam)  # (B, Z*C_ctx, H, W)
        return levels, depth_logits, splat

    def _pre(self, splat: torch.Tensor) -> torch.Tensor:
        """A frame's map as the fusion reads it: through the ``pre_encoder`` where there is one."""
        if self.pre_encoder is None:
            return splat
        return self.pre_encoder(splat.contiguous(memory_format=self.memory_format))

    def previous_map(self, splat: torch.Tensor, prev: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """The previous keyframe's splatted map in the current (augmented) ego frame, ``(B, Z*C_ctx, H, W)``, without
        gradient; ``splat`` (the current one, detached) where ``prev`` is None (zero motion).

        ``prev``: ``images (B, N, 3, H, W)``, ``K (B, N, 3, 3)``, ``ego_from_cam (B, N, 4, 4)`` (the previous
        keyframe's cameras in its own augmented ego frame) and ``cur_from_prev (B, 4, 4)`` (that frame to the current
        augmented one; identity at a scene's first keyframe, whose "previous" keyframe is itself).
        """
        if prev is None:
            return splat.detach()
        missing = [k for k in ("images", "K", "ego_from_cam", "cur_from_prev") if k not in prev]
        if missing:
            raise KeyError(f"CameraBEV: the previous keyframe lacks {missing} (the batch's prev_* keys)")
        with torch.no_grad():
            prev_splat = self._pre(self._splat(prev["images"], prev["K"], prev["ego_from_cam"])[2])
            return resample_bev(prev_splat, self.grid, dst_from_src=prev["cur_from_prev"], mode="bilinear")

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        ego_from_cam: torch.Tensor,
        prev: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """``img_feats``, ``depth_logits`` and ``bev`` of N-camera images ``(B, N, 3, H, W)`` (uint8 or [0, 255] floats).

        ``K (B, N, 3, 3)`` are the intrinsics of the images as given (augmentation folded in) and
        ``ego_from_cam (B, N, 4, 4)`` the cameras' poses in the (BEV-augmented) ego frame. ``prev``: the previous
        keyframe (:meth:`previous_map`), read with ``frames=2`` only; None there: a scene's first keyframe.
        """
        B, N = images.shape[:2]
        levels, depth_logits, splat = self._splat(images, K, ego_from_cam)
        splat = self._pre(splat)
        if self.frames == 2:
            splat = torch.cat([splat, self.previous_map(splat, prev).to(splat.dtype)], 1)  # (B, 2*Z*C_ctx, H, W)
        bev = self.bev_encoder(splat.contiguous(memory_format=self.memory_format))  # (B, C, H, W)
        img_feats = [f.view(B, N, *f.shape[1:]) for f in levels]  # [(B, N, C_fpn, h_l, w_l)]
        return {"img_feats": img_feats, "depth_logits": depth_logits, "bev": bev}

    @torch.no_grad()
    def expected_depth(self, depth_logits: torch.Tensor) -> torch.Tensor:
        """Expected depth ``(B, N, h, w)`` in metres (the bin centres weighted by the distribution) of ``(B, N, D, h, w)`` logits."""
        centres = self.bins.centres(depth_logits.device, torch.float32)
        return (depth_logits.float().softmax(2) * centres.view(1, 1, -1, 1, 1)).sum(2)
