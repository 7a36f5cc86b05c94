"""CenterPoint's detection head on any BEV map: heatmaps per class group, regression maps, targets, losses, decoding.

The head (Yin et al., "Center-based 3D object detection and tracking", 2021) predicts, per *task*
(a group of classes of similar size, CenterPoint's answer to class imbalance), a heatmap with one
channel per class whose peaks are object centres, and dense regression maps read at the peaks:

========  ====  ===================================================================================
name      C     meaning at an object's centre cell ``(iy, ix)``
========  ====  ===================================================================================
hm        K_t   per-class centre heatmap (logits), Gaussian targets
reg       2     sub-cell offset ``(u - ix, v - iy)`` of the centre, ``u, v`` its continuous cell coordinates
height    1     ``z`` of the box centre (our boxes are centred, not bottom-anchored), metres
dim       3     ``log(l), log(w), log(h)``: our ``L, W, H`` order (extent along the heading, across it, up)
rot       2     ``sin(yaw), cos(yaw)``
vel       2     ``vx, vy`` m/s in the map's (ego) frame (``velocity="mps"``), or the displacement ``v * dt`` in
                metres over the sample's keyframe interval (``velocity="displacement"``, BEVDet4D's target for a
                two-frame BEV map, which shows displacement, not speed); optional, NaN GT velocity masked from the loss
========  ====  ===================================================================================

The head knows nothing of points or cameras: ``forward`` maps a BEV feature map ``(B, C, H, W)``
(rows along ego y, columns along ego x, see ``bevlabels.grid``) to these maps at the same
``(H, W)``, and :meth:`CenterHead.targets` / :meth:`CenterHead.decode` take the
:class:`~bevlabels.grid.GridSpec` of that map. So the LiDAR teacher and a camera BEV student
(BEVDepth) build the same class with their own ``in_channels`` and the same grid.

Labels are indices into ``class_names`` (default: the ten nuScenes detection classes in
``bevlabels.datasets.nuscenes.NuScenesDataset.classes`` order); ``tasks`` group them by name
(default: CenterPoint's six groups). Classes in no task are ignored by targets and never predicted.

Decoding keeps 3x3 local maxima of the sigmoid heatmaps, the top-K over all classes of a task,
applies a score threshold and then *circle NMS* (CenterPoint's nuScenes choice): within each
task, a detection suppresses every lower-scoring one, of any class of the task, whose BEV centre
lies within its class's radius. It is a centre-distance test, not rotated IoU: exact rotated-box
IoU in pure torch is costly, and for a centre-based detector that already keeps only heatmap
peaks, duplicates are near-coincident centres. The default radii are CenterPoint's
(``min_radius = [4, 12, 10, 1, 0.85, 0.175]`` in mmdet3d, compared there with the *squared*
distance), written here as metres.

Precision: targets are built in float64 on the host and kept in float32; the losses and the decoding cast the
head's maps up to float32 first, so under bf16 / fp16 autocast a box centre is not rounded (bf16 adds a cell
index beyond 64 and its offset half a cell off) and the losses are not summed in bf16.

Shape letters: B batch, C channels, H/W rows/columns of the BEV map, K_t classes of a task,
K max objects per sample (``max_objs``), M boxes, S window cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bevlabels.datasets.base import DEFAULT_DT
from bevlabels.datasets.nuscenes import NUSCENES_CLASSES
from bevlabels.geometry import BOX_DIM, VX, VY, YAW, H, L, W, X, Y, Z
from bevlabels.grid import GridSpec
from trainer.models.components.nms import circle_nms
from trainer.models.components.precision import at_least_float32
from trainer.models.losses import gaussian_focal_loss, masked_l1

#: CenterPoint's six nuScenes task groups
CENTERPOINT_TASKS = (
    {"classes": ["car"]},
    {"classes": ["truck", "construction_vehicle"]},
    {"classes": ["bus", "trailer"]},
    {"classes": ["barrier"]},
    {"classes": ["motorcycle", "bicycle"]},
    {"classes": ["pedestrian", "traffic_cone"]},
)

#: regression heads and their channel counts (see the module docstring for their meaning)
HEAD_CHANNELS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
REQUIRED_HEADS = ("reg", "height", "dim", "rot")

#: circle-NMS radii in metres: the square roots of CenterPoint's per-task squared-distance thresholds
#: [4, 12, 10, 1, 0.85, 0.175] for its six groups, given to each class of the group
CENTERPOINT_NMS_RADIUS = {
    "car": 2.0,
    "truck": math.sqrt(12.0),
    "construction_vehicle": math.sqrt(12.0),
    "bus": math.sqrt(10.0),
    "trailer": math.sqrt(10.0),
    "barrier": 1.0,
    "motorcycle": math.sqrt(0.85),
    "bicycle": math.sqrt(0.85),
    "pedestrian": math.sqrt(0.175),
    "traffic_cone": math.sqrt(0.175),
}

#: initial heatmap bias: -log((1 - 0.1) / 0.1) = -2.197, i.e. every cell starts at a 0.1 object prior
#: (RetinaNet's prior trick), so the focal loss does not start swamped by easy negatives
HEATMAP_PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)


# ---------------------------------------------------------------------------------------------
# Gaussian targets


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CenterNet's Gaussian radius ``(...)`` in cells for boxes ``length x width`` cells ``(...)``, as CenterPoint computes it.

    The smallest of three radii, one per way a corner-shifted box can still overlap the true box
    by ``min_overlap`` (IoU). CenterNet's code, which CenterPoint copies, takes the second and
    third roots as ``(b + sqrt(b^2 - 4ac)) / 2`` instead of dividing by ``2a`` (and with the sign of
    ``b`` as written); that formula is kept on purpose, so radii, hence targets, match CenterPoint's.
    """
    length, width = torch.as_tensor(length, dtype=torch.float64), torch.as_tensor(width, dtype=torch.float64)
    s, p = length + width, length * width
    r1 = (s + torch.sqrt(s**2 - 4 * p * (1 - min_overlap) / (1 + min_overlap))) / 2
    r2 = (2 * s + torch.sqrt((2 * s) ** 2 - 16 * (1 - min_overlap) * p)) / 2
    b3 = -2 * min_overlap * s
    r3 = (b3 + torch.sqrt(b3**2 - 16 * min_overlap * (min_overlap - 1) * p)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussians(
    heatmap: torch.Tensor, channel: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """``heatmap (C, H, W)`` raised in place to the max of itself and one Gaussian per object; returns it.

    Object m peaks at exactly 1 at cell ``(cy[m], cx[m])`` of channel ``channel[m]`` and covers the
    ``(2r+1)^2`` window around it, with ``sigma = (2r+1)/6`` (CenterNet's ``draw_umich_gaussian``).
    All objects are drawn in one ``scatter_reduce(amax)``; ``channel, cx, cy, radius`` are int ``(M,)``.
    """
    assert heatmap.ndim == 3 and heatmap.is_contiguous(), (
        f"heatmap must be a contiguous (C, H, W); got {tuple(heatmap.shape)}"
    )
    if len(cx) == 0:
        return heatmap
    C, Hh, Ww = heatmap.shape
    R = int(radius.max())
    d = torch.arange(-R, R + 1, device=heatmap.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)  # (S,) window offsets
    r = radius.long()[:, None]
    sigma = (2 * r + 1).to(heatmap.dtype) / 6  # (M, 1)
    val = torch.exp(-(dx**2 + dy**2)[None].to(heatmap.dtype) / (2 * sigma**2))  # (M, S)
    # (CenterNet zeroes values below eps * max; with sigma = (2r+1)/6 the window's corner is
    # exp(-36 r^2 / (2(2r+1)^2)) >= exp(-9), far above eps, so there is nothing to zero.)
    x, y = cx.long()[:, None] + dx, cy.long()[:, None] + dy  # (M, S)
    ok = (dx.abs() <= r) & (dy.abs() <= r) & (x >= 0) & (x < Ww) & (y >= 0) & (y < Hh)
    flat = (channel.long()[:, None] * Hh + y) * Ww + x
    heatmap.view(-1).scatter_reduce_(0, flat[ok], val[ok], reduce="amax")
    return heatmap


def _to_host(
    boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """B boxes ``(M_b, 9)`` as float64 and labels ``(M_b,)`` as int64 on the host: one copy (one sync) from a device."""
    if all(b.device.type == "cpu" for b in boxes) and all(lb.device.type == "cpu" for lb in labels):
        return [b.double() for b in boxes], [lb.long() for lb in labels]
    counts = [len(b) for b in boxes]
    device = boxes[0].device
    flat = torch.cat(
        [
            torch.cat([b.to(device, torch.float64) for b in boxes]),  # (sum M, 9)
            torch.cat([lb.to(device, torch.float64) for lb in labels])[:, None],  # (sum M, 1): exact below 2**53
        ],
        1,
    ).cpu()
    return list(flat[:, :BOX_DIM].split(counts)), list(flat[:, BOX_DIM].long().split(counts))


# ---------------------------------------------------------------------------------------------
# Reading the maps (the losses are trainer.models.losses.gaussian_focal_loss and masked_l1)


def gather_at(maps: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """Values ``(B, K, C)`` of ``maps (B, C, H, W)`` at flat cell indices ``ind (B, K)`` (``iy * W + ix``)."""
    B, C = maps.shape[:2]
    assert ind.shape[0] == B, f"ind {tuple(ind.shape)} must be (B={B}, K)"
    flat = maps.flatten(2)  # (B, C, H*W)
    return flat.gather(2, ind[:, None].expand(-1, C, -1)).transpose(1, 2)  # (B, K, C)


# ---------------------------------------------------------------------------------------------
# The head


class SeparateHead(nn.Module):
    """One task's maps: for each named head, ``num_convs - 1`` conv3x3+BN+ReLU then a conv3x3 to its channels.

    ``forward(x (B, C, H, W)) -> {name: (B, C_name, H, W)}`` (a new dict each call).
    """

    def __init__(self, in_channels: int, heads: Mapping[str, int], head_channels: int, num_convs: int, hm_bias: float):
        super().__init__()
        self.heads = nn.ModuleDict()
        for name, c_out in heads.items():
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(num_convs - 1):
                layers += [
                    nn.Conv2d(c, head_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(head_channels),
                    nn.ReLU(inplace=True),
                ]
                c = head_channels
            final = nn.Conv2d(c, int(c_out), 3, padding=1, bias=True)
            if name == "hm":
                nn.init.constant_(final.bias, hm_bias)
            layers.append(final)
            self.heads[name] = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}


class CenterHead(nn.Module):
    """CenterPoint's multi-task head: BEV map ``(B, C, H, W)`` to a list, per task, of dicts of maps ``(B, ·, H, W)``.

    Args:
        in_channels: C of the BEV map read (the teacher's neck, or a camera student's BEV encoder).
        class_names: the label space; labels given to :meth:`targets` and returned by
            :meth:`decode` index it.
        tasks: ``[{"classes": [...]}, ...]``, class groups sharing one regression branch.
        common_heads: regression heads and their channels, a subset of ``reg, height, dim, rot, vel``
            containing the first four (channel counts must be those of :data:`HEAD_CHANNELS`).
        share_conv_channels: channels of the conv3x3+BN+ReLU shared by all tasks (CenterPoint's ``shared_conv``).
        head_channels, num_head_convs: width and depth of each head's branch.
        hm_bias: initial bias of the heatmap logits (default :data:`HEATMAP_PRIOR_BIAS`, a 0.1 prior).
        code_weights: per head, a weight or a list of per-channel weights of its L1 loss
            (default CenterPoint's: 1 for all, 0.2 for ``vel``).
        hm_weight, loc_weight: weights of the focal and regression losses (CenterPoint: 1, 0.25).
        min_overlap, min_radius: Gaussian radius from the box size, floored to ``min_radius`` cells.
        max_objs: K, most objects per sample and task kept as targets (first ones in input order).
        score_threshold, topk, post_max_size: decoding: score floor, peaks kept per task before
            NMS, detections kept per task after it (CenterPoint: 0.1, 500, 83).
        nms_type: ``"circle"`` or ``"none"``.
        nms_radius: per class name, the circle-NMS radius in metres (default :data:`CENTERPOINT_NMS_RADIUS`).
        velocity: what ``vel`` regresses: ``"mps"`` (velocity, CenterPoint's) or ``"displacement"`` (``v * dt`` over
            each sample's keyframe interval ``dt``, given to :meth:`targets` and :meth:`decode`; decoded as
            displacement / dt, so the boxes carry m/s either way).
    """

    def __init__(
        self,
        in_channels: int,
        class_names: Sequence[str] = NUSCENES_CLASSES,
        tasks: Sequence[Mapping[str, Any]] = CENTERPOINT_TASKS,
        common_heads: Mapping[str, int] | None = None,
        share_conv_channels: int = 64,
        head_channels: int = 64,
        num_head_convs: int = 2,
        hm_bias: float = HEATMAP_PRIOR_BIAS,
        code_weights: Mapping[str, float | Sequence[float]] | None = None,
        hm_weight: float = 1.0,
        loc_weight: float = 0.25,
        min_overlap: float = 0.1,
        min_radius: int = 2,
        max_objs: int = 500,
        score_threshold: float = 0.1,
        topk: int = 500,
        post_max_size: int = 83,
        nms_type: str = "circle",
        nms_radius: Mapping[str, float] | None = None,
        velocity: str = "mps",
    ):
        super().__init__()
        if velocity not in ("mps", "displacement"):
            raise ValueError(f"CenterHead: velocity must be 'mps' or 'displacement'; got {velocity!r}")
        self.velocity = velocity
        self.class_names = tuple(str(c) for c in class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {list(self.class_names)}")
        self.tasks = [tuple(str(c) for c in task["classes"]) for task in tasks]
        seen: list[str] = []
        for t, classes in enumerate(self.tasks):
            unknown = [c for c in classes if c not in self.class_names]
            if unknown or not classes:
                raise ValueError(
                    f"task {t} {list(classes)}: classes must be non-empty and in class_names; unknown {unknown}"
                )
            seen += classes
        if len(set(seen)) != len(seen):
            raise ValueError(f"a class appears in more than one task: {[list(t) for t in self.tasks]}")
        #: per task, the global label of each of its heatmap channels
        self.task_labels = [[self.class_names.index(c) for c in classes] for classes in self.tasks]

        heads = dict(HEAD_CHANNELS) if common_heads is None else {str(k): int(v) for k, v in common_heads.items()}
        for name, c in heads.items():
            if name not in HEAD_CHANNELS or c != HEAD_CHANNELS[name]:
                raise ValueError(f"common_heads[{name!r}] = {c}: known heads and channels are {HEAD_CHANNELS}")
        missing = [h for h in REQUIRED_HEADS if h not in heads]
        if missing:
            raise ValueError(f"common_heads lacks {missing}: boxes cannot be decoded without them")
        self.common_heads = heads

        weights = {"vel": 0.2}  # CenterPoint's code_weights: [1] * 8 + [0.2, 0.2]
        weights.update({str(k): v for k, v in (code_weights or {}).items()})
        self.code_weights: dict[str, list[float]] = {}
        for name, c in heads.items():
            w = weights.get(name, 1.0)
            w = [float(w)] * c if isinstance(w, (int, float)) else [float(v) for v in w]
            if len(w) != c:
                raise ValueError(f"code_weights[{name!r}] has {len(w)} entries for {c} channels")
            self.code_weights[name] = w

        if nms_type not in ("circle", "none"):
            raise ValueError(f"nms_type must be 'circle' or 'none'; got {nms_type!r}")
        radius = dict(
            CENTERPOINT_NMS_RADIUS if nms_radius is None else {str(k): float(v) for k, v in nms_radius.items()}
        )
        if nms_type == "circle":
            lacking = [c for c in seen if c not in radius]
            if lacking:
                raise ValueError(f"nms_radius has no radius for {lacking}")
        self.nms_type = nms_type
        #: per task, the NMS radius (metres) of each heatmap channel
        self.task_nms_radius = [[radius.get(c, 0.0) for c in classes] for classes in self.tasks]

        self.hm_weight, self.loc_weight = float(hm_weight), float(loc_weight)
        self.min_overlap, self.min_radius, self.max_objs = float(min_overlap), int(min_radius), int(max_objs)
        self.score_threshold, self.topk, self.post_max_size = float(score_threshold), int(topk), int(post_max_size)
        self.in_channels = int(in_channels)

        self.shared_conv = nn.Sequential(
            nn.Conv2d(self.in_channels, share_conv_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(share_conv_channels),
            nn.ReLU(inplace=True),
        )
        self.task_heads = nn.ModuleList(
            SeparateHead(share_conv_channels, {"hm": len(classes), **heads}, head_channels, num_head_convs, hm_bias)
            for classes in self.tasks
        )

    @staticmethod
    def _dt_of(dt: torch.Tensor | None, B: int, device, dtype) -> torch.Tensor:
        """``dt`` as ``(B,)`` seconds on ``device`` (None: :data:`~bevlabels.datasets.base.DEFAULT_DT` each)."""
        if dt is None:
            return torch.full((B,), DEFAULT_DT, dtype=dtype, device=device)
        dt = torch.as_tensor(dt)
        assert dt.shape == (B,), f"dt must be (B={B},) seconds per sample; got {tuple(dt.shape)}"
        dt = dt.to(device=device, dtype=dtype)  # first: the check below then reads where the values are used
        if not bool((dt > 0).all()):
            raise ValueError(f"CenterHead: every keyframe interval dt must be > 0 s; got {dt.tolist()}")
        return dt

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per task, ``{"hm": (B, K_t, H, W) logits, "reg": (B, 2, H, W), "height", "dim", "rot"[, "vel"]}`` of ``x (B, C, H, W)``."""
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"x must be (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
        )
        shared = self.shared_conv(x)
        return [head(shared) for head in self.task_heads]

    # -- targets ---------------------------------------------------------------------------------
    @torch.no_grad()
    def targets(
        self,
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        grid: GridSpec,
        dt: torch.Tensor | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Training targets on ``grid`` (the head's output grid), per task, for B samples.

        Args:
            gt_boxes: B tensors ``(M_b, 9)`` in our box layout, in the frame of the BEV map (ego).
            gt_labels: B int tensors ``(M_b,)`` indexing ``class_names``.
            grid: the GridSpec of the maps the head outputs (its ``(H, W)`` must match them).
            dt: ``(B,)`` seconds, each sample's keyframe interval (``velocity="displacement"``: the ``vel`` target
                is ``v * dt``; None: :data:`~bevlabels.datasets.base.DEFAULT_DT`). Unused with ``"mps"``.

        Returns:
            Per task a dict: ``heatmap (B, K_t, H, W)``; ``ind (B, K)`` flat centre cell
            ``iy * W + ix``; ``mask (B, K)`` bool, True for real objects; ``cls (B, K)`` the
            task-local class; ``reg (B, K, 2)``, ``height (B, K, 1)``, ``dim (B, K, 3)``,
            ``rot (B, K, 2)``, ``vel (B, K, 2)`` (NaN replaced by 0); ``vel_mask (B, K)`` bool,
            True where the GT velocity is known. Boxes whose centre is off the grid, of classes
            in no task, or beyond ``max_objs`` per task are left out.

        The targets are made on the host: GT on an accelerator comes over in one copy (one device sync, where
        building them there would sync on every task and sample's masks); :meth:`loss` moves them to the maps.
        """
        assert len(gt_boxes) == len(gt_labels), f"{len(gt_boxes)} box sets for {len(gt_labels)} label sets"
        B, K = len(gt_boxes), self.max_objs
        Hh, Ww = grid.shape
        dx, dy = grid.cell_size
        boxes_b, labels_b = [torch.as_tensor(b) for b in gt_boxes], [torch.as_tensor(lb) for lb in gt_labels]
        for b, lb in zip(boxes_b, labels_b):
            assert b.ndim == 2 and b.shape[1] == BOX_DIM and lb.shape == (len(b),), (
                f"boxes must be (M, {BOX_DIM}) and labels (M,); got {tuple(b.shape)}, {tuple(lb.shape)}"
            )
        boxes_b, labels_b = _to_host(boxes_b, labels_b) if B else ([], [])
        device = torch.device("cpu")
        vel_scale = self._dt_of(dt, B, device, torch.float64) if self.velocity == "displacement" else None
        out = []
        for labels_t in self.task_labels:
            to_local = torch.full((len(self.class_names),), -1, dtype=torch.long, device=device)
            to_local[labels_t] = torch.arange(len(labels_t), device=device)
            tg = {
                "heatmap": torch.zeros(B, len(labels_t), Hh, Ww, device=device),
                "ind": torch.zeros(B, K, dtype=torch.long, device=device),
                "mask": torch.zeros(B, K, dtype=torch.bool, device=device),
                "cls": torch.zeros(B, K, dtype=torch.long, device=device),
                **{name: torch.zeros(B, K, c, device=device) for name, c in HEAD_CHANNELS.items()},
                "vel_mask": torch.zeros(B, K, dtype=torch.bool, device=device),
            }
            for s in range(B):  # a handful of samples; all of a sample's objects at once
                local = to_local[labels_b[s]]
                boxes = boxes_b[s][local >= 0]
                local = local[local >= 0]
                uv = grid.metric_to_cell(boxes[:, :2])  # (m, 2) continuous (ix, iy)
                cell = torch.floor(uv).long()
                on = (cell[:, 0] >= 0) & (cell[:, 0] < Ww) & (cell[:, 1] >= 0) & (cell[:, 1] < Hh)
                boxes, local, uv, cell = boxes[on][:K], local[on][:K], uv[on][:K], cell[on][:K]
                m = len(boxes)
                radius = gaussian_radius(boxes[:, L] / dx, boxes[:, W] / dy, self.min_overlap)
                radius = torch.clamp(torch.floor(radius).long(), min=self.min_radius)
                draw_gaussians(tg["heatmap"][s], local, cell[:, 0], cell[:, 1], radius)
                tg["ind"][s, :m] = cell[:, 1] * Ww + cell[:, 0]
                tg["mask"][s, :m] = True
                tg["cls"][s, :m] = local
                tg["reg"][s, :m] = (uv - cell).float()
                tg["height"][s, :m, 0] = boxes[:, Z].float()
                tg["dim"][s, :m] = torch.log(boxes[:, [L, W, H]].clamp(min=1e-3)).float()  # sizes must be > 0
                tg["rot"][s, :m] = torch.stack([torch.sin(boxes[:, YAW]), torch.cos(boxes[:, YAW])], 1).float()
                vel = boxes[:, [VX, VY]]
                known = torch.isfinite(vel).all(1)
                if vel_scale is not None:  # displacement over the sample's interval
                    vel = vel * vel_scale[s]
                tg["vel"][s, :m] = torch.where(known[:, None], vel, 0.0).float()
                tg["vel_mask"][s, :m] = known
            out.append(tg)
        return out

    # -- loss ------------------------------------------------------------------------------------
    def loss(
        self,
        preds: Sequence[Mapping[str, torch.Tensor]],
        targets: Sequence[Mapping[str, torch.Tensor]],
        sample_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of the head's outputs against :meth:`targets`: ``loss`` (the total to minimise) and its parts.

        Per task t: ``task{t}.hm``, the focal loss normalised by the task's number of objects,
        and ``task{t}.<head>``, the L1 at object centres summed over the head's channels with
        ``code_weights`` (velocity only where GT velocity is known). ``hm`` and ``loc`` sum them
        over tasks; ``loss = hm_weight * hm + loc_weight * loc``.

        ``sample_mask (B,)`` bool: the samples whose boxes are known (``data.box_fraction``; None: all). The others
        add exactly 0 (their heatmap cells are masked, they have no centres) and count in no normaliser.
        """
        assert len(preds) == len(targets) == len(self.tasks), (
            f"{len(preds)} predicted and {len(targets)} target tasks for a head of {len(self.tasks)} tasks"
        )
        out: dict[str, torch.Tensor] = {}
        hm_total, loc_total = 0.0, 0.0
        for t, (p, tg) in enumerate(zip(preds, targets)):
            # targets are made on the host (non_blocking: no device sync); the maps in float32 under autocast
            tg = {k: v.to(p["hm"].device, non_blocking=True) for k, v in tg.items()}
            p = {k: at_least_float32(v) for k, v in p.items()}
            assert p["hm"].shape == tg["heatmap"].shape, (
                f"task {t}: heatmap {tuple(p['hm'].shape)} vs target {tuple(tg['heatmap'].shape)}: the targets' grid "
                "must be the head's output grid (pillar size x backbone output stride)"
            )
            sm = None if sample_mask is None else sample_mask.to(p["hm"].device, torch.bool)
            obj = tg["mask"] if sm is None else tg["mask"] & sm[:, None]  # (B, K) centres of labelled samples
            hm = gaussian_focal_loss(p["hm"], tg["heatmap"], obj.sum(), sample_mask=sm)
            out[f"task{t}.hm"] = hm
            hm_total = hm_total + hm
            for name in self.common_heads:
                mask = obj & tg["vel_mask"] if name == "vel" else obj
                per_channel = masked_l1(gather_at(p[name], tg["ind"]), tg[name], mask)  # (C,)
                head_loss = (per_channel * per_channel.new_tensor(self.code_weights[name])).sum()
                out[f"task{t}.{name}"] = head_loss
                loc_total = loc_total + head_loss
        out["hm"], out["loc"] = hm_total, loc_total
        out["loss"] = self.hm_weight * hm_total + self.loc_weight * loc_total
        return out

    # -- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def candidates(
        self,
        preds: Sequence[Mapping[str, torch.Tensor]],
        grid: GridSpec,
        topk: int | None = None,
        dt: torch.Tensor | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Per task, the ``topk`` (default ``self.topk``) best 3x3 local maxima over its classes and cells, undecided.

        ``{"boxes": (B, k, 9) in the map's (ego) frame, "scores": (B, k) sigmoid, descending, "labels": (B, k)
        global class indices, "radius": (B, k) the class's NMS radius, "cell": (B, k) flat cell index iy * W + ix}``;
        velocity is NaN when the head has no ``vel``. No threshold and no NMS: :meth:`decode` applies those, the
        DualViewDistill's dense proposals take the best of them as query anchors. ``dt (B,)``: each sample's
        keyframe interval, by which a ``"displacement"`` head's ``vel`` is divided (None: the default interval).
        """
        Hh, Ww = grid.shape
        per_task = []
        for t, p in enumerate(preds):
            p = {k: at_least_float32(v) for k, v in p.items()}  # bf16 would add cell index and offset half a cell off
            hm = torch.sigmoid(p["hm"])
            B, Kt = hm.shape[:2]
            assert hm.shape[-2:] == (Hh, Ww), f"task {t}: maps {tuple(hm.shape[-2:])} are not on the grid {(Hh, Ww)}"
            peaks = F.max_pool2d(hm, 3, stride=1, padding=1) == hm
            k = min(self.topk if topk is None else int(topk), Kt * Hh * Ww)
            scores, idx = (hm * peaks).flatten(1).topk(k)  # (B, k) over classes x cells
            local, cell = idx // (Hh * Ww), idx % (Hh * Ww)
            iy, ix = cell // Ww, cell % Ww
            at = {name: gather_at(p[name], cell) for name in self.common_heads}  # (B, k, C)
            xy = grid.cell_to_metric(torch.stack([ix, iy], -1).to(at["reg"].dtype) + at["reg"])  # (B, k, 2)
            boxes = xy.new_full((B, k, BOX_DIM), float("nan"))
            boxes[..., X], boxes[..., Y] = xy[..., 0], xy[..., 1]
            boxes[..., Z] = at["height"][..., 0]
            boxes[..., [L, W, H]] = torch.exp(at["dim"])
            boxes[..., YAW] = torch.atan2(at["rot"][..., 0], at["rot"][..., 1])
            if "vel" in at:
                vel = at["vel"]
                if self.velocity == "displacement":
                    vel = vel / self._dt_of(dt, B, vel.device, vel.dtype)[:, None, None]
                boxes[..., [VX, VY]] = vel
            labels = torch.as_tensor(self.task_labels[t], device=idx.device)[local]
            radius = torch.as_tensor(self.task_nms_radius[t], dtype=xy.dtype, device=xy.device)[local]
            per_task.append({"boxes": boxes, "scores": scores, "labels": labels, "radius": radius, "cell": cell})
        return per_task

    @torch.no_grad()
    def decode(
        self, preds: Sequence[Mapping[str, torch.Tensor]], grid: GridSpec, dt: torch.Tensor | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per sample: ``{"boxes": (M, 9) in the map's (ego) frame, "scores": (M,), "labels": (M,)}``, best first.

        Per task: sigmoid heatmap, 3x3 local maxima, top-``topk`` over all its classes and cells,
        boxes read from the regression maps at those cells (:meth:`candidates`), score threshold, circle NMS,
        at most ``post_max_size`` kept. Velocity is NaN when the head has no ``vel``; ``dt (B,)``: as
        :meth:`candidates`.
        """
        per_task = [(c["boxes"], c["scores"], c["labels"], c["radius"]) for c in self.candidates(preds, grid, dt=dt)]

        results = []
        for s in range(len(per_task[0][0]) if per_task else 0):
            keep_boxes, keep_scores, keep_labels = [], [], []
            for boxes, scores, labels, radius in per_task:
                sel = scores[s] >= self.score_threshold
                bx, sc, lb, rd = boxes[s][sel], scores[s][sel], labels[s][sel], radius[s][sel]
                if self.nms_type == "circle":
                    keep = circle_nms(bx[:, [X, Y]], sc, rd, self.post_max_size)
                else:
                    keep = torch.argsort(sc, descending=True, stable=True)[: self.post_max_size]
                keep_boxes.append(bx[keep])
                keep_scores.append(sc[keep])
                keep_labels.append(lb[keep])
            sc = torch.cat(keep_scores)
            order = torch.argsort(sc, descending=True, stable=True)
            results.append(
                {"boxes": torch.cat(keep_boxes)[order], "scores": sc[order], "labels": torch.cat(keep_labels)[order]}
            )
        return results
