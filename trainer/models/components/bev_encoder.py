"""The BEV encoder: residual conv stages over the splatted BEV map, fused back to the grid's resolution.

BEVDepth encodes the lift-splat map with a ResNet-18-like trunk and a SECONDFPN neck back to the
input resolution. This is that shape, small: stage i is ``num_blocks[i]`` residual basic blocks,
the first with stride ``strides[i]`` (a 1x1 projected shortcut when shape changes); every stage's
output is upsampled (bilinear) to the input's ``(H, W)``, concatenated, and fused by a 3x3 conv.
The output keeps the grid's resolution, cell for cell, because everything that reads it does so
on the store's grid: the CenterHead, the DINOv2 distillation head, and the later Sparse4D-style head
(DESIGN.md), which samples this same map; hence a component of its own.

Shape letters: B batch, C channels, H/W rows (ego y) and columns (ego x) of the BEV grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.pointwise import PointwiseConv2d, pointwise_as_gemm


class ResBlock(nn.Module):
    """Basic residual block ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(PointwiseConv2d(c_in, c_out, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)), inplace=True)


class BEVPreEncoder(nn.Module):
    """Residual blocks at one map's channels and resolution, ``(B, C, H, W) -> (B, C, H, W)``: BEVDet4D's per-frame
    pre-process, which turns each keyframe's lift-splat map into features before the two frames are fused (the
    two-frame :class:`~trainer.models.components.camera_bev.CameraBEV`'s ``pre_encoder``).

    Args:
        channels: C, lift-splat's ``Z * C_ctx``.
        num_blocks: stride-1 basic blocks (BEVDet4D: 2).
    """

    def __init__(self, channels: int, num_blocks: int = 2):
        super().__init__()
        if int(num_blocks) < 1:
            raise ValueError(f"BEVPreEncoder: num_blocks must be >= 1; got {num_blocks}")
        self.channels = int(channels)
        self.blocks = nn.Sequential(*[ResBlock(self.channels, self.channels) for _ in range(int(num_blocks))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.channels, (
            f"x must be (B, {self.channels}, H, W); got {tuple(x.shape)}"
        )
        return self.blocks(x)


class BEVEncoder(nn.Module):
    """BEV map ``(B, C_in, H, W)`` to ``(B, out_channels, H, W)``.

    Args:
        in_channels: C_in (lift-splat's ``Z * C_ctx``).
        channels: width of each stage.
        num_blocks: residual blocks of each stage.
        strides: stride of each stage's first block, relative to the previous stage.
        out_channels: channels of the fused output.
        fuse_kernel: kernel size of the conv that fuses the upsampled stages (3, or 1 for a cheaper
            fusion: at full BEV resolution it is the encoder's costliest layer).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        num_blocks: Sequence[int] = (2, 2, 2),
        strides: Sequence[int] = (1, 2, 2),
        out_channels: int = 128,
        fuse_kernel: int = 3,
    ):
        super().__init__()
        if not len(channels) == len(num_blocks) == len(strides) or not channels:
            raise ValueError(
                f"BEVEncoder: channels {list(channels)}, num_blocks {list(num_blocks)}, strides {list(strides)} "
                "must be non-empty and of equal length"
            )
        if fuse_kernel not in (1, 3):
            raise ValueError(f"BEVEncoder: fuse_kernel must be 1 or 3; got {fuse_kernel}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        stages, c = [], self.in_channels
        for width, n, stride in zip(channels, num_blocks, strides):
            blocks = [ResBlock(c, int(width), int(stride))] + [
                ResBlock(int(width), int(width)) for _ in range(int(n) - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            c = int(width)
        self.stages = nn.ModuleList(stages)
        self.fuse = nn.Sequential(
            nn.Conv2d(
                sum(int(w) for w in channels), self.out_channels, fuse_kernel, padding=fuse_kernel // 2, bias=False
            ),
            nn.BatchNorm2d(self.out_channels),
            nn.ReLU(inplace=True),
        )
        pointwise_as_gemm(self)  # the 1x1 shortcuts (and fusion), off oneDNN's 1x1 kernels: components/pointwise.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"x must be (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
        )
        size = x.shape[-2:]
        outs = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H / s_i, W / s_i)
            outs.append(
                x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            )
        return self.fuse(torch.cat(outs, 1))  # (B, out_channels, H, W)
