"""Deformable feature aggregation of the sparse head: each query samples features at its keypoints.

DualViewDistill's decoder aggregates first from the distilled BEV map, then from the cameras' feature
pyramids, each as a residual the caller adds: ``f' = f + BEVDeformableAggregation(f, ...)``, then
``f'' = f' + PVDeformableAggregation(f', ...)``. Both modules return only the features to add.

Per query, with the keypoints of :class:`~trainer.models.components.sparse.keypoints.KeypointGenerator`:
the C channels are split into G groups of ``C / G``; every sample (keypoint, and for PV camera and
level) gets one attention weight per group, a softmax over the query's samples of a ``Linear`` of
``instance_feature + anchor_embed`` (for PV plus a camera embedding); the group's channels of the
bilinearly sampled features are summed with those weights; an output ``Linear`` (then dropout, off
by default) mixes the groups.

Sampling conventions (``F.grid_sample``, ``align_corners=False``, zero padding)
------------------------------------------------------------------------------
``grid_sample`` with ``align_corners=False`` reads the normalised coordinate ``g in [-1, 1]`` of a
map ``n`` samples wide at the continuous position ``(g + 1) / 2 * n`` whose sample k covers
``[k, k + 1)``, centre ``k + 0.5``. That is exactly the convention of both our continuous coordinates:

- BEV: :meth:`GridSpec.metric_to_cell` gives ``(ix, iy)`` with cell centres at ``k + 0.5``, so
  ``g = 2 ix / nx - 1`` (x, columns) and ``2 iy / ny - 1`` (y, rows); the keypoint's height is dropped.
- PV: ``bevlabels.geometry``'s pixels ``(u, v)``, pixel i covering ``[i, i + 1)`` of the augmented
  image ``(H, W)``; a level ``(h_l, w_l)`` is taken to span the whole image (its cell x covers pixels
  ``[x W / w_l, (x + 1) W / w_l)``, lift-splat's ``[s x, s (x + 1))`` when ``W = s w_l``), so
  ``g = 2 u / W - 1`` and ``2 v / H - 1`` on every level. The PV module reads only the valid (camera,
  query, keypoint) samples, with :func:`gather_bilinear` (the same bilinear rule, proven equal to
  grid_sample in the tests): a keypoint is seen by one or two of the six cameras, so grid_sample's
  every-camera layout did six times the work (median 2.40 -> 1.88 s per CPU training step of
  ``experiment=dvd``: ``results/step_time_pv_gather.md``).

Masking
-------
A sample that cannot see anything, a BEV keypoint off the grid (continuous cell coordinate outside
``[0, nx) x [0, ny)``), a PV keypoint behind a camera (depth ``<= min_depth``) or outside its image
(``u`` outside ``[0, W)`` or ``v`` outside ``[0, H)``), gets no weight: its logit is ``-inf`` in the
softmax, so the query's weight is shared among the samples that do see something (an object at the
grid's edge or seen by one camera is not diluted by the keypoints that fall off), and its features
are never read (its sampling position is parked outside the map, where the zero padding gives 0).
Both modules treat off-map samples the same way. A query none of whose samples is valid gets zero
weights and a zero output (not the output projection's bias), with finite values and gradients.
Inside the map, the bilinear taps that fall outside (within half a cell of the border) read
grid_sample's zero padding.

Projection: keypoints are mapped with ``img_from_ego = K_aug (4x4) @ cam_from_ego``, the image
augmentation folded into the intrinsics (``trainer.data.camera``), in float32 with elementwise
products (no autocast-lowered matmul), so ``(u, v, d) = img_from_ego[:3] @ (x, y, z, 1)`` and
``(u, v) /= d``.

Shape letters: B batch, Q queries, C channels, G groups, P keypoints, N cameras, L levels,
h_l/w_l a level's rows/columns, H/W the BEV grid's rows (ego y)/columns (ego x) or the image's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bevlabels.grid import GridSpec, as_grid
from trainer.models.components.sparse.anchors import ANCHOR_DIM
from trainer.models.components.sparse.keypoints import DEFAULT_FIX_SCALE, KeypointGenerator

#: where an invalid sample is parked for grid_sample: fully outside [-1, 1], so it reads zeros
_PARKED = -2.0


# ---------------------------------------------------------------------------------------------
# Coordinates and the masked softmax (public: tests and other heads use the same code path)


def bev_sample_coords(points: torch.Tensor, grid: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_sample coordinates ``(..., 2)`` of ego points ``(..., 3)`` on a BEV map, and ``inside (...)``.

    ``coords[..., 0]`` indexes the map's columns (ego x), ``coords[..., 1]`` its rows (ego y); ``inside``
    is False where the continuous cell coordinate leaves ``[0, nx) x [0, ny)`` (the cells
    :meth:`GridSpec.cell_index` calls outside). Height is ignored.
    """
    assert points.shape[-1] in (2, 3), f"points must be (..., 3); got {tuple(points.shape)}"
    cell = grid.metric_to_cell(points[..., :2])  # (..., 2) continuous (ix, iy)
    n = cell.new_tensor([grid.nx, grid.ny])
    inside = (cell >= 0).all(-1) & (cell < n).all(-1)  # (...)
    return cell / n * 2.0 - 1.0, inside


