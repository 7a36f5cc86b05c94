"""Vectorised pillarisation: a batch of point clouds into padded pillars on a BEV grid.

A *pillar* is one cell of a BEV grid extended over the whole kept height range ``zbound``
(PointPillars). Its grid uses the axis convention of :mod:`bevlabels.grid`: coordinates
``(b, iy, ix)`` with rows along ego y and columns along ego x, so a pseudo-image scattered from
them is ``bev[b, :, iy, ix]`` and lines up with every other BEV array of the project.

Pillar size and the store's grid
--------------------------------
The grid bounds come from the project's one grid config (``xbound``, ``ybound``, ``zbound``,
interpolated as ``${grid.xbound}``...). By default a pillar *is* a grid cell, the pseudo-image
has the grid's ``(H, W)`` and a backbone of output stride 1 (see
:class:`~trainer.models.components.bev_backbone.BEVBackbone`) keeps the head's output, and the
BEV map that TiG-BEV distils and the teacher stage caches, exactly on the store's grid.
``pillar_size = [dx, dy]`` may be finer than the grid cell (CenterPoint's nuScenes pillars are
0.2 m for a 0.8 m output cell): the pseudo-image is then ``cell / pillar_size`` times larger per
axis and the backbone's output stride must be that same factor to come back to the grid;
:class:`~trainer.models.centerpoint.CenterPoint` checks this.

Dropping points and pillars (deterministic, as hard voxelisation in mmdet3d and spconv does)
-------------------------------------------------------------------------------------------
* a point is dropped if it is outside ``[xmin, xmax) x [ymin, ymax) x [zmin, zmax)`` or has a
  non-finite coordinate;
* a pillar keeps its first ``max_points_per_pillar`` points in input order;
* a sample keeps its first ``max_pillars`` pillars in order of their first point in the input;
* pillars are returned sorted by sample, then by that first-appearance order.

Shape letters: P points (of the whole batch), F point features (``x, y, z, intensity, dt``: 5),
V pillars kept, N max points per pillar, B batch, H/W rows/columns of the pillar grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from bevlabels.grid import GridSpec


class Pillars(NamedTuple):
    """Padded pillars of a batch, as returned by :class:`PillarVoxelizer`.

    ``features (V, N, F)`` the raw point features, zero past ``num_points``; ``num_points (V,)``
    int64 in ``[1, N]``; ``coords (V, 3)`` int64 ``(b, iy, ix)``; ``centres (V, 2)`` the metric
    ``(x, y)`` of each pillar's centre in the ego frame; ``batch_size`` B; ``grid_shape`` ``(H, W)``
    of the pillar grid (the pseudo-image size).
    """

    features: torch.Tensor
    num_points: torch.Tensor
    coords: torch.Tensor
    centres: torch.Tensor
    batch_size: int
    grid_shape: tuple[int, int]


def pillar_grid_spec(
    xbound: Sequence[float], ybound: Sequence[float], zbound: Sequence[float], pillar_size: Sequence[float] | None
) -> GridSpec:
    """The pillar grid: the bounds of the BEV grid with ``pillar_size = (dx, dy)`` cells (default: the grid's cells)."""
    if pillar_size is None:
        return GridSpec(tuple(xbound), tuple(ybound), tuple(zbound), name="pillars")
    if len(pillar_size) != 2:
        raise ValueError(f"pillar_size must be [dx, dy] in metres or None; got {list(pillar_size)}")
    dx, dy = (float(v) for v in pillar_size)
    return GridSpec((xbound[0], xbound[1], dx), (ybound[0], ybound[1], dy), tuple(zbound), name="pillars")


def batch_points(
    points: torch.Tensor | Sequence[torch.Tensor], batch_size: int | None = None
) -> tuple[torch.Tensor, int]:
    """One ``(P, 1+F)`` tensor with a leading batch-index column, and B, from a list or such a tensor.

    A list of ``(P_b, F)`` clouds gives ``B = len(list)``; a ``(P, 1+F)`` tensor gives
    ``batch_size`` if passed, else ``max(b) + 1``.
    """
    if isinstance(points, torch.Tensor):
        assert points.ndim == 2 and points.shape[1] >= 2, (
            f"points must be (P, 1+F) with a batch column; got {tuple(points.shape)}"
        )
        if batch_size is None:
            batch_size = int(points[:, 0].max().item()) + 1 if len(points) else 1
        return points, batch_size
    clouds = list(points)
    assert clouds, "an empty list of point clouds: pass at least one (possibly empty) (P_b, F) tensor"
    for c in clouds:
        assert c.ndim == 2, f"each cloud must be (P_b, F); got {tuple(c.shape)}"
    assert batch_size is None or batch_size == len(clouds), f"batch_size {batch_size} != {len(clouds)} clouds"
    rows = [torch.cat([c.new_full((len(c), 1), float(b)), c], 1) for b, c in enumerate(clouds)]
    return torch.cat(rows, 0), len(clouds)


class PillarVoxelizer(nn.Module):
    """Points ``(P, 1+F)`` (batch column first) or a list of B ``(P_b, F)`` clouds into :class:`Pillars`.

    Args:
        xbound, ybound: ``[min, max, cell]`` metres of the BEV grid (the store's grid).
        zbound: ``[min, max, step]``: points with ``z`` outside ``[min, max)`` are dropped.
        pillar_size: ``[dx, dy]`` metres of one pillar; ``None`` (default) uses the grid's cell.
        max_points_per_pillar: N, points kept per pillar (the first ones in input order).
        max_pillars: pillars kept per sample; an int, or ``[train, eval]`` as mmdet3d's
            ``max_voxels`` (CenterPoint on nuScenes: 30000 / 60000 at 0.2 m pillars).
        point_dim: F, the point features after the batch column (x, y, z, intensity, dt: 5).

    Has no parameters; a module so that it moves with the model and prints in its repr.
    """

    def __init__(
        self,
        xbound: Sequence[float],
        ybound: Sequence[float],
        zbound: Sequence[float],
        pillar_size: Sequence[float] | None = None,
        max_points_per_pillar: int = 20,
        max_pillars: int | Sequence[int] = 30000,
        point_dim: int = 5,
    ):
        super().__init__()
        self.grid = GridSpec(tuple(xbound), tuple(ybound), tuple(zbound))
        self.pillar_grid = pillar_grid_spec(xbound, ybound, zbound, pillar_size)
        if isinstance(max_pillars, int):
            max_pillars = (max_pillars, max_pillars)
        self.max_pillars = tuple(int(m) for m in max_pillars)
        if len(self.max_pillars) != 2 or min(self.max_pillars) < 1:
            raise ValueError(f"max_pillars must be a positive int or [train, eval]; got {list(self.max_pillars)}")
        if max_points_per_pillar < 1 or point_dim < 3:
            raise ValueError(
                f"need max_points_per_pillar >= 1 and point_dim >= 3; got {max_points_per_pillar}, {point_dim}"
            )
        self.max_points = int(max_points_per_pillar)
        self.point_dim = int(point_dim)

    def extra_repr(self) -> str:
        return (
            f"pillar_grid={self.pillar_grid.shape} cells of {self.pillar_grid.cell_size} m, "
            f"max_points={self.max_points}, max_pillars={self.max_pillars}, point_dim={self.point_dim}"
        )

    def forward(self, points: torch.Tensor | Sequence[torch.Tensor], batch_size: int | None = None) -> Pillars:
        """Pillars of a batch: ``points (P, 1+F)`` with the batch index in column 0, or a list of ``(P_b, F)``."""
        points, batch_size = batch_points(points, batch_size)
        assert points.shape[1] == 1 + self.point_dim, (
            f"points must be (P, 1+{self.point_dim}) [b, x, y, z, ...]; got {tuple(points.shape)}"
        )
        grid = self.pillar_grid
        ny, nx = grid.shape
        max_pillars = self.max_pillars[0] if self.training else self.max_pillars[1]
        device = points.device
        b = points[:, 0].long()
        feats = points[:, 1:]

        # Cell indices in float64, so that the bin edges do not depend on the cloud's dtype.
        xyz = feats[:, :3].double()
        ix, iy, inside = grid.cell_index(xyz[:, :2])
        keep = (
            inside
            & torch.isfinite(xyz).all(1)
            & (xyz[:, 2] >= grid.zbound[0])
            & (xyz[:, 2] < grid.zbound[1])
            & (b >= 0)
            & (b < batch_size)
        )
        pidx = keep.nonzero()[:, 0]  # (n,) kept points, ascending: input order is preserved
        n = len(pidx)
        key = (b[pidx] * ny + iy[pidx]) * nx + ix[pidx]  # (n,) flat (b, iy, ix)
        uniq, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)  # U pillars, sorted by key
        arange_n = torch.arange(n, device=device)
        first = torch.full_like(uniq, n).scatter_reduce(0, inv, arange_n, reduce="amin")  # (U,) first point

        # Order pillars by (sample, first appearance) and keep the first max_pillars of each sample.
        pb = uniq // (ny * nx)
        perm = torch.argsort(pb * (n + 1) + first)  # (U,) all keys distinct: deterministic
        pb_sorted = pb[perm]
        rank = torch.arange(len(uniq), device=device) - torch.searchsorted(pb_sorted, pb_sorted)
        kept = perm[rank < max_pillars]  # (V,) ids into uniq, in output order
        new_id = torch.full_like(uniq, -1)
        new_id[kept] = torch.arange(len(kept), device=device)

        # Slot of each point in its pillar: its rank among the pillar's points in input order.
        inv_sorted, order = torch.sort(inv, stable=True)  # (n,) points grouped by pillar, input order within
        start = torch.cumsum(counts, 0) - counts  # (U,) first slot of each pillar in `order`
        slot = arange_n - start[inv_sorted]
        pid = new_id[inv_sorted]
        ok = (pid >= 0) & (slot < self.max_points)

        V = len(kept)
        features = feats.new_zeros(V, self.max_points, self.point_dim)
        features[pid[ok], slot[ok]] = feats[pidx[order[ok]]]
        num_points = counts[kept].clamp(max=self.max_points)
        cell = uniq[kept] % (ny * nx)
        coords = torch.stack([pb[kept], cell // nx, cell % nx], 1)  # (V, 3) b, iy, ix
        centres = grid.cell_to_metric(coords[:, [2, 1]].to(feats.dtype) + 0.5)  # (V, 2) x, y
        return Pillars(features, num_points, coords, centres, batch_size, (ny, nx))
