"""TiG-BEV's supervision of a camera student (``../shared/papers/tig-bev.md``, Sections 3.2 to 3.4).

The losses themselves are pure functions of :mod:`trainer.models.losses`
(:func:`~trainer.models.losses.inner_depth_loss`, :func:`~trainer.models.losses.inter_channel_loss`,
:func:`~trainer.models.losses.inter_keypoint_loss`); this module builds their inputs from a camera
batch and a :class:`~trainer.models.components.camera_bev.CameraBEV`'s outputs, and
:class:`TiGLoss` weighs them. It reads only ``depth_logits`` and ``bev``, which every camera
detector of this project has, so BEVDepth and DualViewDistill get it alike (through their shared
LightningModule), without either model knowing of it.

Inner depth (:func:`inner_depth_cells`)
---------------------------------------
The objects' pixels are the batch's ``fg_px`` rows whose ``gt`` column names a ``gt_boxes`` row (LiDAR
points inside a GT box that the GT filter kept), after the image augmentation. Each pixel falls in one
feature cell (``stride`` pixels a side); per object, camera and cell the LiDAR depth is the *minimum*
of its pixels (BEVDepth's dense target rule), and the prediction is the expectation of the cell's
depth distribution over the bin centres (Eq. 1). A group is one object in one camera (an object seen
by two cameras has two depth references). Pixels outside the bins' range are left out.

References: ``adaptive`` (the paper's: the cell of least ``|gt - pred|``), or the "all-to-certain"
ones of its Table 4: ``center3d`` (the object's cell nearest to its 3D box centre projected into the
camera; if the centre is behind the camera, the group's first cell) and ``center2d`` (the cell
nearest to the centre of the object's 2D extent: the box around its cells' centres).

Inner feature (:func:`box_bev_keypoints`, :func:`sample_bev_points`)
--------------------------------------------------------------------
Each GT box is enlarged in BEV by ``enlarge`` (length and width) and covered by an ``n_l x n_w``
lattice of keypoints at the centres of equal sub-rectangles, rotated by its yaw: every keypoint lies
strictly inside the enlarged box. Both BEV maps are read bilinearly at the same metric points
(``grid_sample``, zero padding off the grid). The teacher's map was brought into the augmented BEV
frame by the data module (as the DINOv2 grid), so the boxes, the student's map and the teacher's map
share one frame. When the student's channel count differs from the teacher's, a learned linear adapter
(a 1x1 convolution applied where the map is read) maps the student's keypoint features to the teacher's
channels before the similarity matrices.

Shape letters: B batch, N cameras, D depth bins, h/w feature rows/columns, C/C_t student/teacher
channels, H/W BEV rows/columns, M objects, P keypoints per object, E object cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bevlabels.grid import GridSpec, as_grid
from trainer.models.components.camera_bev import img_from_ego_of
from trainer.models.components.lift_splat import DepthBins
from trainer.models.components.sparse.aggregation import bev_sample_coords, bilinear_sample
from trainer.models.losses import inner_depth_loss, inter_channel_loss, inter_keypoint_loss

#: the inner-depth reference rules (module docstring); ``adaptive`` is the paper's
REFERENCES = ("adaptive", "center3d", "center2d")


# ---------------------------------------------------------------------------------------------
# Inner depth


def inner_depth_cells(
    depth_logits: torch.Tensor,
    fg_px: Sequence[torch.Tensor],
    bins: DepthBins,
    stride: int,
    reference: str = "adaptive",
    img_from_ego: torch.Tensor | None = None,
    gt_boxes: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The inputs of :func:`~trainer.models.losses.inner_depth_loss`: one entry per (object, camera, cell).

    Args:
        depth_logits: ``(B, N, D, h, w)``.
        fg_px: B tensors ``(R_b, 6)``, rows ``cam, u, v, depth, obj, gt`` (the camera batch's).
        bins: the model's depth bins; stride: image pixels per feature cell.
        reference: one of :data:`REFERENCES`.
        img_from_ego: ``(B, N, 4, 4)`` (``center3d`` only): ``K_aug`` padded to 4x4 ``@ cam_from_ego``.
        gt_boxes: B tensors ``(M_b, 9)`` (``center3d`` only).

    Returns ``{"pred": (E,), "gt": (E,), "group": (E,) int64, "ref_score": (E,) or None, "b", "cam",
    "iy", "ix", "obj": (E,) int64}``; ``ref_score`` is None for ``adaptive`` (the loss then uses the error).
    """
    if reference not in REFERENCES:
        raise ValueError(f"inner-depth reference must be one of {REFERENCES}; got {reference!r}")
    B, N, D, h, w = depth_logits.shape
    assert D == bins.num, f"depth_logits has {D} bins; the model's bins have {bins.num}"
    assert len(fg_px) == B, f"{len(fg_px)} fg_px tables for a batch of {B}"
    device = depth_logits.device
    keys = []
    gts = []
    for b, px in enumerate(fg_px):
        assert px.ndim == 2 and px.shape[1] == 6, (
            f"fg_px[{b}] must be (R, 6) cam, u, v, depth, obj, gt; got {tuple(px.shape)}"
        )
        px = px.to(device)
        cam, ix, iy = px[:, 0].long(), (px[:, 1] // stride).long(), (px[:, 2] // stride).long()
        depth, obj = px[:, 3].float(), px[:, 5].long()
        ok = (obj >= 0) & (cam >= 0) & (cam < N) & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        ok &= (depth >= bins.d_min) & (depth < bins.d_max)
        bb = torch.full_like(cam, b)
        keys.append(torch.stack([bb, cam, obj, iy, ix], 1)[ok])
        gts.append(depth[ok])
    key = torch.cat(keys) if keys else torch.zeros(0, 5, dtype=torch.long, device=device)
    depth = torch.cat(gts) if gts else torch.zeros(0, device=device)
    # one entry per (b, cam, obj, iy, ix): its min LiDAR depth
    cells, inv = torch.unique(key, dim=0, return_inverse=True)  # (E, 5)
    gt = depth.new_full((len(cells),), float("inf")).scatter_reduce(0, inv, depth, reduce="amin")
    b, cam, obj, iy, ix = cells.unbind(1)
    logits = depth_logits[b, cam, :, iy, ix].float()  # (E, D)
    pred = (logits.softmax(-1) * bins.centres(device=device)).sum(-1)  # (E,) Eq. 1
    obj_stride = int(obj.max().item()) + 1 if len(obj) else 1
    group = (b * N + cam) * obj_stride + obj
    out = {
        "pred": pred,
        "gt": gt,
        "group": group,
        "ref_score": None,
        "b": b,
        "cam": cam,
        "iy": iy,
        "ix": ix,
        "obj": obj,
    }
    if reference == "adaptive" or len(cells) == 0:
        return out
    u = (ix.float() + 0.5) * stride  # cell centres in augmented-image pixels
    v = (iy.float() + 0.5) * stride
    if reference == "center2d":
        _, ginv = torch.unique(group, return_inverse=True)
        G = int(ginv.max().item()) + 1
        lo_u = u.new_full((G,), float("inf")).scatter_reduce(0, ginv, u, reduce="amin")
        hi_u = u.new_full((G,), float("-inf")).scatter_reduce(0, ginv, u, reduce="amax")
        lo_v = v.new_full((G,), float("inf")).scatter_reduce(0, ginv, v, reduce="amin")
        hi_v = v.new_full((G,), float("-inf")).scatter_reduce(0, ginv, v, reduce="amax")
        cu, cv = (lo_u + hi_u)[ginv] / 2, (lo_v + hi_v)[ginv] / 2
        out["ref_score"] = torch.hypot(u - cu, v - cv)
        return out
    # center3d
    if img_from_ego is None or gt_boxes is None:
        raise ValueError("the center3d inner-depth reference needs img_from_ego and gt_boxes")
    boxes = [g.to(device=device, dtype=torch.float32) for g in gt_boxes]
    offsets = torch.tensor([0] + [len(g) for g in boxes], device=device).cumsum(0)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 9, device=device)
    centres = all_boxes[offsets[b] + obj, :3]  # (E, 3) each cell's box centre
    m = img_from_ego.to(device=device, dtype=torch.float32)[b, cam]  # (E, 4, 4)
    uvd = (m[:, :3, :3] * centres[:, None, :]).sum(-1) + m[:, :3, 3]  # (E, 3); elementwise: no bf16 under autocast
    d = uvd[:, 2]
    front = d > 1e-3
    safe = torch.where(front, d, torch.ones_like(d))
    score = torch.hypot(u - uvd[:, 0] / safe, v - uvd[:, 1] / safe)
    out["ref_score"] = torch.where(front, score, torch.zeros_like(score))  # behind: every cell ties, the first wins
    return out


