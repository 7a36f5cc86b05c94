"""Depth metrics of a camera model's predicted depth distributions, on LiDAR pixels (TiG-BEV's Table 6).

TiG-BEV compares target (foreground) depth with the metrics of the KITTI depth benchmark, as the
depth-estimation literature computes them (Eigen et al. 2014; BTS's ``compute_errors``). With
``p`` the predicted and ``g`` the LiDAR depth of a pixel (metres) and ``e = ln p - ln g``:

==========  ==============================================  ======
SILog       ``100 * sqrt(mean(e^2) - mean(e)^2)``           lower
AbsRel      ``mean(|p - g| / g)``                           lower
SqRel       ``mean((p - g)^2 / g)``                         lower
log10       ``mean(|log10 p - log10 g|)``                   lower
RMSE        ``sqrt(mean((p - g)^2))`` metres                lower
==========  ==============================================  ======

Here ``p`` is the *expected* depth of the predicted distribution over the D bins (bin centres
weighted by their probabilities, TiG-BEV's Eq. 1) at the feature cell a LiDAR pixel falls in, and
``g`` the pixel's own LiDAR depth; only pixels with ``obj >= 0`` (inside a GT box: foreground)
and ``g`` within the depth bins' range (what the model can express) count. The means are over all
pixels of the evaluated split pooled (every pixel weighs the same, not every image).

:class:`DepthMetrics` accumulates sums batch by batch, so a whole split never sits in memory.

Shape letters: B batch, N cameras, h/w feature-map rows/columns, R pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: the metrics, in TiG-BEV's Table 6 order
METRICS = ("silog", "abs_rel", "sq_rel", "log10", "rmse")


def pixel_pairs(
    expected_depth: torch.Tensor,
    fg_px: Sequence[torch.Tensor],
    stride: int,
    depth_range: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred (R,), gt (R,))`` float64 depths of the foreground LiDAR pixels of a batch.

    Args:
        expected_depth: ``(B, N, h, w)`` predicted expected depth per feature cell.
        fg_px: B tensors ``(R_b, 5)``, rows ``cam, u, v, depth, obj`` in augmented-image pixels
            (the camera batch's ``fg_px``; every row has ``obj >= 0``).
        stride: pixels per feature cell.
        depth_range: ``(d_min, d_max)``: pixels whose LiDAR depth lies outside are left out.
    """
    B, N, h, w = expected_depth.shape
    assert len(fg_px) == B, f"{len(fg_px)} fg_px tables for a batch of {B}"
    preds, gts = [], []
    for b, px in enumerate(fg_px):  # B samples; each sample's pixels at once
        px = px.to(expected_depth.device)
        cam, iy, ix = px[:, 0].long(), (px[:, 2] // stride).long(), (px[:, 1] // stride).long()
        gt = px[:, 3].double()
        ok = (cam >= 0) & (cam < N) & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        ok &= (px[:, 4] >= 0) & (gt >= depth_range[0]) & (gt < depth_range[1])
        preds.append(expected_depth[b, cam[ok], iy[ok], ix[ok]].double())
        gts.append(gt[ok])
    if not preds:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty
    return torch.cat(preds), torch.cat(gts)


class DepthMetrics:
    """Running sums of the depth metrics (see the module docstring) over pixel pairs; :meth:`compute` gives them."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sums = dict.fromkeys(("e", "e2", "abs_rel", "sq_rel", "log10", "sq"), 0.0)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add pixels: predicted and LiDAR depths ``(R,)``, both > 0."""
        assert pred.shape == gt.shape and pred.ndim == 1, (
            f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must be (R,)"
        )
        if pred.numel() == 0:
            return
        p, g = pred.double().clamp(min=1e-3), gt.double()
        e = torch.log(p) - torch.log(g)
        self.n += int(p.numel())
        self.sums["e"] += float(e.sum())
        self.sums["e2"] += float((e * e).sum())
        self.sums["abs_rel"] += float(((p - g).abs() / g).sum())
        self.sums["sq_rel"] += float(((p - g) ** 2 / g).sum())
        self.sums["log10"] += float((torch.log10(p) - torch.log10(g)).abs().sum())
        self.sums["sq"] += float(((p - g) ** 2).sum())

    def state(self) -> list[float]:
        """The running sums as one list (pixel count first): what DDP ranks add up (:meth:`from_state`)."""
        return [float(self.n), *self.sums.values()]

    @classmethod
    def from_state(cls, state: Sequence[float]) -> DepthMetrics:
        """Metrics whose running sums are ``state`` (:meth:`state`'s layout, e.g. summed over DDP ranks)."""
        m = cls()
        assert len(state) == 1 + len(m.sums), f"a state of {1 + len(m.sums)} sums; got {len(state)}"
        m.n = int(round(state[0]))
        m.sums = dict(zip(m.sums, (float(v) for v in state[1:])))
        return m

    def compute(self) -> dict[str, float]:
        """``{silog, abs_rel, sq_rel, log10, rmse, pixels}``; NaN metrics when no pixel was added."""
        n = self.n
        if n == 0:
            return {**dict.fromkeys(METRICS, float("nan")), "pixels": 0}
        mean_e, mean_e2 = self.sums["e"] / n, self.sums["e2"] / n
        return {
            "silog": 100.0 * math.sqrt(max(mean_e2 - mean_e**2, 0.0)),
            "abs_rel": self.sums["abs_rel"] / n,
            "sq_rel": self.sums["sq_rel"] / n,
            "log10": self.sums["log10"] / n,
            "rmse": math.sqrt(self.sums["sq"] / n),
            "pixels": n,
        }
