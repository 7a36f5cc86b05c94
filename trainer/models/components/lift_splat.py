"""Lift-splat (Philion & Fidler, 2020) as BEVDepth uses it: lift image features along depth bins, splat them into BEV.

Every cell of a camera's feature map is a ray; along it sit D candidate depths (the bins of
``dbound``). *Lift*: the frustum point at bin d of cell (y, x) carries ``p(d | y, x) * context[:, y, x]``,
the context features weighted by the predicted depth distribution. *Splat*: each frustum point is
placed in the (augmented) ego frame with the camera's ``K`` and ``ego_from_cam``, falls into one BEV
voxel of the grid, and the voxel sums what lands in it (sum pooling, as LSS and BEVDepth).

Depth bins
----------
``dbound = (d_min, d_max, step)``: D = (d_max - d_min) / step bins, bin k holding depths in
``[d_min + k step, d_min + (k+1) step)``. The frustum places bin k at its centre
``d_min + (k + 0.5) step`` (BEVDepth places it at the interval's start; the centre is the unbiased
choice and what the expected-depth metrics use). Depth targets use the same intervals
(:meth:`DepthBins.index`).

Frustum pixels
--------------
Feature cell (y, x) at stride s covers the pixels ``[s x, s (x+1)) x [s y, s (y+1))`` of the
augmented image (``bevlabels.geometry``'s continuous pixel convention), so its ray goes through
the pixel ``(s (x + 0.5), s (y + 0.5))``; the depth targets are min-pooled over the same pixels.

BEV pooling
-----------
Plain torch (DESIGN.md): the voxel of every frustum point is computed without gradients (it depends
only on the cameras), and the weighted features are summed into the voxels with one
``index_add_`` (whose backward is a gather); no Python loop over points. The output has
``nz * C`` channels, z-slab-major as LSS concatenates its slabs; the default ``zbound`` is one
8 m slab, so ``nz = 1``.

Shape letters: B batch, N cameras, D depth bins, C context channels, h/w feature-map rows/columns,
H/W BEV rows (ego y) / columns (ego x) of the grid, Z the grid's z slabs, P frustum points kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from bevlabels.grid import GridSpec, as_grid


class DepthBins:
    """The D depth bins of ``dbound = (d_min, d_max, step)`` metres; see the module docstring."""

    def __init__(self, dbound: Sequence[float]):
        d_min, d_max, step = (float(v) for v in dbound)
        n = (d_max - d_min) / step
        if not (d_max > d_min > 0 and step > 0) or abs(n - round(n)) > 1e-6:
            raise ValueError(f"dbound {list(dbound)}: need d_max > d_min > 0 and a whole number of step-wide bins")
        self.d_min, self.d_max, self.step, self.num = d_min, d_max, step, int(round(n))

    def centres(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Bin centres ``(D,)`` in metres."""
        return self.d_min + (torch.arange(self.num, device=device, dtype=dtype) + 0.5) * self.step

    def index(self, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin index ``(...)`` long of depths ``(...)`` and a mask ``(...)``, True where a depth falls in some bin."""
        k = torch.floor((depth - self.d_min) / self.step)
        valid = (k >= 0) & (k < self.num) & (depth > 0)
        return k.clamp(0, self.num - 1).long(), valid

    def __repr__(self) -> str:
        return f"DepthBins({self.d_min}, {self.d_max}, {self.step}: D={self.num})"


def bev_pool(depth: torch.Tensor, context: torch.Tensor, voxel: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """Sum pooling ``(num_voxels, C)`` of every frustum point's ``depth * context`` into its voxel.

    Args:
        depth: ``(B, N, D, h, w)`` per-bin weights (the depth distribution).
        context: ``(B, N, C, h, w)`` features of each feature-map cell.
        voxel: ``(B, N, D, h, w)`` long, the flat output row of each frustum point, -1 to drop it.
        num_voxels: rows of the output.
    """
    B, N, D, h, w = depth.shape
    C = context.shape[2]
    assert context.shape == (B, N, C, h, w), f"context must be ({B}, {N}, C, {h}, {w}); got {tuple(context.shape)}"
    assert voxel.shape == depth.shape, f"voxel {tuple(voxel.shape)} must match depth {tuple(depth.shape)}"
    flat_voxel = voxel.reshape(-1)  # (B*N*D*h*w,)
    kept = torch.nonzero(flat_voxel >= 0).squeeze(1)  # (P,) frustum points inside the grid
    # Frustum point ((b*N + n)*D + d)*h*w + y*w + x reads the context of pixel (b*N + n)*h*w + y*w + x.
    pixel = (kept // (D * h * w)) * (h * w) + kept % (h * w)  # (P,)
    ctx = context.permute(0, 1, 3, 4, 2).reshape(B * N * h * w, C)  # (B*N*h*w, C)
    values = depth.reshape(-1)[kept, None] * ctx[pixel]  # (P, C)
    out = values.new_zeros(num_voxels, C)
    return out.index_add_(0, flat_voxel[kept], values)


class LiftSplat(nn.Module):
    """Depth distributions and context of N cameras to a BEV map ``(B, Z*C, H, W)`` on ``grid``.

    Args:
        grid: the BEV grid (its ``zbound`` gives the z slabs kept).
        dbound: ``(d_min, d_max, step)`` of the depth bins.
        downsample: the feature map's stride in pixels of the (augmented) input image.
    """

    def __init__(self, grid: GridSpec | Mapping, dbound: Sequence[float], downsample: int):
        super().__init__()
        self.grid = as_grid(grid)
        self.bins = DepthBins(dbound)
        self.downsample = int(downsample)
        z0, z1, dz = self.grid.zbound
        self.nz = max(1, int(math.ceil((z1 - z0) / dz - 1e-6)))

    @property
    def depth_bins(self) -> int:
        return self.bins.num

    def frustum(self, image_hw: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
        """``(D, h, w, 3)``: pixel ``u, v`` of each feature cell's centre ray and the bin-centre depth."""
        H, W = image_hw
        s = self.downsample
        assert H % s == 0 and W % s == 0, f"image {H}x{W} is not a whole number of {s}-pixel feature cells"
        h, w = H // s, W // s
        u = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        v = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        d = self.bins.centres(device, dtype)
        dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")  # each (D, h, w)
        return torch.stack([uu, vv, dd], -1)

    def geometry(self, K: torch.Tensor, ego_from_cam: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """Ego-frame points ``(B, N, D, h, w, 3)`` of the frustum of cameras ``K (B, N, 3, 3)``, ``ego_from_cam (B, N, 4, 4)``.

        ``ego_from_cam`` may be any affine map (a BEV augmentation folds scale and flips into it).
        """
        assert K.ndim == 4 and K.shape[-2:] == (3, 3), f"K must be (B, N, 3, 3); got {tuple(K.shape)}"
        assert ego_from_cam.shape == (*K.shape[:2], 4, 4), (
            f"ego_from_cam must be (B, N, 4, 4); got {tuple(ego_from_cam.shape)}"
        )
        # Geometry in float64: a metre-scale error at 50 m would move points across 0.8 m cells.
        fr = self.frustum(image_hw, K.device, torch.float64)  # (D, h, w, 3)
        uvd = torch.cat([fr[..., :2] * fr[..., 2:], fr[..., 2:]], -1)  # (D, h, w, 3): (u d, v d, d) = K p_cam
        ego_from_img = ego_from_cam[..., :3, :3].double() @ torch.linalg.inv(K.double())  # (B, N, 3, 3)
        pts = torch.einsum("bnij,dhwj->bndhwi", ego_from_img, uvd)  # (B, N, D, h, w, 3)
        return pts + ego_from_cam[..., None, None, None, :3, 3].double()

    @torch.no_grad()
    def voxel_index(self, points: torch.Tensor) -> torch.Tensor:
        """Flat voxel ``(b*Z + iz)*H*W + iy*W + ix`` ``(B, N, D, h, w)`` long of points ``(B, N, D, h, w, 3)``; -1 outside."""
        B = points.shape[0]
        ix, iy, inside = self.grid.cell_index(points[..., :2])
        z0, _, dz = self.grid.zbound
        iz = torch.floor((points[..., 2] - z0) / dz).long()
        inside = inside & (iz >= 0) & (iz < self.nz)
        b = torch.arange(B, device=points.device).view(B, 1, 1, 1, 1)
        H, W = self.grid.shape
        flat = ((b * self.nz + iz) * H + iy) * W + ix
        return torch.where(inside, flat, torch.full_like(flat, -1))

    def forward(
        self, depth: torch.Tensor, context: torch.Tensor, K: torch.Tensor, ego_from_cam: torch.Tensor
    ) -> torch.Tensor:
        """BEV map ``(B, Z*C, H, W)`` of ``depth (B, N, D, h, w)`` (probabilities) and ``context (B, N, C, h, w)``.

        ``K (B, N, 3, 3)`` and ``ego_from_cam (B, N, 4, 4)`` describe the augmented images the maps come from.
        """
        B, N, D, h, w = depth.shape
        C = context.shape[2]
        assert D == self.bins.num, f"depth has {D} bins; dbound gives {self.bins.num}"
        image_hw = (h * self.downsample, w * self.downsample)
        voxel = self.voxel_index(self.geometry(K, ego_from_cam, image_hw))  # (B, N, D, h, w)
        H, W = self.grid.shape
        pooled = bev_pool(depth, context, voxel, B * self.nz * H * W)  # (B*Z*H*W, C)
        return pooled.view(B, self.nz, H, W, C).permute(0, 1, 4, 2, 3).reshape(B, self.nz * C, H, W)