# ---------------------------------------------------------------------------------------------
# Inner feature


def box_bev_keypoints(boxes: torch.Tensor, num_points: Sequence[int] = (4, 4), enlarge: float = 1.2) -> torch.Tensor:
    """``(M, P = n_l * n_w, 2)`` BEV keypoints of boxes ``(M, >= 7)`` (``x, y, z, l, w, h, yaw, ...``).

    An ``n_l x n_w`` lattice at the centres of equal sub-rectangles of the box enlarged by ``enlarge``
    in length and width, rotated by yaw about the centre: all strictly inside the enlarged box.
    """
    n_l, n_w = (int(v) for v in num_points)
    if n_l < 1 or n_w < 1 or enlarge <= 0:
        raise ValueError(f"num_points must be two positive counts and enlarge > 0; got {num_points}, {enlarge}")
    assert boxes.ndim == 2 and boxes.shape[1] >= 7, f"boxes must be (M, 9); got {tuple(boxes.shape)}"
    dt, dev = boxes.dtype, boxes.device
    sl = (torch.arange(n_l, dtype=dt, device=dev) + 0.5) / n_l - 0.5  # (n_l,) in (-0.5, 0.5)
    sw = (torch.arange(n_w, dtype=dt, device=dev) + 0.5) / n_w - 0.5
    gl, gw = torch.meshgrid(sl, sw, indexing="ij")
    lx = gl.reshape(1, -1) * boxes[:, 3:4] * enlarge  # (M, P) along the heading
    ly = gw.reshape(1, -1) * boxes[:, 4:5] * enlarge
    c, s = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    x = boxes[:, 0:1] + c * lx - s * ly
    y = boxes[:, 1:2] + s * lx + c * ly
    return torch.stack([x, y], -1)  # (M, P, 2)


