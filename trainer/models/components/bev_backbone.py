"""A SECOND / CenterPoint-style 2D BEV backbone with an FPN-like neck (SECOND's ``SECONDFPN``).

The backbone is a stack of blocks; block ``i`` starts with a 3x3 conv of stride
``layer_strides[i]`` and adds ``layer_nums[i]`` stride-1 3x3 convs (all conv + BN + ReLU). The neck
brings every block's output to one common stride (a transposed conv for an upsampling stride
``s >= 1``, a strided conv for ``s < 1``, e.g. CenterPoint's 0.5), and concatenates them along
channels. That concatenation is the map the head reads and TiG-BEV distils (``bev``).

Output stride
-------------
``out_stride = prod(layer_strides[:i+1]) / upsample_strides[i]``, the same for every block (checked
at construction). The head's map has ``(H / out_stride, W / out_stride)`` cells of
``pillar_size * out_stride`` metres. The defaults (strides 1, 2, 2; upsampling 1, 2, 4) give stride
1: with pillars of the store grid's cell size, the output *is* the store's grid. CenterPoint's
nuScenes pillar model (0.2 m pillars, 0.8 m output cells) is ``layer_strides=[2, 2, 2]``,
``upsample_strides=[0.5, 1, 2]``: stride 4.

Shape letters: B batch, C channels, H/W rows (ego y) and columns (ego x) of the input BEV map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from trainer.models.components.pointwise import pointwise_as_gemm

# BatchNorm eps/momentum of mmdet3d's SECOND/SECONDFPN in the CenterPoint configs.
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class BEVBackbone(nn.Module):
    """BEV map ``(B, C_in, H, W)`` to the neck's map ``(B, sum(upsample_channels), H / s, W / s)``, s = ``out_stride``.

    Args:
        in_channels: C_in (the pillar encoder's output channels).
        layer_nums: extra stride-1 convs per block.
        layer_strides: stride of each block's first conv (integers).
        layer_channels: channels of each block.
        upsample_strides: per block, the factor from its stride to the output stride
            (``>= 1`` integer: transposed conv; ``< 1`` with integer ``1/s``: strided conv).
        upsample_channels: channels of each block after the neck; the output has their sum.

    Attributes:
        out_channels: ``sum(upsample_channels)``.
        out_stride: the output's stride relative to the input map (an int).
    """

    def __init__(
        self,
        in_channels: int = 64,
        layer_nums: Sequence[int] = (3, 5, 5),
        layer_strides: Sequence[int] = (1, 2, 2),
        layer_channels: Sequence[int] = (64, 128, 256),
        upsample_strides: Sequence[float] = (1, 2, 4),
        upsample_channels: Sequence[int] = (128, 128, 128),
    ):
        super().__init__()
        n = len(layer_nums)
        lists = {
            "layer_strides": layer_strides,
            "layer_channels": layer_channels,
            "upsample_strides": upsample_strides,
            "upsample_channels": upsample_channels,
        }
        for name, value in lists.items():
            if len(value) != n:
                raise ValueError(f"BEVBackbone.{name} has {len(value)} entries; layer_nums has {n}")
        strides = [int(s) for s in layer_strides]
        ups = [float(u) for u in upsample_strides]
        cum = [math.prod(strides[: i + 1]) for i in range(n)]
        out_strides = [c / u for c, u in zip(cum, ups)]
        if (
            any(abs(s - out_strides[0]) > 1e-9 for s in out_strides)
            or abs(out_strides[0] - round(out_strides[0])) > 1e-9
        ):
            raise ValueError(
                f"every block must reach the same integer output stride: block strides {cum} / upsample_strides "
                f"{ups} = {out_strides}"
            )
        self.out_stride = int(round(out_strides[0]))
        self.total_stride = cum[-1]

        blocks, deblocks = [], []
        c_in = int(in_channels)
        for i in range(n):
            c = int(layer_channels[i])
            blocks.append(
                nn.Sequential(
                    conv_bn_relu(c_in, c, stride=strides[i]), *(conv_bn_relu(c, c) for _ in range(int(layer_nums[i])))
                )
            )
            c_up = int(upsample_channels[i])
            if ups[i] >= 1:
                k = int(round(ups[i]))
                if abs(ups[i] - k) > 1e-9:
                    raise ValueError(f"upsample_strides[{i}] = {ups[i]}: an upsampling stride must be an integer")
                up = nn.ConvTranspose2d(c, c_up, k, stride=k, bias=False)
            else:
                k = int(round(1 / ups[i]))
                if abs(1 / ups[i] - k) > 1e-9:
                    raise ValueError(f"upsample_strides[{i}] = {ups[i]}: a downsampling stride must be 1/integer")
                up = nn.Conv2d(c, c_up, k, stride=k, bias=False)
            deblocks.append(
                nn.Sequential(up, nn.BatchNorm2d(c_up, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))
            )
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.deblocks = nn.ModuleList(deblocks)
        self.in_channels = int(in_channels)
        self.out_channels = sum(int(c) for c in upsample_channels)
        pointwise_as_gemm(self)  # a 1x1 (stride-1) deblock, if configured, off oneDNN's 1x1 kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The neck's map ``(B, out_channels, H / out_stride, W / out_stride)`` of ``x (B, C_in, H, W)``."""
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"x must be (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
        )
        H, W = x.shape[-2:]
        assert H % self.total_stride == 0 and W % self.total_stride == 0, (
            f"the BEV map ({H}, {W}) must be divisible by the backbone's total stride {self.total_stride}"
        )
        outs = []
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            outs.append(deblock(x))
        return torch.cat(outs, 1)  # (B, out_channels, H / out_stride, W / out_stride)
