"""Accumulated points -> cameras -> visible features -> BEV grid, and the projected-LiDAR table.

The DualViewDistill pseudo-label of a BEV cell is the mean, over the accumulated points in the
cell that at least one camera sees, of the point's feature; a point's feature is the mean over
the cameras that see it of the bilinearly sampled patch feature at its pixel. "Sees" is a z-buffer
test: the point's depth is within a tolerance of the nearest accumulated point that projects to
the same z-buffer cell (``zbuffer_px`` pixels square, at the original image resolution), so a
point behind a car does not take the car's feature.

Everything is vectorised torch; per-point features are never materialised (``P x C`` floats would
be gigabytes for a scene-accumulated cloud). Bilinear sampling is linear in the feature map, so a
camera's contribution to the BEV sum is a sparse matrix of summed tap weights (BEV cell x patch)
times the flattened patch map; millions of points collapse to far fewer (cell, patch) pairs.

Letters: P points, N cameras, C channels, h/w a feature map, H/W the BEV grid, R lidar_px rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bevlabels import geometry as g
from bevlabels.datasets.base import Frame
from bevlabels.features.base import pixel_to_feature
from bevlabels.grid import GridSpec


@dataclass(frozen=True)
class VisibilityConfig:
    """The z-buffer test and projection limits."""

    zbuffer_px: int = 4  # side of a z-buffer cell in original-resolution pixels
    abs_tol: float = 0.5  # metres behind the nearest point still counted visible
    rel_tol: float = 0.05  # ... or this fraction of the nearest depth, whichever is larger
    min_depth: float = 0.5  # metres in front of the camera
    chunk: int = 65536  # points sampled per step (memory: chunk * C floats)

    def __post_init__(self):
        if self.zbuffer_px < 1 or self.abs_tol < 0 or self.rel_tol < 0 or self.chunk < 1:
            raise ValueError(f"visibility config out of range: {self}")


@dataclass(frozen=True)
class CameraSet:
    """The geometry of a keyframe's N cameras relative to the keyframe's ego frame."""

    cam_from_ego: np.ndarray  # (N, 4, 4)
    K: np.ndarray  # (N, 3, 3)
    sizes: np.ndarray  # (N, 2) width, height of the original images

    @classmethod
    def from_frame(cls, frame: Frame) -> CameraSet:
        return cls(
            np.stack([frame.cam_from_key_ego(i) for i in range(len(frame.cameras))]),
            np.stack([c.K for c in frame.cameras]),
            np.array([[c.width, c.height] for c in frame.cameras], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.K)


@dataclass
class CameraHits:
    """Points one camera sees: their indices into the cloud and pixels (original resolution)."""

    index: torch.Tensor  # (p,) int64
    uv: torch.Tensor  # (p, 2)
    depth: torch.Tensor  # (p,)


def zbuffer_visible(
    uv: torch.Tensor, depth: torch.Tensor, image_size: tuple[int, int], cfg: VisibilityConfig
) -> torch.Tensor:
    """Visibility ``(p,)`` bool of in-image points ``uv (p, 2)``, ``depth (p,)`` under a z-buffer.

    A point is visible when its depth is at most ``zmin + max(abs_tol, rel_tol * zmin)``, with
    ``zmin`` the nearest depth among points in its ``zbuffer_px`` cell.
    """
    width, height = image_size
    s = cfg.zbuffer_px
    wc, hc = -(-width // s), -(-height // s)
    cell = (uv[:, 1] // s).long().clamp(0, hc - 1) * wc + (uv[:, 0] // s).long().clamp(0, wc - 1)  # (p,)
    zmin = torch.full((wc * hc,), float("inf"), dtype=depth.dtype, device=depth.device)
    zmin = zmin.scatter_reduce(0, cell, depth, reduce="amin", include_self=True)
    near = zmin[cell]
    return depth <= near + torch.clamp(near * cfg.rel_tol, min=cfg.abs_tol)


def camera_hits(points: torch.Tensor, cams: CameraSet, cfg: VisibilityConfig) -> list[CameraHits]:
    """For each camera, the points ``(P, >=3)`` (ego frame) it sees after the z-buffer test."""
    hits = []
    for n in range(len(cams)):  # six cameras: a loop over cameras, not points
        size = (int(cams.sizes[n, 0]), int(cams.sizes[n, 1]))
        uv, depth, mask = g.project_points(points, cams.cam_from_ego[n], cams.K[n], size, cfg.min_depth)
        idx = torch.nonzero(mask).squeeze(1)
        vis = zbuffer_visible(uv[idx], depth[idx], size, cfg)
        hits.append(CameraHits(idx[vis], uv[idx[vis]], depth[idx[vis]]))
    return hits


def bilinear_taps(uv: torch.Tensor, image_size: tuple[int, int], feat_hw) -> tuple[torch.Tensor, torch.Tensor]:
    """The four patch indices ``(p, 4)`` (flat ``r * w + c``) and weights ``(p, 4)`` of bilinear samples at ``uv (p, 2)``.

    Exactly what :func:`bevlabels.features.base.sample_features` computes (``grid_sample`` with
    ``align_corners=False`` and border padding): patch centres at ``c + 0.5`` in feature
    coordinates, sample positions clamped to the outermost centres.
    """
    h, w = int(feat_hw[0]), int(feat_hw[1])
    fxy = pixel_to_feature(uv, image_size, (w, h)) - 0.5  # (p, 2) in patch-centre coordinates
    fx = fxy[:, 0].clamp(0, w - 1)
    fy = fxy[:, 1].clamp(0, h - 1)
    x0, y0 = fx.floor(), fy.floor()
    ax, ay = fx - x0, fy - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    taps = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], 1)
    weights = torch.stack([(1 - ay) * (1 - ax), (1 - ay) * ax, ay * (1 - ax), ay * ax], 1)
    return taps, weights


@dataclass
class PooledBEV:
    """A keyframe's pooled pseudo-label: ``feat (C, H, W)`` (0 where empty) and ``count (H, W)``."""

    feat: torch.Tensor
    count: torch.Tensor
    n_visible_cams: torch.Tensor  # (P,) how many cameras see each point of the (grid-cropped) cloud
    points: torch.Tensor  # (P, 3) the grid-cropped cloud that was pooled