def sample_bev_points(bev: torch.Tensor, points: Sequence[torch.Tensor], grid: GridSpec | Mapping) -> torch.Tensor:
    """Bilinear features ``(sum M_b, P, C)`` of maps ``bev (B, C, H, W)`` at metric points ``points[b] (M_b, P, 2)``.

    The sparse head's own BEV sampling path (``bev_sample_coords`` + ``bilinear_sample``: grid_sample with
    ``align_corners=False`` on the cell coordinates of ``grid``), zeros off the grid; float32 at least.
    """
    grid = as_grid(grid)
    B, C = bev.shape[:2]
    assert bev.shape[2:] == grid.shape, f"bev {tuple(bev.shape)} is not on the grid {grid.name} {grid.shape}"
    assert len(points) == B, f"{len(points)} point sets for a batch of {B}"
    dt = torch.promote_types(bev.dtype, torch.float32)
    out = []
    for b, pts in enumerate(points):
        if len(pts) == 0:
            out.append(bev.new_zeros(0, pts.shape[1] if pts.ndim == 3 else 0, C, dtype=dt))
            continue
        coords, _ = bev_sample_coords(pts.to(device=bev.device, dtype=dt), grid)  # (M_b, P, 2)
        out.append(bilinear_sample(bev[b : b + 1], coords[None])[0].permute(1, 2, 0))  # (M_b, P, C)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# The weighted terms


