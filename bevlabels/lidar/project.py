"""Accumulated points -> cameras -> visible features -> BEV grid, and the projected-LiDAR table.

The DualViewDistill pseudo-label of a BEV cell is the mean, over the accumulated points in the
cell that at least one camera sees, of the point's feature; a point's feature is the mean over
the cameras that see it of the bilinearly sampled patch feature at its pixel. "Sees" is the
visibility test of :class:`VisibilityConfig`: a z-buffer (fixed or depth-adaptive) or hidden point
removal among the points, and optionally the keyframe's GT boxes as solid occluders. Accumulated
LiDAR is sparse on objects (rings ~13 px apart at 10 m) and dense behind them, so a point-only test
lets background points show through the gaps between an object's rings and take its feature; the
boxes close those gaps for every annotated object (``bevlabels.leak`` measures what is left).

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

#: the per-point visibility tests (``visibility.method``); see :func:`camera_hits`
METHODS = ("zbuffer", "splat", "hpr")


@dataclass(frozen=True)
class VisibilityConfig:
    """Which accumulated points a camera sees: a per-point test, optionally with the keyframe's GT boxes as occluders.

    ``method`` (each point against the other points):

    - ``zbuffer``: the nearest depth per ``zbuffer_px`` square of pixels; a point farther than it by more
      than ``max(abs_tol, rel_tol * depth)`` is hidden. Blind to the gaps between LiDAR rings on an object;
    - ``splat``: a depth-adaptive z-buffer. Each point covers a square footprint whose side is its ring
      spacing seen from the camera, ``splat_scale * f * ring_gap_deg * range / depth`` pixels (at least
      ``zbuffer_px``), and hides the farther points under it (same depth tolerance);
    - ``hpr``: open3d's hidden point removal (Katz et al. 2007) from each camera centre, the spherical
      flip's radius ``hpr_radius`` times the farthest point's distance (no z-buffer).

    The defaults are the label stage's (``conf/labels.yaml``), chosen by the measurements of
    ``results/visibility.md``; schema-1 stores were made with ``zbuffer_px=4`` and no box occluders.

    ``box_occluders``: the keyframe's GT boxes are solid. A point whose ray from the camera passes
    through a box and leaves it before reaching the point is hidden; a point inside a box is never
    hidden by that box. Only a box's part above ``box_clearance`` metres is solid: the ground seen under a
    vehicle, through the gap below its body, stays visible; the ground under it reached through its body
    is hidden. Each box can be widened by ``box_margin_px`` pixels at its depth (the edge patches of an
    object colour what is just behind it). ``box_floor``: the points in a box's footprint within this
    height of its bottom are not labelled: they are the ground under the object (box-based accumulation
    carries a moving object's ground returns along with it), and they would give the object's cells the
    ground's feature. The point test still handles what has no box (buildings, unannotated objects).
    """

    method: str = "zbuffer"
    box_occluders: bool = True
    zbuffer_px: int = 2  # side of a z-buffer cell in original-resolution pixels
    abs_tol: float = 0.5  # metres behind the nearest point still counted visible
    rel_tol: float = 0.05  # ... or this fraction of the nearest depth, whichever is larger
    min_depth: float = 0.5  # metres in front of the camera
    box_margin_px: float = 0.0  # box occluders widened by this many pixels at the box's depth
    box_clearance: float = 0.0  # metres at the bottom of a box that do not occlude (the gap under a vehicle)
    box_floor: float = 0.3  # metres: points inside a box's footprint this low above its bottom are not labelled
    ring_gap_deg: float = 1.33  # splat: the LiDAR's vertical angle between rings (nuScenes' 32 beams)
    splat_scale: float = 1.0  # splat: footprint side in ring spacings
    hpr_radius: float = 100.0  # hpr: the spherical flip's radius, in units of the farthest point's distance
    chunk: int = 65536  # points sampled per step (memory: chunk * C floats)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"visibility.method={self.method!r}: expected one of {METHODS}")
        if self.zbuffer_px < 1 or self.abs_tol < 0 or self.rel_tol < 0 or self.chunk < 1:
            raise ValueError(f"visibility config out of range: {self}")
        if self.box_margin_px < 0 or self.ring_gap_deg <= 0 or self.splat_scale <= 0 or self.hpr_radius <= 0:
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


def _within_tol(depth: torch.Tensor, near: torch.Tensor, cfg: VisibilityConfig) -> torch.Tensor:
    """A point at ``depth`` is visible over occluders at ``near``: at most ``max(abs_tol, rel_tol * near)`` behind."""
    return depth <= near + torch.clamp(near * cfg.rel_tol, min=cfg.abs_tol)


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
    return _within_tol(depth, zmin[cell], cfg)


#: splat footprints are rounded up to one of these half-widths, in z-buffer cells (each level is one min-pool)
_SPLAT_LEVELS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def splat_visible(
    uv: torch.Tensor, depth: torch.Tensor, side_px: torch.Tensor, image_size: tuple[int, int], cfg: VisibilityConfig
) -> torch.Tensor:
    """Visibility ``(p,)`` under a depth-adaptive z-buffer: point i hides what lies under its square footprint.

    ``side_px (p,)``: each point's footprint side in pixels. The image is cut into ``zbuffer_px`` cells;
    a point's footprint covers the cells within ``floor(side / (2 * zbuffer_px))`` cells of its own (a
    side of one cell: its own cell alone, the plain z-buffer), rounded up to a level of
    :data:`_SPLAT_LEVELS` (so one min-pool per level, not per point). A point is visible when it
    is within the depth tolerance of the nearest footprint over its cell (its own included).
    """
    import torch.nn.functional as F

    width, height = image_size
    s = cfg.zbuffer_px
    wc, hc = -(-width // s), -(-height // s)
    cx = (uv[:, 0] // s).long().clamp(0, wc - 1)
    cy = (uv[:, 1] // s).long().clamp(0, hc - 1)
    cell = cy * wc + cx  # (p,)
    half = torch.floor(side_px / (2 * s)).long()  # (p,) in cells
    levels = torch.tensor(_SPLAT_LEVELS, device=depth.device)
    level = torch.searchsorted(levels, half.clamp(max=_SPLAT_LEVELS[-1]))  # (p,) the first level >= half
    near = torch.full((hc * wc,), float("inf"), dtype=depth.dtype, device=depth.device)
    for k in torch.unique(level).tolist():  # a dozen levels at most
        r = _SPLAT_LEVELS[k]
        sel = level == k
        img = torch.full((hc * wc,), float("inf"), dtype=depth.dtype, device=depth.device)
        img = img.scatter_reduce(0, cell[sel], depth[sel], reduce="amin", include_self=True)
        if r > 0:  # a min-filter over (2r+1)^2 cells: each point's depth spread over its footprint
            img = -F.max_pool2d(-img.view(1, 1, hc, wc), 2 * r + 1, stride=1, padding=r).view(-1)
        near = torch.minimum(near, img)
    return _within_tol(depth, near[cell], cfg)


def hpr_visible(pts_cam: torch.Tensor, cfg: VisibilityConfig) -> torch.Tensor:
    """Visibility ``(p,)`` of camera-frame points ``(p, 3)`` by open3d's hidden point removal from the origin."""
    import open3d as o3d

    vis = torch.zeros(len(pts_cam), dtype=torch.bool, device=pts_cam.device)
    if len(pts_cam) < 4:  # no hull to build: nothing can hide anything
        return ~vis
    xyz = pts_cam.detach().double().cpu().numpy()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    radius = cfg.hpr_radius * float(np.linalg.norm(xyz, axis=1).max())
    try:
        _, idx = pcd.hidden_point_removal([0.0, 0.0, 0.0], radius)
    except RuntimeError:  # qhull refuses a degenerate (flat, collinear) set: keep it all
        return ~vis
    vis[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=pts_cam.device)] = True
    return vis


