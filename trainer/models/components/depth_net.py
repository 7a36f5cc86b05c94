"""BEVDepth's camera-aware depth net: per image feature cell, depth-bin logits and context features.

Li et al., "BEVDepth" (2022), section 3.3: the camera's intrinsics and extrinsics are embedded by an
MLP and modulate the image features channel-wise, squeeze-and-excitation style, separately for the
depth branch and the context branch, because the same pixel appearance means a different depth
under another focal length or mounting. Their ``DepthNet`` is followed here, with two changes:

- the camera vector is 16 numbers, ``fx, fy, cx, cy`` of the augmented intrinsics and the top
  3x4 of the (BEV-augmented) ``ego_from_cam``; BEVDepth's 27 also list the image-augmentation
  and BEV-augmentation matrices separately, which bevlabels folds into those two already
  (``K_aug = aug_from_img @ K``, ``ego_from_cam = bevaug_from_ego @ ego_from_cam``). As in
  BEVDepth, a BatchNorm1d over the camera vectors puts pixels and metres on one scale;
- BEVDepth's last depth-branch layer is a deformable conv (an mmcv CUDA op); here it is a plain
  3x3 conv (DESIGN.md: pure torch).

Shape letters: B batch, N cameras (folded into the batch: ``B*N`` rows), C channels, D depth bins,
h/w the feature map's rows and columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.pointwise import pointwise_as_gemm

#: length of the camera vector: fx, fy, cx, cy, then ego_from_cam[:3, :4] row by row
CAMERA_PARAMS = 16


def camera_params(K: torch.Tensor, ego_from_cam: torch.Tensor) -> torch.Tensor:
    """Camera vectors ``(..., 16)``: ``fx, fy, cx, cy`` of ``K (..., 3, 3)`` and the top 3x4 of ``ego_from_cam (..., 4, 4)``."""
    assert K.shape[-2:] == (3, 3) and ego_from_cam.shape[-2:] == (4, 4), (
        f"K must be (..., 3, 3) and ego_from_cam (..., 4, 4); got {tuple(K.shape)}, {tuple(ego_from_cam.shape)}"
    )
    intr = torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], -1)  # (..., 4)
    extr = ego_from_cam[..., :3, :4].flatten(-2)  # (..., 12)
    return torch.cat([intr, extr], -1)


class Mlp(nn.Module):
    """Linear -> ReLU -> Linear: ``(R, c_in) -> (R, c_out)``."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c_in, c_hidden), nn.ReLU(inplace=True), nn.Linear(c_hidden, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SELayer(nn.Module):
    """``x (R, C, h, w) * sigmoid(conv(relu(conv(x_se (R, C, 1, 1)))))``: a per-channel gate computed from ``x_se``."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels, 1)
        self.expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(x_se))))


class BasicBlock(nn.Module):
    """ResNet's basic block at constant width: two 3x3 conv+BN, identity shortcut, ReLU."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3), as in BEVDepth's depth branch: 1x1 and dilated 3x3 branches
    plus a global-average branch, concatenated and fused by a 1x1 conv. ``(R, C, h, w) -> (R, C, h, w)``."""

    def __init__(self, channels: int, mid_channels: int | None = None, dilations=(1, 6, 12, 18), dropout: float = 0.5):
        super().__init__()
        mid = int(mid_channels or channels)

        def branch(k: int, d: int) -> nn.Sequential:
            pad = 0 if k == 1 else d
            return nn.Sequential(
                nn.Conv2d(channels, mid, k, padding=pad, dilation=d, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True)
            )

        self.branches = nn.ModuleList(branch(1 if d == 1 else 3, d) for d in dilations)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid, 1, bias=False), nn.ReLU(True))
        self.fuse = nn.Sequential(
            nn.Conv2d(mid * (len(dilations) + 1), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # (R, mid, h, w)
        return self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DepthNet(nn.Module):
    """Image features ``(B*N, C_in, h, w)`` and cameras to depth logits ``(B*N, D, h, w)`` and context ``(B*N, C_ctx, h, w)``.

    Args:
        in_channels: C_in, the neck level read.
        mid_channels: width of both branches.
        context_channels: C_ctx, the features lifted into BEV.
        depth_bins: D.
        num_res_blocks: basic blocks of the depth branch (BEVDepth: 3).
        aspp: add BEVDepth's ASPP after the blocks.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        context_channels: int,
        depth_bins: int,
        num_res_blocks: int = 3,
        aspp: bool = True,
    ):
        super().__init__()
        self.in_channels = int(in_channels)
        self.context_channels = int(context_channels)
        self.depth_bins = int(depth_bins)
        self.reduce_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
        )
        self.camera_bn = nn.BatchNorm1d(CAMERA_PARAMS)
        self.context_mlp = Mlp(CAMERA_PARAMS, mid_channels, mid_channels)
        self.context_se = SELayer(mid_channels)
        self.context_conv = nn.Conv2d(mid_channels, context_channels, 1)
        self.depth_mlp = Mlp(CAMERA_PARAMS, mid_channels, mid_channels)
        self.depth_se = SELayer(mid_channels)
        layers: list[nn.Module] = [BasicBlock(mid_channels) for _ in range(num_res_blocks)]
        if aspp:
            layers.append(ASPP(mid_channels))
        layers += [
            # BEVDepth's deformable conv, as a plain conv: see the module docstring.
            nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, depth_bins, 1),
        ]
        self.depth_conv = nn.Sequential(*layers)
        pointwise_as_gemm(self)  # every 1x1 conv here, off oneDNN's 1x1 kernels: components/pointwise.py

    def forward(
        self, x: torch.Tensor, K: torch.Tensor, ego_from_cam: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(depth_logits (B*N, D, h, w), context (B*N, C_ctx, h, w))`` of ``x (B*N, C_in, h, w)``, ``K (B*N, 3, 3)``,
        ``ego_from_cam (B*N, 4, 4)``."""
        R = x.shape[0]
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"x must be (B*N, {self.in_channels}, h, w); got {tuple(x.shape)}"
        )
        assert K.shape == (R, 3, 3) and ego_from_cam.shape == (R, 4, 4), (
            f"K must be ({R}, 3, 3) and ego_from_cam ({R}, 4, 4); got {tuple(K.shape)}, {tuple(ego_from_cam.shape)}"
        )
        cam = self.camera_bn(camera_params(K, ego_from_cam).to(x.dtype))  # (B*N, 16)
        x = self.reduce_conv(x)  # (B*N, mid, h, w)
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(cam)[..., None, None]))
        return depth, context