def project_to_cameras(
    points: torch.Tensor,
    img_from_ego: torch.Tensor,
    image_hw: Sequence[float],
    min_depth: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels, depths and validity of keypoints ``(B, Q, P, 3)`` in every camera ``(B, N, 4, 4)``.

    Returns ``uv (B, N, Q, P, 2)`` float32 continuous pixels of the augmented image (finite, garbage
    where invalid), ``depth (B, N, Q, P)`` the camera z, and ``valid (B, N, Q, P)``: ``depth >
    min_depth`` and ``0 <= u < W``, ``0 <= v < H`` (``bevlabels.geometry.project_points``'s mask).
    """
    assert points.ndim == 4 and points.shape[-1] == 3, f"points must be (B, Q, P, 3); got {tuple(points.shape)}"
    b = points.shape[0]
    assert img_from_ego.ndim == 4 and img_from_ego.shape[0] == b and img_from_ego.shape[-2:] == (4, 4), (
        f"img_from_ego must be (B, N, 4, 4) with B = {b}; got {tuple(img_from_ego.shape)}"
    )
    height, width = (float(v) for v in image_hw)
    dt = torch.promote_types(points.dtype, torch.float32)
    p = points.to(dt)[:, None, :, :, None, :]  # (B, 1, Q, P, 1, 3)
    m = img_from_ego.to(dt)[:, :, None, None, :3]  # (B, N, 1, 1, 3, 4)
    uvd = (m[..., :3] * p).sum(-1) + m[..., 3]  # (B, N, Q, P, 3)
    depth = uvd[..., 2]  # (B, N, Q, P)
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    uv = uvd[..., :2] / safe[..., None]  # (B, N, Q, P, 2)
    u, v = uv.unbind(-1)
    valid = (depth > min_depth) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    uv = torch.where(valid[..., None], uv, torch.zeros_like(uv))  # keep garbage finite
    return uv, depth, valid


def pixels_to_grid_coords(uv: torch.Tensor, image_hw: Sequence[float]) -> torch.Tensor:
    """grid_sample coordinates ``(..., 2)`` of continuous pixels ``(..., 2)`` of an ``(H, W)`` image (any level)."""
    assert uv.shape[-1] == 2, f"uv must be (..., 2); got {tuple(uv.shape)}"
    height, width = (float(v) for v in image_hw)
    return uv / uv.new_tensor([width, height]) * 2.0 - 1.0


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` along ``dim`` over the entries where ``valid`` (broadcast) holds; 0 elsewhere.

    Where no entry along ``dim`` is valid, every weight is 0 (no NaN in values or gradients).
    """
    valid = valid.expand_as(logits)
    any_valid = valid.any(dim, keepdim=True)
    masked = logits.masked_fill(~valid, float("-inf"))
    masked = torch.where(any_valid, masked, torch.zeros_like(masked))
    return masked.softmax(dim) * valid


def bilinear_sample(feature: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``(M, C, Q, P)`` of maps ``(M, C, h, w)`` at grid_sample coordinates ``(M, Q, P, 2)``.

    Sampled in the wider of the two dtypes (float32 coordinates keep sub-cell precision under bf16).
    """
    dt = torch.promote_types(feature.dtype, coords.dtype)
    return F.grid_sample(
        feature.to(dt), coords.to(dt), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (M, C, Q, P)


def gather_bilinear(
    table: torch.Tensor, base: torch.Tensor, x: torch.Tensor, y: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Bilinear samples ``(E, C)`` of E points, each on its own ``(h, w)`` map stored as rows of ``table``.

    ``table (R, C)``: maps laid out row-major, a map's sample ``(row i, column j)`` at ``table[base + i * w + j]``;
    ``base (E,)`` long, the first row of each point's map; ``x, y (E,)`` continuous map coordinates, sample k
    covering ``[k, k + 1)`` (grid_sample's ``align_corners=False``). Taps outside the map read 0 (zero padding),
    so this equals :func:`bilinear_sample` at ``(2 x / w - 1, 2 y / h - 1)``, values and gradients, for the
    points it is given; its cost is E, not every map times every point.
    """
    assert table.ndim == 2 and base.shape == x.shape == y.shape and x.ndim == 1, (
        f"table must be (R, C) and base, x, y (E,); got {tuple(table.shape)}, {tuple(base.shape)}, "
        f"{tuple(x.shape)}, {tuple(y.shape)}"
    )
    x, y = x.to(table.dtype) - 0.5, y.to(table.dtype) - 0.5  # index space: sample k at k
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    out = None
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = base + yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)
        tap = table.index_select(0, idx) * (wgt * inside)[:, None]  # (E, C)
        out = tap if out is None else out + tap
    return out if out is not None else table.new_zeros(0, table.shape[1])


def _check_query_inputs(instance_feature, anchor, anchor_embed, embed_dims: int) -> tuple[int, int]:
    assert instance_feature.ndim == 3 and instance_feature.shape[-1] == embed_dims, (
        f"instance_feature must be (B, Q, {embed_dims}); got {tuple(instance_feature.shape)}"
    )
    b, q = instance_feature.shape[:2]
    assert anchor.shape == (b, q, ANCHOR_DIM), f"anchor must be (B, Q, 11) = {(b, q, 11)}; got {tuple(anchor.shape)}"
    assert anchor_embed.shape == (b, q, embed_dims), (
        f"anchor_embed must be (B, Q, C) = {(b, q, embed_dims)}; got {tuple(anchor_embed.shape)}"
    )
    return b, q


class _DeformableBase(nn.Module):
    """What both aggregations share: groups, keypoints, output projection, dropout, initialisation."""

    def __init__(
        self,
        embed_dims: int,
        num_groups: int,
        num_learned: int,
        fix_scale: Sequence[Sequence[float]],
        dropout: float,
    ):
        super().__init__()
        if embed_dims % num_groups:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_groups ({num_groups})")
        self.embed_dims = int(embed_dims)
        self.num_groups = int(num_groups)
        self.group_dims = self.embed_dims // self.num_groups
        self.keypoints = KeypointGenerator(embed_dims, num_learned, fix_scale)
        self.num_points = self.keypoints.num_points
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)

    def init_weights(self) -> None:
        """Sparse4D's: zero attention logits (uniform weights at first), Xavier output projection, zero biases."""
        nn.init.zeros_(self.weights_fc.weight)
        nn.init.zeros_(self.weights_fc.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        self.keypoints.init_weights()

    def _finish(self, grouped: torch.Tensor, any_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Output ``(B, Q, C)`` of group sums ``(B, Q, G, C/G)``; zero for queries ``(B, Q)`` with no valid sample."""
        b, q = grouped.shape[:2]
        out = self.dropout(self.output_proj(grouped.reshape(b, q, self.embed_dims).to(dtype)))  # (B, Q, C)
        return out * any_valid[..., None].to(out.dtype)


class BEVDeformableAggregation(_DeformableBase):
    """Features ``(B, Q, C)`` to add to the queries, sampled from a BEV map ``(B, C, H, W)`` of ``grid``.

    One view, one level: ``weights_fc`` maps ``instance_feature + anchor_embed`` to ``P * G`` logits,
    laid out ``(P, G)``, a masked softmax over the P keypoints per group (module docstring).
    """

    def __init__(
        self,
        embed_dims: int,
        grid: GridSpec | Mapping,
        num_groups: int = 8,
        num_learned: int = 6,
        fix_scale: Sequence[Sequence[float]] = DEFAULT_FIX_SCALE,
        dropout: float = 0.0,
    ):
        super().__init__(embed_dims, num_groups, num_learned, fix_scale, dropout)
        self.grid = as_grid(grid)
        self.weights_fc = nn.Linear(embed_dims, self.num_points * self.num_groups)
        self.init_weights()

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        anchor_embed: torch.Tensor,
        bev: torch.Tensor,
    ) -> torch.Tensor:
        """Args: ``instance_feature (B, Q, C)``, ``anchor (B, Q, 11)``, ``anchor_embed (B, Q, C)``, ``bev (B, C, H, W)``."""
        b, q = _check_query_inputs(instance_feature, anchor, anchor_embed, self.embed_dims)
        assert bev.shape == (b, self.embed_dims, *self.grid.shape), (
            f"bev must be (B, C, H, W) = {(b, self.embed_dims, *self.grid.shape)} for grid {self.grid.name}; "
            f"got {tuple(bev.shape)}"
        )
        g, cg, p = self.num_groups, self.group_dims, self.num_points
        points = self.keypoints(anchor, instance_feature)  # (B, Q, P, 3)
        coords, valid = bev_sample_coords(points, self.grid)  # (B, Q, P, 2), (B, Q, P)
        coords = torch.where(valid[..., None], coords, torch.full_like(coords, _PARKED))
        feats = bilinear_sample(bev, coords).reshape(b, g, cg, q, p)  # (B, G, C/G, Q, P)
        logits = self.weights_fc(instance_feature + anchor_embed).reshape(b, q, p, g).transpose(2, 3)  # (B, Q, G, P)
        weights = masked_softmax(logits, valid[:, :, None], dim=-1)  # (B, Q, G, P)
        grouped = torch.einsum("bgcqp,bqgp->bqgc", feats, weights.to(feats.dtype))  # (B, Q, G, C/G)
        return self._finish(grouped, valid.any(-1), instance_feature.dtype)


class PVDeformableAggregation(_DeformableBase):
    """Features ``(B, Q, C)`` to add to the queries, sampled from N cameras' L feature levels.

    Logits per group for every (camera, level, keypoint), laid out ``(L, P, G)`` per camera: with
    ``use_camera_embed`` (Sparse4D's ``camera_encoder``), ``weights_fc`` reads ``instance_feature +
    anchor_embed + camera_embed``, the embedding a ``Linear-ReLU-LayerNorm`` x2 MLP of the camera's
    12 normalised projection parameters (rows of ``img_from_ego[:3]`` divided by ``W``, ``H``, 1: the
    map from ego points to homogeneous image coordinates in ``[0, 1]``, independent of the image
    resolution); without it, one ``Linear`` gives all ``N * L * P * G`` logits (layout ``(N, L, P, G)``).
    The softmax runs jointly over cameras x levels x keypoints per group, masked (module docstring).
    """

    def __init__(
        self,
        embed_dims: int,
        num_levels: int,
        num_cams: int,
        num_groups: int = 8,
        num_learned: int = 6,
        use_camera_embed: bool = True,
        fix_scale: Sequence[Sequence[float]] = DEFAULT_FIX_SCALE,
        dropout: float = 0.0,
        min_depth: float = 1e-3,
    ):
        super().__init__(embed_dims, num_groups, num_learned, fix_scale, dropout)
        self.num_levels = int(num_levels)
        self.num_cams = int(num_cams)
        self.min_depth = float(min_depth)
        per_cam = self.num_levels * self.num_points * self.num_groups
        if use_camera_embed:
            self.camera_encoder = nn.Sequential(
                nn.Linear(12, embed_dims),
                nn.ReLU(),
                nn.LayerNorm(embed_dims),
                nn.Linear(embed_dims, embed_dims),
                nn.ReLU(),
                nn.LayerNorm(embed_dims),
            )
            self.weights_fc = nn.Linear(embed_dims, per_cam)
        else:
            self.camera_encoder = None
            self.weights_fc = nn.Linear(embed_dims, self.num_cams * per_cam)
        self.init_weights()

    def camera_params(self, img_from_ego: torch.Tensor, image_hw: Sequence[float]) -> torch.Tensor:
        """The camera encoder's input ``(B, N, 12)``: ``img_from_ego[:3]`` rows over ``(W, H, 1)``, flattened."""
        height, width = (float(v) for v in image_hw)
        scale = img_from_ego.new_tensor([1.0 / width, 1.0 / height, 1.0])[:, None]  # (3, 1)
        return (img_from_ego[..., :3, :] * scale).flatten(-2)  # (B, N, 12)

    def logits(self, query: torch.Tensor, img_from_ego: torch.Tensor, image_hw: Sequence[float]) -> torch.Tensor:
        """Attention logits ``(B, Q, N, L, P, G)`` of ``query = instance_feature + anchor_embed (B, Q, C)``."""
        b, q = query.shape[:2]
        n, lv, p, g = self.num_cams, self.num_levels, self.num_points, self.num_groups
        if self.camera_encoder is None:
            return self.weights_fc(query).reshape(b, q, n, lv, p, g)  # (B, Q, N, L, P, G)
        cam = self.camera_params(img_from_ego, image_hw).to(query.dtype)  # (B, N, 12)
        embed = self.camera_encoder(cam)  # (B, N, C)
        return self.weights_fc(query[:, :, None] + embed[:, None]).reshape(b, q, n, lv, p, g)  # (B, Q, N, L, P, G)

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        anchor_embed: torch.Tensor,
        img_feats: Sequence[torch.Tensor],
        img_from_ego: torch.Tensor,
        image_hw: Sequence[float],
    ) -> torch.Tensor:
        """Features to add ``(B, Q, C)``.

        Args:
            instance_feature: ``(B, Q, C)``; anchor: ``(B, Q, 11)``; anchor_embed: ``(B, Q, C)``.
            img_feats: L levels, each ``(B, N, C, h_l, w_l)``.
            img_from_ego: ``(B, N, 4, 4)`` ``K_aug`` (padded to 4x4) ``@ cam_from_ego``.
            image_hw: ``(H, W)`` of the augmented image, in pixels.
        """
        b, q = _check_query_inputs(instance_feature, anchor, anchor_embed, self.embed_dims)
        n, g, cg, p = self.num_cams, self.num_groups, self.group_dims, self.num_points
        assert len(img_feats) == self.num_levels, f"img_feats must hold {self.num_levels} levels; got {len(img_feats)}"
        for lvl, feat in enumerate(img_feats):
            assert feat.ndim == 5 and feat.shape[:3] == (b, n, self.embed_dims), (
                f"img_feats[{lvl}] must be (B, N, C, h, w) with (B, N, C) = {(b, n, self.embed_dims)}; "
                f"got {tuple(feat.shape)}"
            )
        assert img_from_ego.shape == (b, n, 4, 4), (
            f"img_from_ego must be (B, N, 4, 4) = {(b, n, 4, 4)}; got {tuple(img_from_ego.shape)}"
        )
        assert len(image_hw) == 2, f"image_hw must be (H, W); got {image_hw}"

        points = self.keypoints(anchor, instance_feature)  # (B, Q, P, 3)
        uv, _, valid = project_to_cameras(
            points, img_from_ego, image_hw, self.min_depth
        )  # (B, N, Q, P, 2), (B, N, Q, P)
        nl = self.num_levels
        logits = self.logits(instance_feature + anchor_embed, img_from_ego, image_hw)  # (B, Q, N, L, P, G)
        logits = logits.permute(0, 1, 5, 2, 3, 4).reshape(b, q, g, n * nl * p)  # (B, Q, G, N*L*P)
        mask = valid.permute(0, 2, 1, 3)[:, :, None, :, None, :]  # (B, Q, 1, N, 1, P)
        mask = mask.expand(b, q, 1, n, nl, p).reshape(b, q, 1, -1)  # (B, Q, 1, N*L*P)
        weights = masked_softmax(logits, mask, dim=-1).reshape(b, q, g, n, nl, p)  # (B, Q, G, N, L, P)

        # Only the valid (camera, query, keypoint) samples are read: a keypoint is seen by one or two of the
        # N cameras, so sampling every camera (grid_sample's layout) would read and back-propagate N-fold.
        bi, ni, qi, pi = valid.nonzero(as_tuple=True)  # E valid samples
        w_e = weights.permute(0, 3, 1, 5, 4, 2)[bi, ni, qi, pi]  # (E, L, G)
        uv_e = uv[bi, ni, qi, pi]  # (E, 2) pixels of the augmented image
        dt = torch.promote_types(img_feats[0].dtype, uv_e.dtype)
        height, width = (float(v) for v in image_hw)
        rows, grouped_e, offset = [], None, 0
        for feat in img_feats:  # one table of feature rows (every level, camera and sample) for one gather
            rows.append(feat.permute(0, 1, 3, 4, 2).reshape(-1, self.embed_dims))  # (B*N*h*w, C)
        table = torch.cat(rows).to(dt)
        for lvl, feat in enumerate(img_feats):
            h, w = feat.shape[-2:]
            base = offset + (bi * n + ni) * (h * w)  # (E,) first row of each sample's (b, n) map at this level
            s = gather_bilinear(table, base, uv_e[:, 0] * (w / width), uv_e[:, 1] * (h / height), h, w)  # (E, C)
            term = s.reshape(-1, g, cg) * w_e[:, lvl, :, None].to(dt)  # (E, G, C/G)
            grouped_e = term if grouped_e is None else grouped_e + term
            offset += feat.shape[0] * n * h * w
        grouped = table.new_zeros(b * q, g, cg).index_add(0, bi * q + qi, grouped_e).reshape(b, q, g, cg)
        return self._finish(grouped, valid.any(-1).any(1), instance_feature.dtype)
