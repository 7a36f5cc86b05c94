"""A BEV map given to the head as an input (:class:`MapInput`): the upper bound of what a perfect map could give a head.

Distillation teaches the camera BEV map to predict the store's grid (``dino/feat``); on an oracle store
(``features=synthetic_oracle``: what is where, known) this module instead *hands* the grid to the head, so the head
reads the camera's BEV map together with (``mode="concat"``) or instead of (``mode="replace"``) the oracle's:

``bev' = adapter([bev, map, occupied])``   (concat)        ``bev' = adapter([map, occupied])``   (replace)

``adapter`` is one 1x1 convolution back to the BEV map's channels, so the head is unchanged. ``map`` is the store's
grid in the batch's (augmented) BEV frame, resampled to the BEV map's cells when the two differ (an occupancy-weighted
mean when the map is finer, nearest when it is coarser); ``occupied`` is one channel, 1 where the store pooled any
point (``dino/count > 0``), so an empty cell's zero feature is not read as a feature. The map is an input: nothing
trains it, and no distillation loss is needed.

Shape letters: B batch, C channels of the BEV map, C_m of the given map, H/W BEV grid, H_m/W_m the map's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("concat", "replace")


def resample_map(feat: torch.Tensor, count: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feat (B, C_m, H, W), occupied (B, 1, H, W))`` of a map ``feat (B, C_m, H_m, W_m)`` with point ``count
    (B, H_m, W_m)``, on ``hw = (H, W)`` cells: as is on the same grid; the occupied cells' mean (and the occupied
    share) when finer; nearest when coarser."""
    assert feat.ndim == 4 and count.shape == (feat.shape[0], *feat.shape[2:]), (
        f"map (B, C_m, H_m, W_m) and count (B, H_m, W_m) expected; got {tuple(feat.shape)}, {tuple(count.shape)}"
    )
    occ = (count > 0).to(feat.dtype)[:, None]  # (B, 1, H_m, W_m)
    feat = feat * occ  # an empty cell carries nothing, whatever the store wrote there
    if tuple(feat.shape[-2:]) == tuple(hw):
        return feat, occ
    if feat.shape[-2] >= hw[0] and feat.shape[-1] >= hw[1]:
        share = F.adaptive_avg_pool2d(occ, hw)  # (B, 1, H, W)
        mean = F.adaptive_avg_pool2d(feat, hw) / share.clamp(min=1e-6)
        return mean, share
    return F.interpolate(feat, size=hw, mode="nearest"), F.interpolate(occ, size=hw, mode="nearest")


class MapInput(nn.Module):
    """The head's BEV input with a given map: ``forward(bev (B, C, H, W), feat (B, C_m, H_m, W_m), count) -> (B, C, H, W)``.

    Args:
        bev_channels: C of the camera BEV map (and of the result: the head's input is unchanged).
        map_channels: C_m of the store's grid (``dino/feat``); checked against the store at setup.
        mode: ``"concat"`` (the camera map and the given map) or ``"replace"`` (the given map alone; the camera map
            then stays in the graph with a zero gradient, so no parameter goes unused under DDP).
    """

    def __init__(self, bev_channels: int, map_channels: int, mode: str = "concat"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model.detector.map_input.mode must be one of {MODES}; got {mode!r}")
        self.bev_channels, self.map_channels, self.mode = int(bev_channels), int(map_channels), mode
        in_channels = self.map_channels + 1 + (self.bev_channels if mode == "concat" else 0)
        self.adapter = nn.Conv2d(in_channels, self.bev_channels, 1)

    def forward(self, bev: torch.Tensor, feat: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        assert bev.ndim == 4 and bev.shape[1] == self.bev_channels, (
            f"bev must be (B, {self.bev_channels}, H, W); got {tuple(bev.shape)}"
        )
        if feat.shape[1] != self.map_channels:
            raise ValueError(
                f"the given map has {feat.shape[1]} channels; model.detector.map_input.map_channels is "
                f"{self.map_channels}: set it to {feat.shape[1]}"
            )
        feat, occ = resample_map(feat.to(bev.dtype), count, tuple(bev.shape[-2:]))  # (B, C_m, H, W), (B, 1, H, W)
        given = torch.cat([feat, occ], 1)
        if self.mode == "concat":
            return self.adapter(torch.cat([bev, given], 1))
        return self.adapter(given) + 0.0 * bev  # the camera map stays in the graph (DDP), contributing nothing