def box_occluded(
    pts: torch.Tensor,
    origin: torch.Tensor,
    boxes: torch.Tensor,
    margin: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    rows: int = 1 << 22,
) -> torch.Tensor:
    """``(p,)`` bool: the segment from ``origin (3,)`` to a point of ``pts (p, 3)`` passes through one of ``boxes
    (M, >=7)`` (each half-extent grown by ``margin (M,)`` metres) and leaves it before reaching the point.

    A slab test in each box's frame: the segment ``origin + t (pt - origin)``, t in [0, 1], enters a box
    at ``t_in`` and leaves at ``t_out``; the point is hidden when ``0 <= t_in <= t_out < 1``. A point inside
    a box (``t_out >= 1``) is never hidden by it; a box behind the origin (``t_out < 0``) hides nothing.

    ``pairs``: the (point, box) index pairs to test (e.g. the boxes whose image rectangle holds the
    point's pixel, :func:`box_candidates`); default every pair, ``rows`` at a time.
    """
    hidden = torch.zeros(len(pts), dtype=torch.bool, device=pts.device)
    M = boxes.shape[0]
    if M == 0 or len(pts) == 0:
        return hidden
    boxes = boxes.to(pts)
    c, sn = torch.cos(boxes[:, g.YAW]), torch.sin(boxes[:, g.YAW])  # (M,)
    half = boxes[:, g.L : g.H + 1] / 2 + margin.to(pts)[:, None]  # (M, 3)

    def to_box(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # offsets (n, 3) from box m's centre -> its frame
        return torch.stack([v[:, 0] * c[m] + v[:, 1] * sn[m], -v[:, 0] * sn[m] + v[:, 1] * c[m], v[:, 2]], -1)

    o_all = to_box(origin.to(pts)[None] - boxes[:, :3], torch.arange(M, device=pts.device))  # (M, 3) the origin per box
    if pairs is None:
        pi = torch.arange(len(pts), device=pts.device).repeat_interleave(M)
        bi = torch.arange(M, device=pts.device).repeat(len(pts))
    else:
        pi, bi = pairs
    for s in range(0, len(pi), rows):  # chunks of pairs, never a loop over points
        p_, b_ = pi[s : s + rows], bi[s : s + rows]
        o = o_all[b_]  # (n, 3)
        q = to_box(pts[p_, :3] - boxes[b_, :3], b_)  # (n, 3) the point in its box's frame
        d = q - o
        d = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        h = half[b_]
        t1, t2 = (-h - o) / d, (h - o) / d  # (n, 3)
        t_in = torch.minimum(t1, t2).amax(-1)  # (n,)
        t_out = torch.maximum(t1, t2).amin(-1)
        hit = (t_in <= t_out) & (t_in >= 0) & (t_out < 1 - 1e-9)
        hidden[p_[hit]] = True
    return hidden


def occluder_boxes(boxes: torch.Tensor, clearance: float) -> torch.Tensor:
    """The solid part ``(M, >=7)`` of boxes ``(M, >=7)``: each box's bottom raised by ``clearance`` metres (at most
    nine tenths of its height). A ray under it (the gap under a vehicle) passes; the ground below it, reached
    through it, is hidden; the object's points in that slice are below the solid part, so they are seen only
    when their ray passes under it too."""
    if clearance <= 0:
        return boxes
    out = boxes.clone()
    lift = torch.clamp(boxes[:, g.H] * 0.9, max=clearance)  # (M,)
    out[:, g.Z] += lift / 2
    out[:, g.H] -= lift
    return out


def floor_slabs(boxes: torch.Tensor, floor: float) -> torch.Tensor:
    """Boxes ``(M, >=7)`` of height ``2 * floor`` centred on each box's bottom face: the ground under an object."""
    flat = boxes.clone()
    flat[:, g.Z] = boxes[:, g.Z] - boxes[:, g.H] / 2
    flat[:, g.H] = 2 * floor
    return flat


def in_boxes_pairs(pts: torch.Tensor, boxes: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(p,)`` bool: the point of ``pts (p, 3)`` lies in a box of ``boxes (M, >=7)``, testing only ``pairs``."""
    pi, bi = pairs
    out = torch.zeros(len(pts), dtype=torch.bool, device=pts.device)
    if len(pi) == 0:
        return out
    b = boxes[bi].to(pts)
    d = pts[pi, :3] - b[:, :3]  # (n, 3)
    c, sn = torch.cos(b[:, g.YAW]), torch.sin(b[:, g.YAW])
    lx, ly = d[:, 0] * c + d[:, 1] * sn, -d[:, 0] * sn + d[:, 1] * c
    half = b[:, g.L : g.H + 1] / 2
    inside = (lx.abs() <= half[:, 0]) & (ly.abs() <= half[:, 1]) & (d[:, 2].abs() <= half[:, 2])
    out[pi[inside]] = True
    return out


def box_candidates(
    uv: torch.Tensor,
    boxes: torch.Tensor,
    cam_from_ego: torch.Tensor,
    K: np.ndarray,
    margin_px: float,
    min_depth: float,
    depth: torch.Tensor | None = None,
    inside_only: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (point, box) pairs ``(n,), (n,)`` whose pixel ``uv (p, 2)`` lies in the box's image rectangle.

    The rectangle bounds the projected corners of the box (widened by ``margin_px``), so it holds every
    pixel whose ray passes through the box: only those pairs can occlude. A box with a corner at or
    behind ``min_depth`` gets the whole image (its projection is unbounded); one wholly behind, none.
    With the points' camera ``depth (p,)`` and ``inside_only (M,)`` bool, a box asked only whether a point is
    *inside* it (the floor slabs) keeps only the points whose depth lies between its corners' (depth is
    linear, so a point of a box lies between its nearest and farthest corner): most of its rectangle's
    points are the ground behind it.
    """
    M = boxes.shape[0]
    corners = g.box_corners(boxes).reshape(-1, 3)  # (M*8, 3)
    cam = g.transform_points(cam_from_ego, corners)
    z = cam[:, 2].reshape(M, 8)
    Kt = torch.as_tensor(K, dtype=cam.dtype, device=cam.device)
    proj = cam @ Kt.T
    px = (proj[:, :2] / proj[:, 2:].clamp(min=1e-9)).reshape(M, 8, 2)
    lo = px.amin(1) - margin_px  # (M, 2)
    hi = px.amax(1) + margin_px
    unbounded = (z <= min_depth).any(1)
    lo = torch.where(unbounded[:, None], torch.full_like(lo, -float("inf")), lo)
    hi = torch.where(unbounded[:, None], torch.full_like(hi, float("inf")), hi)
    behind = (z <= 0).all(1)
    hi = torch.where(behind[:, None], torch.full_like(hi, -float("inf")), hi)
    span = None
    if depth is not None and inside_only is not None and bool(inside_only.any()):
        tol = 1e-3  # metres: the points' depths are float32
        zlo = torch.where(inside_only, z.amin(1) - tol, -float("inf")).to(depth.dtype)  # (M,)
        zhi = torch.where(inside_only, z.amax(1) + tol, float("inf")).to(depth.dtype)
        span = (zlo.tolist(), zhi.tolist())
    u, v = uv[:, 0].to(lo), uv[:, 1].to(lo)
    order = torch.argsort(u)  # sweep and prune along u: each box looks only at its columns' points
    us = u[order]
    a = torch.searchsorted(us, lo[:, 0].contiguous()).tolist()
    b = torch.searchsorted(us, hi[:, 0].contiguous(), right=True).tolist()
    pis, bis = [], []
    for m in range(M):  # boxes are few (tens); never a loop over points
        if b[m] <= a[m]:
            continue
        cand = order[a[m] : b[m]]
        keep = (v[cand] >= lo[m, 1]) & (v[cand] <= hi[m, 1])
        if span is not None and span[0][m] > -float("inf"):
            keep &= (depth[cand] >= span[0][m]) & (depth[cand] <= span[1][m])
        cand = cand[keep]
        pis.append(cand)
        bis.append(torch.full_like(cand, m))
    if not pis:
        empty = torch.zeros(0, dtype=torch.int64, device=uv.device)
        return empty, empty
    return torch.cat(pis), torch.cat(bis)


def box_margins(boxes: torch.Tensor, cam_from_ego: torch.Tensor, fx: float, cfg: VisibilityConfig) -> torch.Tensor:
    """``(M,)`` metres that widen each box by ``cfg.box_margin_px`` pixels at its centre's depth in the camera."""
    if cfg.box_margin_px == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=boxes.dtype, device=boxes.device)
    z = g.transform_points(cam_from_ego, boxes[:, :3])[:, 2].clamp(min=cfg.min_depth)  # (M,)
    return cfg.box_margin_px * z / fx


def camera_hits(
    points: torch.Tensor, cams: CameraSet, cfg: VisibilityConfig, boxes: torch.Tensor | np.ndarray | None = None
) -> list[CameraHits]:
    """For each camera, the points ``(P, >=3)`` (ego frame) it sees under ``cfg``'s visibility tests.

    ``boxes (M, >=7)``: the keyframe's GT boxes in its ego frame, the occluders of ``cfg.box_occluders``
    (required then; ignored otherwise).
    """
    if cfg.box_occluders:
        if boxes is None:
            raise ValueError("visibility.box_occluders=true needs the keyframe's GT boxes (pool_bev(..., boxes=))")
        boxes = torch.as_tensor(np.asarray(boxes) if not torch.is_tensor(boxes) else boxes)
        boxes = boxes.to(device=points.device, dtype=torch.float64)
        solid = occluder_boxes(boxes, cfg.box_clearance)
    hits = []
    for n in range(len(cams)):  # six cameras: a loop over cameras, not points
        size = (int(cams.sizes[n, 0]), int(cams.sizes[n, 1]))
        uv, depth, mask = g.project_points(points, cams.cam_from_ego[n], cams.K[n], size, cfg.min_depth)
        idx = torch.nonzero(mask).squeeze(1)
        uv_i, depth_i = uv[idx], depth[idx]
        fx = float(cams.K[n][0, 0])
        if cfg.method == "zbuffer":
            vis = zbuffer_visible(uv_i, depth_i, size, cfg)
        elif cfg.method == "splat":
            rng = g.transform_points(cams.cam_from_ego[n], points[idx, :3]).norm(dim=1)  # (p,) from the camera
            side = cfg.splat_scale * fx * np.deg2rad(cfg.ring_gap_deg) * rng / depth_i
            vis = splat_visible(uv_i, depth_i, side.clamp(min=cfg.zbuffer_px), size, cfg)
        else:  # hpr
            vis = hpr_visible(g.transform_points(cams.cam_from_ego[n], points[idx, :3]), cfg)
        if cfg.box_occluders and len(boxes):
            cam_from_ego = torch.as_tensor(cams.cam_from_ego[n], dtype=torch.float64, device=points.device)
            origin = torch.linalg.inv(cam_from_ego)[:3, 3]  # (3,) the camera centre in the ego frame
            M = len(boxes)
            # One sweep over the image for both tests: the solid boxes (occlusion) and, as boxes M.., the floor slabs.
            tested = torch.cat([solid, floor_slabs(boxes, cfg.box_floor)]) if cfg.box_floor > 0 else solid
            margin = box_margins(solid, cam_from_ego, fx, cfg)  # (M,) metres; box_candidates widens by pixels
            keep = torch.nonzero(vis).squeeze(1)
            slab = torch.arange(len(tested), device=tested.device) >= M  # floor slabs: only "inside?" is asked
            pi, bi = box_candidates(uv_i[keep], tested, cam_from_ego, cams.K[n], margin_px=cfg.box_margin_px,
                                    min_depth=cfg.min_depth, depth=depth_i[keep], inside_only=slab)  # fmt: skip
            # float64: a ray to the ground just behind a box leaves it through its bottom face at t ~ 1, where
            # float32 flipped ~1% of the hidden points of a camera on the small world.
            pts_k = points[idx[keep], :3].double()
            occl = bi < M
            hid = box_occluded(pts_k, origin, solid, margin, (pi[occl], bi[occl]))
            if cfg.box_floor > 0:
                hid |= in_boxes_pairs(pts_k, tested[M:], (pi[~occl], bi[~occl] - M))
            vis[keep[hid]] = False
        hits.append(CameraHits(idx[vis], uv_i[vis], depth_i[vis]))
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
    boxes: torch.Tensor | np.ndarray | None = None,
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
        boxes: ``(M, >=7)`` the keyframe's GT boxes in its ego frame: the occluders of
            ``cfg.box_occluders`` (:func:`camera_hits`).
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
    hits = camera_hits(pts, cams, cfg, boxes)
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