def pool_bev(
    points_ego: torch.Tensor | np.ndarray,
    feats: torch.Tensor | Sequence[torch.Tensor],
    cams: CameraSet,
    grid: GridSpec,
    cfg: VisibilityConfig | None = None,
    z_range: tuple[float, float] | None = None,
) -> PooledBEV:
    """Scatter-mean of visible points' camera-averaged features into the BEV grid.

    Args:
        points_ego: ``(P, >=3)`` accumulated points in the keyframe's ego frame.
        feats: the N cameras' patch features (same order as ``cams``): one ``(N, C, h, w)`` tensor
            when the cameras share an image size, or a sequence of N ``(C, h_n, w_n)`` maps when they
            do not (AV2's portrait front camera beside landscape ones).
        cams: camera geometry of the keyframe.
        grid: the BEV grid; points outside its xy bounds (or ``z_range``, default the grid's
            ``zbound``) are dropped first.
    """
    cfg = cfg or VisibilityConfig()
    if torch.is_tensor(feats):
        assert feats.ndim == 4, f"feats must be (N={len(cams)}, C, h, w); got {tuple(feats.shape)}"
    assert len(feats) == len(cams) and all(f.ndim == 3 for f in feats), (
        f"feats must hold N={len(cams)} maps (C, h, w); got {[tuple(f.shape) for f in feats]}"
    )
    assert len({f.shape[0] for f in feats}) == 1, f"cameras' feature maps differ in C: {[f.shape[0] for f in feats]}"
    device = feats[0].device
    pts = torch.as_tensor(np.asarray(points_ego)[:, :3] if not torch.is_tensor(points_ego) else points_ego[:, :3])
    pts = pts.to(device=device, dtype=torch.float32)
    zlo, zhi = z_range if z_range is not None else grid.zbound[:2]
    cell, inside = grid.flat_index(pts[:, :2])
    keep = inside & (pts[:, 2] >= zlo) & (pts[:, 2] <= zhi)
    pts, cell = pts[keep], cell[keep]  # (P, 3), (P,)

    C = feats[0].shape[0]
    H, W = grid.shape
    hits = camera_hits(pts, cams, cfg)
    n_vis = torch.zeros(len(pts), dtype=torch.int32, device=device)
    for h in hits:
        n_vis[h.index] += 1
    weight = 1.0 / n_vis.clamp(min=1).float()  # (P,) each camera's share of a point's mean

    bev_sum = torch.zeros(H * W, C, dtype=torch.float32, device=device)
    for n, h in enumerate(hits):
        size = (int(cams.sizes[n, 0]), int(cams.sizes[n, 1]))
        hw = feats[n].shape[1] * feats[n].shape[2]
        # Bilinear sampling is linear in the feature map, so the BEV sum is a sparse matrix
        # A (H*W, h*w) of summed tap weights times the flattened map: many points share a
        # (cell, patch) pair, so A has far fewer entries than points x taps.
        taps, tap_w = bilinear_taps(h.uv, size, feats[n].shape[1:])  # (p, 4), (p, 4)
        key = (cell[h.index, None] * hw + taps).reshape(-1)  # (p*4,) one entry per (BEV cell, patch)
        pair, inverse = torch.unique(key, return_inverse=True)
        a = torch.zeros(len(pair), dtype=torch.float32, device=device)
        a.index_add_(0, inverse, (tap_w * weight[h.index, None]).reshape(-1))
        fmap = feats[n].float().reshape(C, hw).T  # (h*w, C)
        for s in range(0, len(pair), cfg.chunk):  # chunks bound memory to chunk * C floats
            pc = pair[s : s + cfg.chunk]
            bev_sum.index_add_(0, pc // hw, a[s : s + cfg.chunk, None] * fmap[pc % hw])
    seen = n_vis > 0
    count = torch.bincount(cell[seen], minlength=H * W)  # (H*W,)
    feat = bev_sum / count.clamp(min=1)[:, None].float()
    return PooledBEV(
        feat=feat.T.reshape(C, H, W),  # (C, H, W): rows along ego y, columns along ego x
        count=count.reshape(H, W),
        n_visible_cams=n_vis,
        points=pts,
    )


def lidar_pixels(
    frame: Frame, points_lidar: np.ndarray, min_depth: float = 1.0, sweep=None, device: torch.device | str | None = None
) -> dict[str, np.ndarray]:
    """The ``lidar_px`` table of a keyframe: every point of a sweep projected into every camera it lands in.

    ``points_lidar (N, >=3)`` are in the sensor frame of ``sweep`` (default the keyframe sweep).
    Returns R rows: ``cam`` uint8, ``u, v, depth`` float32 at the original image resolution, and
    ``obj`` int32, the index in ``frame.boxes`` of the GT box the point lies in (-1 for none).
    ``device``: project in torch (float64) on that device; the same table as the numpy reference.
    """
    sweep = frame.lidar if sweep is None else sweep
    pts = np.asarray(points_lidar[:, :3], dtype=np.float64)
    if device is not None:
        pts = torch.as_tensor(pts, device=device)
    pts_ego = g.transform_points(frame.key_ego_from_lidar(sweep), pts)
    n = len(pts_ego)
    obj = g.points_box_index(pts_ego, frame.boxes.boxes) if len(frame.boxes) else None
    if obj is None:
        obj = torch.full((n,), -1, dtype=torch.int64, device=device) if device is not None else np.full(n, -1)
    cols: dict[str, list] = {"cam": [], "u": [], "v": [], "depth": [], "obj": []}
    for i, cam in enumerate(frame.cameras):
        uv, depth, mask = g.project_points(
            pts_ego, frame.cam_from_key_ego(i), cam.K, (cam.width, cam.height), min_depth
        )
        uv, depth, obj_i = uv[mask], depth[mask], obj[mask]
        if device is not None:
            uv, depth, obj_i = uv.cpu().numpy(), depth.cpu().numpy(), obj_i.cpu().numpy()
        cols["cam"].append(np.full(len(depth), i, dtype=np.uint8))
        cols["u"].append(uv[:, 0].astype(np.float32))
        cols["v"].append(uv[:, 1].astype(np.float32))
        cols["depth"].append(depth.astype(np.float32))
        cols["obj"].append(obj_i.astype(np.int32))
    return {k: np.concatenate(v) for k, v in cols.items()}
