"""A feature pyramid neck (Lin et al., 2017) over the image backbone's maps.

Lateral 1x1 convs bring every backbone level to ``out_channels``; a top-down pass adds each
coarser level, upsampled (nearest), to the next finer one; a 3x3 conv smooths each sum. Every level
is returned: the depth net reads the one at the lift-splat stride (BEVDepth's 16), and a later
Sparse4D-style head (DESIGN.md) aggregates all of them, so the neck keeps the pyramid rather than
collapsing it to one map.

Shape letters: B batch, N cameras (folded into the batch by the caller), C channels, H_i/W_i the
size of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Maps ``[(B*N, C_i, H_i, W_i)]`` (finest first) to ``[(B*N, out_channels, H_i, W_i)]``, same sizes.

    Args:
        in_channels: channels of each input level, finest first (the backbone's ``out_channels``).
        out_channels: channels of every output level.
        in_strides: stride of each input level (the backbone's ``out_strides``); kept as
            :attr:`out_strides` so callers can pick a level by stride.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128, in_strides: Sequence[int] | None = None):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = int(out_channels)
        if in_strides is None:
            in_strides = [2**i for i in range(len(self.in_channels))]
        self.out_strides = [int(s) for s in in_strides]
        if len(self.out_strides) != len(self.in_channels):
            raise ValueError(f"FPN: {len(self.in_channels)} in_channels but {len(self.out_strides)} in_strides")
        self.lateral = nn.ModuleList(nn.Conv2d(c, self.out_channels, 1) for c in self.in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(self.out_channels),
                nn.ReLU(inplace=True),
            )
            for _ in self.in_channels
        )

    def level_of_stride(self, stride: int) -> int:
        """Index of the output level with this stride; ``ValueError`` naming the strides there are."""
        if stride not in self.out_strides:
            raise ValueError(f"no FPN level has stride {stride}; levels have strides {self.out_strides}")
        return self.out_strides.index(stride)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        assert len(feats) == len(self.lateral), f"FPN expects {len(self.lateral)} levels; got {len(feats)}"
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]  # each (B*N, C, H_i, W_i)
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse to fine
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [smooth(x) for smooth, x in zip(self.smooth, lat)]
