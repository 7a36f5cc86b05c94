"""The BEV grid: one object that owns the metric <-> cell mapping, built from a ``grid`` config.

Axis convention (written down because every BEV codebase picks its own):
a BEV array has shape ``(..., H, W)`` with ``H = ny`` rows along the ego **y** axis and ``W = nx``
columns along the ego **x** axis. Cell ``(iy, ix)`` covers
``x in [xmin + ix*dx, xmin + (ix+1)*dx)``, ``y in [ymin + iy*dy, ymin + (iy+1)*dy)``; row 0 is the
most negative y (the ego's right), column 0 the most negative x (behind the ego). So
``bev[iy, ix]``; plotting with ``imshow(origin="lower")`` puts +x to the right and +y up.

The numbers live only in ``conf/grid/*.yaml``; nothing in the library hard-codes a grid, nor reads that folder:
its callers give a mapping or a YAML path (:func:`bevlabels.conf.load_grid` finds a grid of ``conf/grid/`` by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GridSpec:
    """A regular BEV grid in the ego frame.

    ``xbound``/``ybound`` are ``(min, max, cell_size)`` in metres; ``zbound`` ``(min, max, step)``
    is the height range that lift-splat and pillar models keep (its step is their depth of one
    voxel; the grid itself is 2D).
    """

    xbound: tuple[float, float, float]
    ybound: tuple[float, float, float]
    zbound: tuple[float, float, float] = (-5.0, 3.0, 8.0)
    name: str = "custom"

    def __post_init__(self):
        for field in ("xbound", "ybound", "zbound"):
            b = tuple(float(v) for v in getattr(self, field))
            if len(b) != 3:
                raise ValueError(f"grid.{field} must be [min, max, step]; got {list(b)}")
            if not b[1] > b[0] or not b[2] > 0:
                raise ValueError(f"grid.{field} = {list(b)}: need max > min and step > 0")
            object.__setattr__(self, field, b)
        for field in ("xbound", "ybound"):
            lo, hi, d = getattr(self, field)
            n = (hi - lo) / d
            if abs(n - round(n)) > 1e-6:
                raise ValueError(
                    f"grid.{field} = {[lo, hi, d]}: the extent {hi - lo} m is not a whole number of {d} m cells"
                )

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: Any) -> GridSpec:
        """From a mapping (a Hydra ``grid`` node or the dict stored in a zarr store's attrs)."""
        cfg = dict(cfg)
        missing = [k for k in ("xbound", "ybound") if k not in cfg]
        if missing:
            raise KeyError(f"grid config lacks {missing}; expected keys xbound, ybound[, zbound, name]")
        kwargs = {k: tuple(cfg[k]) for k in ("xbound", "ybound", "zbound") if k in cfg}
        return cls(**kwargs, name=str(cfg.get("name", "custom")))

    @classmethod
    def from_yaml(cls, path: str | Path) -> GridSpec:
        """From a grid YAML file (its ``name`` defaults to the file's stem); a grid of ``conf/grid/`` by name:
        :func:`bevlabels.conf.load_grid`."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"grid config {path} not found (a grid of conf/grid/ by name: bevlabels.conf.load_grid)"
            )
        with open(path) as f:
            cfg = yaml.safe_load(f)
        cfg.setdefault("name", path.stem)
        return cls.from_dict(cfg)

    def to_dict(self) -> dict:
        """A JSON-able dict (stored in zarr attrs; :meth:`from_dict` reads it back)."""
        return {
            "name": self.name,
            "xbound": list(self.xbound),
            "ybound": list(self.ybound),
            "zbound": list(self.zbound),
        }

    def same_geometry(self, other: GridSpec, tol: float = 1e-6) -> bool:
        """True when both grids have the same bounds and cell sizes (names may differ)."""
        a = np.array(self.xbound + self.ybound + self.zbound)
        b = np.array(other.xbound + other.ybound + other.zbound)
        return bool(np.all(np.abs(a - b) <= tol))

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def nx(self) -> int:
        return int(round((self.xbound[1] - self.xbound[0]) / self.xbound[2]))

    @property
    def ny(self) -> int:
        return int(round((self.ybound[1] - self.ybound[0]) / self.ybound[2]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W) = (ny, nx)``."""
        return self.ny, self.nx

    @property
    def cell_size(self) -> tuple[float, float]:
        """``(dx, dy)`` in metres."""
        return self.xbound[2], self.ybound[2]

    # -- mapping ---------------------------------------------------------------------------------
    def metric_to_cell(self, xy):
        """Continuous cell coordinates ``(..., 2)`` as ``(ix, iy)`` floats; cell centres sit at ``k + 0.5``."""
        lo = (self.xbound[0], self.ybound[0])
        d = (self.xbound[2], self.ybound[2])
        if isinstance(xy, torch.Tensor):
            lo_t = torch.tensor(lo, dtype=xy.dtype, device=xy.device)
            d_t = torch.tensor(d, dtype=xy.dtype, device=xy.device)
            return (xy[..., :2] - lo_t) / d_t
        return (np.asarray(xy)[..., :2] - np.array(lo)) / np.array(d)

    def cell_to_metric(self, ixy):
        """Metric ``(..., 2)`` ``(x, y)`` of continuous cell coordinates ``(..., 2)`` ``(ix, iy)``."""
        lo = (self.xbound[0], self.ybound[0])
        d = (self.xbound[2], self.ybound[2])
        if isinstance(ixy, torch.Tensor):
            return ixy * torch.tensor(d, dtype=ixy.dtype, device=ixy.device) + torch.tensor(
                lo, dtype=ixy.dtype, device=ixy.device
            )
        return np.asarray(ixy) * np.array(d) + np.array(lo)

    def cell_index(self, xy):
        """Integer cells of points ``(..., >=2)``: ``(ix, iy, inside)``, each shaped ``(...)``.

        ``inside`` is False for points outside the grid; their ix/iy are clipped and must be masked.
        """
        c = self.metric_to_cell(xy)
        if isinstance(c, torch.Tensor):
            ixy = torch.floor(c).long()
            ix, iy = ixy[..., 0], ixy[..., 1]
        else:
            ixy = np.floor(c).astype(np.int64)
            ix, iy = ixy[..., 0], ixy[..., 1]
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        if isinstance(c, torch.Tensor):
            return ix.clamp(0, self.nx - 1), iy.clamp(0, self.ny - 1), inside
        return np.clip(ix, 0, self.nx - 1), np.clip(iy, 0, self.ny - 1), inside

    def flat_index(self, xy):
        """Flat cell index ``iy * W + ix`` ``(...)`` and the ``inside`` mask, for scatter into ``(H*W,)``."""
        ix, iy, inside = self.cell_index(xy)
        return iy * self.nx + ix, inside

    def cell_centres(self) -> np.ndarray:
        """Metric centres ``(H, W, 2)`` as ``(x, y)``: ``cell_centres()[iy, ix]``."""
        xs = self.xbound[0] + (np.arange(self.nx) + 0.5) * self.xbound[2]
        ys = self.ybound[0] + (np.arange(self.ny) + 0.5) * self.ybound[2]
        gx, gy = np.meshgrid(xs, ys)  # (H, W) each, rows along y
        return np.stack([gx, gy], -1)


def as_grid(grid: GridSpec | Any) -> GridSpec:
    """A :class:`GridSpec` from itself or a mapping (a Hydra ``grid`` node, a store's ``grid`` attrs)."""
    return grid if isinstance(grid, GridSpec) else GridSpec.from_dict(grid)


def resample_bev(
    bev: torch.Tensor,
    src: GridSpec,
    dst: GridSpec | None = None,
    *,
    dst_from_src: torch.Tensor | np.ndarray | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """A BEV map on grid ``src`` read at the cell centres of grid ``dst``: ``(..., C, H_s, W_s) -> (..., C, H_d, W_d)``.

    The one resampling of BEV maps in the project: a cached grid under the BEV augmentation
    (``dst = src``, ``dst_from_src`` = the augmentation ``aug_from_ego``), and a teacher's map onto a
    store of another grid (``dst`` another grid, no transform).

    Output cell centre ``p`` (metric x, y in ``dst``'s frame) reads the input at ``src_from_dst @ p``
    (only x, y: the transforms rotate about z, scale and mirror); continuous cells of ``src`` have
    centres at ``k + 0.5`` (:meth:`GridSpec.metric_to_cell`), which are ``grid_sample``'s
    ``align_corners=False`` coordinates; what falls outside ``src`` reads 0. ``mode``:

    - ``"bilinear"``: ``grid_sample`` in float32, returned in the input's dtype;
    - ``"nearest"``: the cells ``grid_sample``'s nearest mode reads (its round-half-even), as a gather
      in the map's own dtype, without a float32 copy of a many-channel map.

    A batch of transforms ``dst_from_src (B, 4, 4)`` resamples a batch of maps ``(B, C, H_s, W_s)``, map b by
    transform b, on the maps' device (a model's BEV maps: the previous keyframe's map warped into the current
    ego frame, :class:`~trainer.models.components.camera_bev.CameraBEV`); the same rules, cell for cell.
    """
    dst = src if dst is None else dst
    if dst_from_src is not None and torch.as_tensor(dst_from_src).ndim == 3:
        return _resample_bev_batched(bev, src, dst, torch.as_tensor(dst_from_src), mode)
    assert bev.ndim >= 3 and tuple(bev.shape[-2:]) == src.shape, (
        f"bev must be (..., C, {src.ny}, {src.nx}) on the source grid; got {tuple(bev.shape)}"
    )
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"resample_bev: mode must be 'nearest' or 'bilinear'; got {mode!r}")
    T = torch.eye(4, dtype=torch.float64) if dst_from_src is None else torch.as_tensor(dst_from_src).double().cpu()
    assert T.shape == (4, 4), f"dst_from_src must be (4, 4); got {tuple(T.shape)}"
    identity = torch.equal(T, torch.eye(4, dtype=torch.float64))
    if identity and dst.same_geometry(src, tol=0.0):
        return bev
    src_from_dst = torch.linalg.inv(T)
    centres = torch.as_tensor(dst.cell_centres(), dtype=torch.float64)  # (H_d, W_d, 2) metric x, y in dst's frame
    xy = centres @ src_from_dst[:2, :2].T + src_from_dst[:2, 3]  # (H_d, W_d, 2) in src's frame
    cell = src.metric_to_cell(xy)  # (H_d, W_d, 2) continuous (ix, iy) of src
    lead = bev.shape[:-3]
    x = bev.reshape(-1, *bev.shape[-3:])  # (B', C, H_s, W_s)
    norm = torch.stack([2 * cell[..., 0] / src.nx - 1, 2 * cell[..., 1] / src.ny - 1], -1).float()  # (H_d, W_d, 2)
    if mode == "nearest":
        # grid_sample's own un-normalisation (align_corners=False), in its float32, then round half to even
        size = torch.tensor([src.nx, src.ny], dtype=torch.float32)
        src_ij = torch.round(((norm + 1) * size - 1) / 2).long()  # (H_d, W_d, 2) source column, row
        inside = (src_ij >= 0).all(-1) & (src_ij[..., 0] < src.nx) & (src_ij[..., 1] < src.ny)  # (H_d, W_d)
        flat = (src_ij[..., 1].clamp(0, src.ny - 1) * src.nx + src_ij[..., 0].clamp(0, src.nx - 1)).flatten()
        out = x.flatten(2)[:, :, flat.to(x.device)].view(*x.shape[:2], *dst.shape)  # (B', C, H_d, W_d)
        out = out.masked_fill(~inside.to(x.device), 0)
    else:
        norm = norm.to(x.device)[None].expand(x.shape[0], -1, -1, -1)  # (B', H_d, W_d, 2)
        out = F.grid_sample(x.float(), norm, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)
    return out.reshape(*lead, *out.shape[1:])


def _resample_bev_batched(
    bev: torch.Tensor, src: GridSpec, dst: GridSpec, dst_from_src: torch.Tensor, mode: str
) -> torch.Tensor:
    """:func:`resample_bev` of maps ``(B, C, H_s, W_s)``, map b by ``dst_from_src[b] (4, 4)``, on the maps' device."""
    B = dst_from_src.shape[0]
    assert dst_from_src.shape == (B, 4, 4), f"dst_from_src must be (B, 4, 4); got {tuple(dst_from_src.shape)}"
    assert bev.ndim == 4 and bev.shape[0] == B and tuple(bev.shape[-2:]) == src.shape, (
        f"bev must be ({B}, C, {src.ny}, {src.nx}) for {B} transforms; got {tuple(bev.shape)}"
    )
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"resample_bev: mode must be 'nearest' or 'bilinear'; got {mode!r}")
    dev = bev.device
    src_from_dst = torch.linalg.inv(dst_from_src.to(dev, torch.float64))  # (B, 4, 4)
    centres = torch.as_tensor(dst.cell_centres(), dtype=torch.float64, device=dev)  # (H_d, W_d, 2)
    xy = torch.einsum("hwj,bij->bhwi", centres, src_from_dst[:, :2, :2]) + src_from_dst[:, None, None, :2, 3]
    cell = src.metric_to_cell(xy)  # (B, H_d, W_d, 2) continuous (ix, iy) of src
    norm = torch.stack([2 * cell[..., 0] / src.nx - 1, 2 * cell[..., 1] / src.ny - 1], -1).float()
    if mode == "bilinear":
        return F.grid_sample(bev.float(), norm, mode="bilinear", padding_mode="zeros", align_corners=False).to(
            bev.dtype
        )
    size = torch.tensor([src.nx, src.ny], dtype=torch.float32, device=dev)
    src_ij = torch.round(((norm + 1) * size - 1) / 2).long()  # (B, H_d, W_d, 2) source column, row
    inside = (src_ij >= 0).all(-1) & (src_ij[..., 0] < src.nx) & (src_ij[..., 1] < src.ny)  # (B, H_d, W_d)
    flat = (src_ij[..., 1].clamp(0, src.ny - 1) * src.nx + src_ij[..., 0].clamp(0, src.nx - 1)).flatten(1)  # (B, S)
    C = bev.shape[1]
    out = bev.flatten(2).gather(2, flat[:, None, :].expand(-1, C, -1)).view(B, C, *dst.shape)
    return out.masked_fill(~inside[:, None], 0)
