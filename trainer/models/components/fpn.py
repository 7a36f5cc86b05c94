"""A feature pyramid neck (Lin et al., 2017) over the image backbone's maps.

Lateral 1x1 convs bring every backbone level to ``out_channels``; a top-down pass adds each
coarser level, upsampled (nearest), to the next finer one; a 3x3 conv smooths each sum that is
returned. ``out_strides`` says which levels are returned: the depth net of BEVDepth reads one (the
lift-splat stride, 16), a Sparse4D-style head (DESIGN.md) aggregates several. Only what a returned
level depends on is built: a smoothing conv per returned level, and laterals for the returned
levels and the coarser ones that feed them top-down. An input level finer than every returned one
would have an unused lateral (which breaks DDP without ``find_unused_parameters``), so it is
refused: drop that stage from the backbone's ``out_stages`` instead.

Shape letters: B batch, N cameras (folded into the batch by the caller), C channels, H_i/W_i the
size of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.pointwise import pointwise_as_gemm


class FPN(nn.Module):
    """Maps ``[(B*N, C_i, H_i, W_i)]`` (finest first) to ``[(B*N, out_channels, H_o, W_o)]``, one per returned level.

    Args:
        in_channels: channels of each input level, finest first (the backbone's ``out_channels``).
        out_channels: channels of every output level.
        in_strides: stride of each input level (the backbone's ``out_strides``).
        out_strides: strides of the levels returned, a subset of ``in_strides`` whose finest is the
            finest input (``None``: every level).

    Attributes:
        in_strides, out_strides: as given; :meth:`level_of_stride` indexes the returned list.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 128,
        in_strides: Sequence[int] | None = None,
        out_strides: Sequence[int] | None = None,
    ):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = int(out_channels)
        if in_strides is None:
            in_strides = [2**i for i in range(len(self.in_channels))]
        self.in_strides = [int(s) for s in in_strides]
        if len(self.in_strides) != len(self.in_channels):
            raise ValueError(f"FPN: {len(self.in_channels)} in_channels but {len(self.in_strides)} in_strides")
        if self.in_strides != sorted(set(self.in_strides)):
            raise ValueError(f"FPN: in_strides {self.in_strides} must be ascending (finest first) and unique")
        self.out_strides = list(self.in_strides) if out_strides is None else sorted(int(s) for s in out_strides)
        unknown = sorted(set(self.out_strides) - set(self.in_strides))
        if unknown or not self.out_strides:
            raise ValueError(
                f"FPN: out_strides {self.out_strides} must be a non-empty subset of in_strides {self.in_strides}"
            )
        if self.out_strides[0] != self.in_strides[0]:
            unused = [s for s in self.in_strides if s < self.out_strides[0]]
            raise ValueError(
                f"FPN: input levels of stride {unused} are finer than every returned level {self.out_strides}, so their "
                "laterals would be unused (DDP fails on unused parameters): drop them from the backbone's out_stages"
            )
        self.lateral = nn.ModuleList(nn.Conv2d(c, self.out_channels, 1) for c in self.in_channels)
        self.smooth = nn.ModuleDict(
            {
                str(s): nn.Sequential(
                    nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(self.out_channels),
                    nn.ReLU(inplace=True),
                )
                for s in self.out_strides
            }
        )
        pointwise_as_gemm(self)

    def level_of_stride(self, stride: int) -> int:
        """Index of the output level with this stride; ``ValueError`` naming the strides there are."""
        if stride not in self.out_strides:
            raise ValueError(
                f"no returned FPN level has stride {stride}; returned levels have strides {self.out_strides}"
            )
        return self.out_strides.index(stride)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        assert len(feats) == len(self.lateral), f"FPN expects {len(self.lateral)} levels; got {len(feats)}"
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]  # each (B*N, C, H_i, W_i)
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse to fine
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [self.smooth[str(s)](x) for s, x in zip(self.in_strides, lat) if s in self.out_strides]