class TiGLoss(nn.Module):
    """TiG-BEV's terms for a camera student, each with its weight (0 switches it off, and builds nothing for it).

    Args:
        student_channels: C of the student's BEV map.
        teacher_channels: C_t of the teacher's cached maps (the feature terms need it; checked against the
            store at setup). A linear adapter C -> C_t is learned when they differ.
        inner_depth_weight, inter_channel_weight, inter_keypoint_weight: the three terms' weights.
        reference: the inner-depth reference (:data:`REFERENCES`).
        detach_reference: whether the reference cell's predicted depth is a constant of the inner-depth loss
            (the authors' code; :func:`~trainer.models.losses.inner_depth_loss`).
        num_keypoints: ``(n_l, n_w)`` keypoints per box; enlarge: the boxes' BEV enlargement factor.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int | None = None,
        inner_depth_weight: float = 0.0,
        inter_channel_weight: float = 0.0,
        inter_keypoint_weight: float = 0.0,
        reference: str = "adaptive",
        detach_reference: bool = True,
        num_keypoints: Sequence[int] = (4, 4),
        enlarge: float = 1.2,
    ):
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"model.tig.reference must be one of {REFERENCES}; got {reference!r}")
        weights = (inner_depth_weight, inter_channel_weight, inter_keypoint_weight)
        if any(float(x) < 0 for x in weights):
            raise ValueError(f"model.tig weights must be >= 0; got {weights}")
        self.inner_depth_weight, self.inter_channel_weight, self.inter_keypoint_weight = (float(x) for x in weights)
        self.reference = reference
        self.detach_reference = bool(detach_reference)
        self.num_keypoints = tuple(int(v) for v in num_keypoints)
        self.enlarge = float(enlarge)
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels) if teacher_channels is not None else None
        if self.uses_teacher and self.teacher_channels is None:
            raise ValueError(
                "model.tig: the inner-feature terms need model.tig.teacher_channels (C_t of the store's teacher/bev)"
            )
        self.adapter = None
        if self.uses_teacher and self.teacher_channels != self.student_channels:
            self.adapter = nn.Linear(self.student_channels, self.teacher_channels)

    @property
    def uses_teacher(self) -> bool:
        return self.inter_channel_weight > 0 or self.inter_keypoint_weight > 0

    @property
    def active(self) -> bool:
        return self.inner_depth_weight > 0 or self.uses_teacher

    def forward(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any], bins: DepthBins, stride: int, grid: GridSpec
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | float]:
        """``(parts, weighted sum)``: ``tig_depth``, ``tig_ic``, ``tig_ik`` (unweighted) for the terms that run."""
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | float = 0.0
        if self.inner_depth_weight > 0:
            if "fg_px" not in batch:
                raise KeyError("the inner-depth loss needs batch['fg_px'] (the camera data module's)")
            extra = {}
            if self.reference == "center3d":
                extra = {
                    "img_from_ego": img_from_ego_of(batch["K"], batch["ego_from_cam"]),
                    "gt_boxes": batch["gt_boxes"],
                }
            cells = inner_depth_cells(outputs["depth_logits"], batch["fg_px"], bins, stride, self.reference, **extra)
            parts["tig_depth"] = inner_depth_loss(
                cells["pred"], cells["gt"], cells["group"], cells["ref_score"], self.detach_reference
            )
            total = total + self.inner_depth_weight * parts["tig_depth"]
        if self.uses_teacher:
            teacher = batch.get("teacher_bev")
            if teacher is None:
                raise KeyError("the inner-feature distillation needs batch['teacher_bev']: set data.load_teacher=true")
            if teacher.shape[1] != self.teacher_channels:
                raise ValueError(
                    f"the teacher maps have {teacher.shape[1]} channels; model.tig.teacher_channels is "
                    f"{self.teacher_channels}: set it to {teacher.shape[1]}"
                )
            bev = outputs["bev"]
            points = [
                box_bev_keypoints(g.to(bev.device).float(), self.num_keypoints, self.enlarge) for g in batch["gt_boxes"]
            ]
            f_s = sample_bev_points(bev, points, grid)  # (M, P, C)
            f_t = sample_bev_points(teacher, points, grid)  # (M, P, C_t)
            if self.adapter is not None:
                f_s = self.adapter(f_s)
            if self.inter_channel_weight > 0:
                parts["tig_ic"] = inter_channel_loss(f_s, f_t)
                total = total + self.inter_channel_weight * parts["tig_ic"]
            if self.inter_keypoint_weight > 0:
                parts["tig_ik"] = inter_keypoint_loss(f_s, f_t)
                total = total + self.inter_keypoint_weight * parts["tig_ik"]
            if self.adapter is not None and len(f_s) == 0:  # no box: keep the adapter in the graph (DDP)
                total = total + sum(p.sum() for p in self.adapter.parameters()) * 0.0
        return parts, total


__all__ = [
    "REFERENCES",
    "TiGLoss",
    "box_bev_keypoints",
    "inner_depth_cells",
    "sample_bev_points",
]
