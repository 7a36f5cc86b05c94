"""PointPillars' pillar feature net (PFN) and the scatter of pillar features to a BEV pseudo-image.

Each point of a pillar is augmented (PointPillars, Lang et al. 2019; CenterPoint's pillar model)
with its offset to the mean of its pillar's points ``(xc, yc, zc)`` and to the pillar's centre
``(xp, yp)``, so the net sees the raw features ``x, y, z, intensity, dt`` (``dt``: the sweep's
time lag behind the keyframe, in seconds, which lets a multi-sweep cloud carry motion) plus 5
geometric channels. A shared linear + BatchNorm + ReLU runs on every real point and a max over
the pillar's points gives one feature per pillar. BatchNorm statistics are taken over real points
only (the padding slots are never fed to it), and padded slots are zero after the ReLU, so they
never win the max of a non-empty pillar.

Shape letters: V pillars, N max points per pillar, F raw point features, C channels,
B batch, H/W the pillar grid (rows along ego y, columns along ego x, see ``bevlabels.grid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.voxelize import Pillars

#: geometric channels added to each point: offsets to the pillar mean (3) and to the pillar centre (2)
N_AUGMENT = 5


def scatter_to_bev(
    pillar_features: torch.Tensor, coords: torch.Tensor, batch_size: int, grid_shape: tuple[int, int]
) -> torch.Tensor:
    """The pseudo-image ``(B, C, H, W)``: ``pillar_features (V, C)`` placed at ``coords (V, 3)`` ``(b, iy, ix)``, zero elsewhere.

    One index assignment, no loop over pillars; each ``(b, iy, ix)`` must occur at most once (as
    :class:`~trainer.models.components.voxelize.PillarVoxelizer` guarantees).
    """
    assert pillar_features.ndim == 2, f"pillar_features must be (V, C); got {tuple(pillar_features.shape)}"
    assert coords.shape == (len(pillar_features), 3), f"coords must be (V, 3) (b, iy, ix); got {tuple(coords.shape)}"
    H, W = grid_shape
    C = pillar_features.shape[1]
    flat = (coords[:, 0] * H + coords[:, 1]) * W + coords[:, 2]  # (V,)
    canvas = pillar_features.new_zeros(batch_size * H * W, C)
    canvas[flat] = pillar_features
    return canvas.view(batch_size, H, W, C).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


class PFNLayer(nn.Module):
    """Linear (no bias) + BatchNorm1d + ReLU on the real points of each pillar, then the max over them.

    ``forward(x (V, N, C_in), mask (V, N)) -> (per-point (V, N, C_out), pillar max (V, C_out))``;
    per-point features are zero at padded slots, in the linear layer's output dtype (bf16 / fp16 under autocast).
    """

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-3, bn_momentum: float = 0.01):
        super().__init__()
        # eps/momentum: mmdet3d's CenterPoint pillar config (BN1d eps=1e-3, momentum=0.01).
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        V, N, _ = x.shape
        z = self.linear(x[mask])  # (n_real, C_out)
        if self.training and len(z) < 2:  # batch statistics of one point are undefined: use the running ones
            n = self.norm
            z = F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, training=False, eps=n.eps)
        else:
            z = self.norm(z)
        y_real = torch.relu(z)
        # The linear's dtype, not the input's: under autocast it is bf16 / fp16, and index_put needs them equal.
        y = y_real.new_zeros(V, N, y_real.shape[1])
        y[mask] = y_real
        return y, y.amax(1)  # ReLU >= 0 and padding is 0: the max is that of real points


class PillarEncoder(nn.Module):
    """Pillars to a BEV pseudo-image ``(B, C, H, W)``: augment points, PFN layers, max, scatter.

    Args:
        in_channels: F, raw point features (x, y, z, intensity, dt: 5).
        feat_channels: output channels of the PFN layers; the last is C. As in PointPillars, a
            non-last layer of c channels computes c/2 per point and concatenates the pillar max.

    Attributes:
        out_channels: C.
    """

    def __init__(self, in_channels: int = 5, feat_channels: Sequence[int] = (64,)):
        super().__init__()
        feat_channels = [int(c) for c in feat_channels]
        if not feat_channels:
            raise ValueError("feat_channels must list at least one PFN layer width")
        self.in_channels = int(in_channels)
        layers = []
        c_in = self.in_channels + N_AUGMENT
        for i, c in enumerate(feat_channels):
            last = i == len(feat_channels) - 1
            if not last and c % 2:
                raise ValueError(f"a non-last PFN layer width must be even (c/2 per point + c/2 max); got {c}")
            layers.append(PFNLayer(c_in, c if last else c // 2))
            c_in = c
        self.layers = nn.ModuleList(layers)
        self.out_channels = feat_channels[-1]

    def augment(self, pillars: Pillars) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point inputs ``(V, N, F + 5)`` (raw, offset to pillar mean, offset to pillar centre) and the mask ``(V, N)``."""
        pts = pillars.features
        V, N, F = pts.shape
        assert F == self.in_channels, f"pillar features have F={F} channels; the encoder expects {self.in_channels}"
        mask = torch.arange(N, device=pts.device)[None] < pillars.num_points[:, None]  # (V, N)
        m = mask[..., None].to(pts.dtype)
        mean = (pts[..., :3] * m).sum(1) / pillars.num_points.clamp(min=1)[:, None].to(pts.dtype)  # (V, 3)
        to_mean = pts[..., :3] - mean[:, None]  # (V, N, 3)
        to_centre = pts[..., :2] - pillars.centres[:, None].to(pts.dtype)  # (V, N, 2)
        return torch.cat([pts, to_mean, to_centre], -1) * m, mask  # (V, N, F + 5)

    def forward(self, pillars: Pillars) -> torch.Tensor:
        """The pseudo-image ``(B, C, H, W)`` of a batch of :class:`Pillars`."""
        x, mask = self.augment(pillars)
        pooled = x.new_zeros(len(x), self.out_channels)
        if len(x):
            for i, layer in enumerate(self.layers):
                per_point, pooled = layer(x, mask)
                if i < len(self.layers) - 1:
                    x = torch.cat([per_point, pooled[:, None].expand_as(per_point)], -1) * mask[..., None]
        return scatter_to_bev(pooled, pillars.coords, pillars.batch_size, pillars.grid_shape)
