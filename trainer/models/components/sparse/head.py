"""The sparse query head of DualViewDistill: a Sparse4Dv3-style decoder whose layer order is data.

Queries are rows of an instance feature ``(B, Q, C)`` and an anchor ``(B, Q, 11)`` (columns named in
:mod:`~trainer.models.components.sparse.anchors`). The decoder runs the ops of ``operation_order``:

``self_attn`` (alias ``gnn``)   decoupled self-attention between queries (:class:`DecoupledSelfAttention`)
``temp_attn`` (``temp_gnn``)    the same module as cross-attention to instances carried from the previous
                                frame (:class:`CarriedInstances`); skipped when none are carried (or, with
                                ``temp_attn_without_carried="self"``, run as self-attention, as Sparse4D does)
``norm``                        LayerNorm
``ffn``                         two-layer MLP with residual (:class:`FFN`)
``bev_agg`` / ``pv_agg``        ``f = f + agg(...)``: deformable aggregation from the BEV map / the cameras'
                                feature pyramid (modules passed in; their interfaces are in :class:`SparseDecoder`)
``refine``                      box residuals, class logits and quality (:class:`RefineLayer`); ends a layer

Every op has its own parameters; only the anchor encoder is shared by all layers (as Sparse4D, whose
decoupled-attention projections ``fc_before``/``fc_after`` are also shared: here each attention op owns
its projections). The anchor embedding is recomputed from the refined anchor after every ``refine``.
Sparse4D does *not* detach the anchor between layers (``sparse4d_head.py`` feeds the refined anchor,
with its graph, to the next layer; only the instance bank detaches what it caches); that is the default
here, ``detach_anchor=True`` gives the Deformable-DETR behaviour.

Departures from Sparse4Dv3, all because the aggregation here is additive (``f + agg``; Sparse4Dv3's
``residual_mode="cat"`` widens f to 2C and its ``AsymmetricFFN`` pre-norms and projects back to C):
the FFN is ``x + W2 relu(W1 x)`` on C channels; the attention residual is ``f + W_o attn(...)`` (Sparse4D
projects ``cat(f, anchor_embed) + attn`` back to C, mixing the embedding into f).

Shape letters: B batch, Q queries (inside the decoder: normal then denoising), C channels (``embed_dims``),
K classes, T carried instances, S keys, N cameras, H/W BEV grid, h/w image feature size, M GT boxes,
G denoising groups, D denoising queries (``G * 2 * M_max``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.components.center_head import circle_nms
from trainer.models.components.sparse.anchors import (
    ANCHOR_DIM,
    CNS,
    COS,
    LOG_H,
    LOG_L,
    LOG_W,
    SIN,
    VX,
    VY,
    VZ,
    X,
    Y,
    Z,
    anchors_to_boxes,
    boxes_to_anchors,
)

# The refine layer adds residuals to contiguous column blocks: position+size, yaw, velocity.
assert (X, Y, Z, LOG_L, LOG_W, LOG_H, SIN, COS, VX, VY, VZ) == tuple(range(ANCHOR_DIM))
_POS_SIZE, _YAW, _VEL = slice(X, LOG_H + 1), slice(SIN, COS + 1), slice(VX, VZ + 1)

#: op name (and alias) -> canonical op
OPS = {
    "self_attn": "self_attn",
    "gnn": "self_attn",
    "temp_attn": "temp_attn",
    "temp_gnn": "temp_attn",
    "norm": "norm",
    "ffn": "ffn",
    "bev_agg": "bev_agg",
    "pv_agg": "pv_agg",
    "refine": "refine",
}

#: nuScenes keyframes are 2 Hz: the frame interval when a sample's is unknown (Sparse4D's default_time_interval)
DEFAULT_DT = 0.5

#: Sparse4Dv3's denoising noise (dn_noise_scale [2.0] * 3 + [0.5] * 7) in the anchor layout; VZ has no GT
DEFAULT_DN_NOISE_SCALE = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0)

#: classification bias for a prior probability of 0.01 (RetinaNet)
CLS_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class CarriedInstances(NamedTuple):
    """Instances carried from the previous frame (:class:`~trainer.models.components.sparse.instance_bank.InstanceBank`).

    ``instance_feature (B, T, C)``; ``anchor (B, T, 11)`` already moved into the current ego frame;
    ``valid (B,)`` bool: which samples carry anything (None: all). A sample that carries nothing is left
    as ``temp_attn_without_carried`` says (unchanged, or self-attention).
    """

    instance_feature: torch.Tensor
    anchor: torch.Tensor
    valid: torch.Tensor | None = None


#: ``after_refine(layer, instance_feature (B, Q, C), anchor (B, Q, 11), cls (B, Q, K), carried) ->
#: (instance_feature, anchor, carried)``, shapes kept: where the instance bank merges carried instances
#: into the queries after the first layer (Sparse4D's ``instance_bank.update``).
AfterRefine = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, "CarriedInstances | None"],
    tuple[torch.Tensor, torch.Tensor, "CarriedInstances | None"],
]


def linear_relu_ln(embed_dims: int, in_loops: int, out_loops: int, input_dims: int | None = None) -> list[nn.Module]:
    """Sparse4D's MLP block: ``out_loops`` x (``in_loops`` x (Linear, ReLU), LayerNorm)."""
    layers: list[nn.Module] = []
    d = embed_dims if input_dims is None else input_dims
    for _ in range(out_loops):
        for _ in range(in_loops):
            layers += [nn.Linear(d, embed_dims), nn.ReLU(inplace=True)]
            d = embed_dims
        layers.append(nn.LayerNorm(embed_dims))
    return layers


def default_operation_order(
    num_layers: int = 6,
    views: Sequence[str] = ("bev", "pv"),
    num_single_frame_layers: int = 1,
    temporal: bool = False,
) -> list[str]:
    """Sparse4Dv3's order with its deformable op replaced by the aggregations of ``views`` (in that order).

    Per layer ``[temp_attn], self_attn, norm, <view>_agg..., ffn, norm, refine`` (``temp_attn`` in the layers
    after the first ``num_single_frame_layers`` when ``temporal``), without the first layer's
    ``self_attn, norm`` (its queries are the learned, not yet interacting, ones: Sparse4Dv3's ``[2:]``).
    """
    if not views or any(v not in ("bev", "pv") for v in views):
        raise ValueError(f"views must be a non-empty sequence of 'bev' and 'pv'; got {views!r}")
    assert num_layers >= 1 and 0 <= num_single_frame_layers <= num_layers
    single = ["self_attn", "norm", *(f"{v}_agg" for v in views), "ffn", "norm", "refine"]
    n_single = num_single_frame_layers if temporal else num_layers
    return (single * n_single + ["temp_attn", *single] * (num_layers - n_single))[2:]


def default_anchors(num_anchors: int, xy_range: float = 51.2, seed: int = 0) -> torch.Tensor:
    """Stand-in anchors ``(num_anchors, 11)`` when no k-means anchors are given (tests, debugging).

    Centres uniform in ``[-xy_range, xy_range]^2`` at z = 0 (fixed seed), a 4 x 2 x 1.5 m car facing +x, at rest.
    """
    g = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(num_anchors, 9)
    boxes[:, :2] = (torch.rand(num_anchors, 2, generator=g) * 2 - 1) * xy_range
    boxes[:, 3:6] = torch.tensor([4.0, 2.0, 1.5])
    return boxes_to_anchors(boxes)


# ---------------------------------------------------------------------------------------------
# The ops


class AnchorEncoder(nn.Module):
    """Sparse4D's ``SparseBox3DEncoder``: one MLP per anchor part, ``(..., 11) -> (..., C)``.

    Parts: position ``X, Y, Z``; size ``LOG_L, LOG_W, LOG_H``; yaw ``SIN, COS``; velocity ``VX, VY, VZ``.
    ``mode="cat"`` (Sparse4Dv3 with decoupled attention, the default): the parts' widths are
    ``C/2, C/8, C/8, C/4`` (its ``[128, 32, 32, 64]`` at C = 256), concatenated, each MLP
    ``num_layers`` (default 4) x (Linear, ReLU, LayerNorm), no output MLP. ``mode="add"`` (Sparse4Dv1/v2):
    each part C wide, ``num_layers`` (default 2) blocks, summed, then a 2-block output MLP.
    """

    def __init__(self, embed_dims: int, mode: str = "cat", num_layers: int | None = None):
        super().__init__()
        C = embed_dims
        if mode == "cat":
            if C % 8:
                raise ValueError(f"AnchorEncoder mode='cat' needs embed_dims divisible by 8; got {C}")
            dims = (C // 2, C // 8, C // 8, C // 4)
            num_layers = 4 if num_layers is None else num_layers
            self.output = None
        elif mode == "add":
            dims = (C,) * 4
            num_layers = 2 if num_layers is None else num_layers
            self.output = nn.Sequential(*linear_relu_ln(C, 1, 2))
        else:
            raise ValueError(f"AnchorEncoder mode (anchor_encoder_mode) must be 'cat' or 'add'; got {mode!r}")
        self.mode, self.embed_dims = mode, C
        self.pos = nn.Sequential(*linear_relu_ln(dims[0], 1, num_layers, 3))
        self.size = nn.Sequential(*linear_relu_ln(dims[1], 1, num_layers, 3))
        self.yaw = nn.Sequential(*linear_relu_ln(dims[2], 1, num_layers, 2))
        self.vel = nn.Sequential(*linear_relu_ln(dims[3], 1, num_layers, 3))

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        assert anchor.shape[-1] == ANCHOR_DIM, f"anchor must be (..., {ANCHOR_DIM}); got {tuple(anchor.shape)}"
        parts = [
            self.pos(anchor[..., [X, Y, Z]]),
            self.size(anchor[..., [LOG_L, LOG_W, LOG_H]]),
            self.yaw(anchor[..., [SIN, COS]]),
            self.vel(anchor[..., [VX, VY, VZ]]),
        ]
        if self.mode == "cat":
            return torch.cat(parts, dim=-1)  # (..., C)
        return self.output(sum(parts))


def _allowed_mask(attn_mask: torch.Tensor | None, B: int, heads: int, Q: int, S: int) -> torch.Tensor | None:
    """Our ``attn_mask`` (True = blocked, as ``nn.MultiheadAttention``) as SDPA's (True = attend), broadcastable
    to ``(B, heads, Q, S)``. Accepted: ``(Q, S)``, ``(B, Q, S)``, ``(B * heads, Q, S)`` (batch-major)."""
    if attn_mask is None:
        return None
    assert attn_mask.dtype == torch.bool, f"attn_mask must be bool (True = blocked); got {attn_mask.dtype}"
    if attn_mask.shape == (Q, S):
        return ~attn_mask
    if attn_mask.shape == (B * heads, Q, S):
        return ~attn_mask.view(B, heads, Q, S)  # (B, heads, Q, S)
    if attn_mask.shape == (B, Q, S):
        return ~attn_mask[:, None]  # (B, 1, Q, S)
    raise AssertionError(
        f"attn_mask must be (Q, S), (B, Q, S) or (B*heads, Q, S) = ({Q}, {S}), ({B}, {Q}, {S}) or "
        f"({B * heads}, {Q}, {S}); got {tuple(attn_mask.shape)}"
    )


class DecoupledSelfAttention(nn.Module):
    """Sparse4Dv3's decoupled attention: query/key ``cat(feature, anchor_embed)`` (2C), value the feature.

    ``forward(query (B, Q, C), query_pos (B, Q, C), key (B, S, C) = query, key_pos (B, S, C) = query_pos,
    attn_mask) -> (B, Q, C)`` = ``query + dropout(W_o attn)``: multi-head attention of width 2C (``num_heads``
    heads of ``2C / num_heads``), the value projected C -> 2C, the output 2C -> C. Self-attention when
    ``key`` is None; temporal cross-attention with the carried instances as ``key``/``key_pos``.
    ``attn_mask`` (bool, True = blocked): ``(Q, S)``, ``(B, Q, S)`` or ``(B * num_heads, Q, S)``; a row must
    leave at least one key (else NaN). ``dropout`` drops attention weights and the output (training only).
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        C2 = 2 * embed_dims
        if C2 % num_heads:
            raise ValueError(f"2 * embed_dims ({C2}) must be divisible by num_heads ({num_heads})")
        self.embed_dims, self.num_heads, self.dropout = embed_dims, num_heads, dropout
        self.q_proj = nn.Linear(C2, C2)
        self.k_proj = nn.Linear(C2, C2)
        self.v_proj = nn.Linear(embed_dims, C2)
        self.out_proj = nn.Linear(C2, embed_dims)
        self.out_drop = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        key: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if key is None:
            key, key_pos = query, query_pos
        B, Q, C = query.shape
        S = key.shape[1]
        assert C == self.embed_dims and query_pos.shape == (B, Q, C), (
            f"query and query_pos must be (B, Q, C={self.embed_dims}); got {tuple(query.shape)}, "
            f"{tuple(query_pos.shape)}"
        )
        assert key.shape == (B, S, C) and key_pos is not None and key_pos.shape == (B, S, C), (
            f"key and key_pos must be (B={B}, S, C={C}); got {tuple(key.shape)}, "
            f"{None if key_pos is None else tuple(key_pos.shape)}"
        )
        h, d = self.num_heads, 2 * C // self.num_heads
        q = self.q_proj(torch.cat([query, query_pos], -1)).view(B, Q, h, d).transpose(1, 2)  # (B, h, Q, d)
        k = self.k_proj(torch.cat([key, key_pos], -1)).view(B, S, h, d).transpose(1, 2)  # (B, h, S, d)
        v = self.v_proj(key).view(B, S, h, d).transpose(1, 2)  # (B, h, S, d)
        mask = _allowed_mask(attn_mask, B, h, Q, S)
        drop = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, h, Q, d)
        o = o.transpose(1, 2).reshape(B, Q, 2 * C)  # (B, Q, 2C)
        return query + self.out_drop(self.out_proj(o))


class FFN(nn.Module):
    """``x + dropout(W2 dropout(relu(W1 x)))`` on ``(..., C)``; ``hidden`` defaults to 4C (Sparse4Dv3)."""

    def __init__(self, embed_dims: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = 4 * embed_dims if hidden is None else hidden
        self.embed_dims = embed_dims
        self.fc1, self.fc2 = nn.Linear(embed_dims, hidden), nn.Linear(hidden, embed_dims)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.embed_dims, f"x must be (..., C={self.embed_dims}); got {tuple(x.shape)}"
        return x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


def _dt_per_sample(dt: torch.Tensor | float | None, B: int, like: torch.Tensor, default: float) -> torch.Tensor:
    """``dt`` as a ``(B,)`` tensor of seconds (None: ``default`` for every sample)."""
    if dt is None:
        dt = default
    if not isinstance(dt, torch.Tensor):
        return like.new_full((B,), float(dt))
    assert dt.shape == (B,), f"dt must be (B={B},) seconds per sample; got {tuple(dt.shape)}"
    return dt.to(device=like.device, dtype=like.dtype)


class RefineLayer(nn.Module):
    """Sparse4D's ``SparseBox3DRefinementModule``: refined anchor, class logits and quality of each query.

    ``forward(instance_feature (B, Q, C), anchor (B, Q, 11), anchor_embed (B, Q, C), dt (B,) | float | None)
    -> (anchor (B, Q, 11), cls (B, Q, K), quality (B, Q, 2) or None)``.

    From ``f + anchor_embed`` an MLP (2 x (2 x (Linear, ReLU), LayerNorm), Linear) predicts 11 numbers:
    residuals added to ``X, Y, Z``, the log sizes and (``refine_yaw``) ``SIN, COS`` (without ``refine_yaw``
    the sine and cosine are predicted outright); and a *displacement* over the frame interval for
    ``VX, VY, VZ``, so ``v = v_anchor + displacement / dt`` with ``dt`` seconds per sample (None:
    ``default_dt``, 0.5 s for nuScenes keyframes). The classifier reads the instance feature alone (as
    Sparse4D), its bias set for a prior probability of 0.01; quality (``with_quality``: centerness,
    yawness logits, columns :data:`~trainer.models.components.sparse.anchors.CNS`, ``YNS``) reads ``f + anchor_embed``.
    """

    def __init__(
        self,
        embed_dims: int,
        num_classes: int,
        refine_yaw: bool = True,
        with_quality: bool = True,
        default_dt: float = DEFAULT_DT,
    ):
        super().__init__()
        C = embed_dims
        self.embed_dims, self.num_classes, self.refine_yaw, self.default_dt = C, num_classes, refine_yaw, default_dt
        self.reg = nn.Sequential(*linear_relu_ln(C, 2, 2), nn.Linear(C, ANCHOR_DIM))
        self.cls = nn.Sequential(*linear_relu_ln(C, 1, 2), nn.Linear(C, num_classes))
        nn.init.constant_(self.cls[-1].bias, CLS_PRIOR_BIAS)
        self.quality = nn.Sequential(*linear_relu_ln(C, 1, 2), nn.Linear(C, 2)) if with_quality else None

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        anchor_embed: torch.Tensor,
        dt: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        B, Q, C = instance_feature.shape
        assert C == self.embed_dims and anchor_embed.shape == (B, Q, C), (
            f"instance_feature and anchor_embed must be (B, Q, C={self.embed_dims}); got "
            f"{tuple(instance_feature.shape)}, {tuple(anchor_embed.shape)}"
        )
        assert anchor.shape == (B, Q, ANCHOR_DIM), f"anchor must be (B, Q, {ANCHOR_DIM}); got {tuple(anchor.shape)}"
        dt = _dt_per_sample(dt, B, anchor, self.default_dt)
        feature = instance_feature + anchor_embed
        out = self.reg(feature)  # (B, Q, 11)
        pos_size = anchor[..., _POS_SIZE] + out[..., _POS_SIZE]
        yaw = anchor[..., _YAW] + out[..., _YAW] if self.refine_yaw else out[..., _YAW]
        vel = anchor[..., _VEL] + out[..., _VEL] / dt[:, None, None]
        refined = torch.cat([pos_size, yaw, vel], dim=-1)  # (B, Q, 11)
        cls = self.cls(instance_feature)  # (B, Q, K)
        quality = self.quality(feature) if self.quality is not None else None  # (B, Q, 2)
        return refined, cls, quality


# ---------------------------------------------------------------------------------------------
# The decoder


def _build_agg(field: str, spec: nn.Module | Callable[[], nn.Module], first: bool) -> nn.Module:
    """The module of one aggregation op: the given module at its first occurrence, a deep copy later
    (so every op has its own parameters), or a fresh one from a factory (e.g. a Hydra ``_partial_``)."""
    if isinstance(spec, nn.Module):
        return spec if first else copy.deepcopy(spec)
    if callable(spec):
        module = spec()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{field}: the factory must return an nn.Module; got {type(module).__name__}")
        return module
    raise TypeError(f"{field} must be an nn.Module or a factory of one; got {type(spec).__name__}")


class SparseDecoder(nn.Module):
    """The query decoder: the ops of ``operation_order`` (module docstring), each with its own parameters.

    Aggregation interfaces (each returns the ``(B, Q, C)`` features to *add* to the instance feature):

    - ``bev_agg(instance_feature (B, Q, C), anchor (B, Q, 11), anchor_embed (B, Q, C), bev (B, C_bev, H, W))``
    - ``pv_agg(instance_feature, anchor, anchor_embed, img_feats: list of (B, N, C_l, h_l, w_l),
      img_from_ego (B, N, 4, 4), image_hw)``

    ``bev_agg``/``pv_agg`` may be a module (used at its first op, deep-copied for later ones) or a factory;
    one that ``operation_order`` never names is dropped (with a warning), so it leaves no unused parameters.
    ``temp_attn_without_carried``: ``"skip"`` (the op does nothing when no instances are carried; its
    parameters then get no gradient on such frames, so DDP needs ``find_unused_parameters``) or
    ``"self"`` (Sparse4D: it runs as a second self-attention).

    ``forward(instance_feature (B, Q, C), anchor (B, Q, 11), *, bev, img_feats, img_from_ego, image_hw,
    dt (B,) | None, attn_mask (see :class:`DecoupledSelfAttention`; self-attention ops only), carried,
    after_refine) -> (layers, instance_feature (B, Q, C))``, ``layers`` one dict per ``refine``:
    ``{"anchor": (B, Q, 11), "cls": (B, Q, K), "quality": (B, Q, 2) or None}``.
    """

    def __init__(
        self,
        operation_order: Sequence[str],
        embed_dims: int,
        num_classes: int,
        bev_agg: nn.Module | Callable[[], nn.Module] | None = None,
        pv_agg: nn.Module | Callable[[], nn.Module] | None = None,
        num_heads: int = 8,
        ffn_hidden: int | None = None,
        dropout: float = 0.0,
        refine_yaw: bool = True,
        with_quality: bool = True,
        anchor_encoder_mode: str = "cat",
        detach_anchor: bool = False,
        temp_attn_without_carried: str = "skip",
        default_dt: float = DEFAULT_DT,
    ):
        super().__init__()
        if isinstance(operation_order, str) or not len(operation_order):
            raise ValueError(f"operation_order must be a non-empty list of op names; got {operation_order!r}")
        ops = []
        for i, op in enumerate(operation_order):
            if op not in OPS:
                raise ValueError(f"operation_order[{i}] = {op!r} is not an op; expected one of {sorted(OPS)}")
            ops.append(OPS[op])
        if ops[-1] != "refine":
            raise ValueError(
                f"operation_order must end with 'refine' (ops after the last refine would be unused); got {ops}"
            )
        if temp_attn_without_carried not in ("skip", "self"):
            raise ValueError(f"temp_attn_without_carried must be 'skip' or 'self'; got {temp_attn_without_carried!r}")
        aggs = {"bev_agg": bev_agg, "pv_agg": pv_agg}
        for field, spec in aggs.items():
            if field in ops and spec is None:
                raise ValueError(
                    f"operation_order has {field!r} (at index {ops.index(field)}) but {field} is None: give the "
                    f"head a {field} module, or remove {field!r} from operation_order"
                )
            if field not in ops and spec is not None:
                warnings.warn(f"{field} is given but operation_order has no {field!r}: it is not used", stacklevel=2)

        self.operation_order = tuple(ops)
        self.num_layers = ops.count("refine")
        self.embed_dims, self.num_classes = embed_dims, num_classes
        self.detach_anchor, self.temp_attn_without_carried = detach_anchor, temp_attn_without_carried
        self.anchor_encoder = AnchorEncoder(embed_dims, anchor_encoder_mode)
        layers: list[nn.Module] = []
        for op in ops:
            if op in ("self_attn", "temp_attn"):
                layers.append(DecoupledSelfAttention(embed_dims, num_heads, dropout))
            elif op == "norm":
                layers.append(nn.LayerNorm(embed_dims))
            elif op == "ffn":
                layers.append(FFN(embed_dims, ffn_hidden, dropout))
            elif op in aggs:
                layers.append(_build_agg(op, aggs[op], first=op not in self.operation_order[: len(layers)]))
            else:
                layers.append(RefineLayer(embed_dims, num_classes, refine_yaw, with_quality, default_dt))
        self.layers = nn.ModuleList(layers)
        # Sparse4D xavier-initialises the weights of its non-refine ops (the aggregations own their init here)
        for op, layer in zip(ops, self.layers):
            if op in ("self_attn", "temp_attn", "ffn"):
                for m in layer.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.xavier_uniform_(m.weight)
                        nn.init.zeros_(m.bias)

    def _check_inputs(self, B, bev, img_feats, img_from_ego, image_hw) -> None:
        if "bev_agg" in self.operation_order:
            assert bev is not None and bev.ndim == 4 and bev.shape[0] == B, (
                f"operation_order has 'bev_agg': bev must be (B={B}, C, H, W); got "
                f"{None if bev is None else tuple(bev.shape)}"
            )
        if "pv_agg" in self.operation_order:
            assert img_feats is not None and len(img_feats) > 0, "operation_order has 'pv_agg': img_feats is required"
            for l, f in enumerate(img_feats):
                assert f.ndim == 5 and f.shape[0] == B, f"img_feats[{l}] must be (B={B}, N, C, h, w); got {f.shape}"
            N = img_feats[0].shape[1]
            assert img_from_ego is not None and img_from_ego.shape == (B, N, 4, 4), (
                f"operation_order has 'pv_agg': img_from_ego must be (B={B}, N={N}, 4, 4); got "
                f"{None if img_from_ego is None else tuple(img_from_ego.shape)}"
            )
            assert image_hw is not None, "operation_order has 'pv_agg': image_hw is required"

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        *,
        bev: torch.Tensor | None = None,
        img_feats: Sequence[torch.Tensor] | None = None,
        img_from_ego: torch.Tensor | None = None,
        image_hw=None,
        dt: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        carried: CarriedInstances | None = None,
        after_refine: AfterRefine | None = None,
    ) -> tuple[list[dict], torch.Tensor]:
        B, Q, C = instance_feature.shape
        assert C == self.embed_dims, f"instance_feature must be (B, Q, C={self.embed_dims}); got {(B, Q, C)}"
        assert anchor.shape == (B, Q, ANCHOR_DIM), f"anchor must be (B={B}, Q={Q}, 11); got {tuple(anchor.shape)}"
        self._check_inputs(B, bev, img_feats, img_from_ego, image_hw)
        carried_embed = self._check_carried(carried, B)

        f = instance_feature
        anchor_embed = self.anchor_encoder(anchor)
        outputs: list[dict] = []
        last = len(self.operation_order) - 1
        for i, (op, layer) in enumerate(zip(self.operation_order, self.layers)):
            if op == "self_attn":
                f = layer(f, anchor_embed, attn_mask=attn_mask)
            elif op == "temp_attn":
                if carried is not None:
                    out = layer(f, anchor_embed, carried.instance_feature, carried_embed)
                    if carried.valid is not None:
                        valid = carried.valid.to(out.device)[:, None, None]
                        if self.temp_attn_without_carried == "skip":
                            out = torch.where(valid, out, f)  # no test of valid.all(): no device sync
                        elif not bool(carried.valid.all()):  # "self": a second attention only where needed
                            out = torch.where(valid, out, layer(f, anchor_embed, attn_mask=attn_mask))
                    f = out
                elif self.temp_attn_without_carried == "self":
                    f = layer(f, anchor_embed, attn_mask=attn_mask)
            elif op in ("norm", "ffn"):
                f = layer(f)
            elif op == "bev_agg":
                f = f + self._checked(op, layer(f, anchor, anchor_embed, bev), f)
            elif op == "pv_agg":
                f = f + self._checked(op, layer(f, anchor, anchor_embed, img_feats, img_from_ego, image_hw), f)
            else:  # refine
                anchor, cls, quality = layer(f, anchor, anchor_embed, dt)
                outputs.append({"anchor": anchor, "cls": cls, "quality": quality})
                if after_refine is not None:
                    old = carried
                    f, anchor, carried = after_refine(len(outputs) - 1, f, anchor, cls, carried)
                    assert f.shape == (B, Q, C) and anchor.shape == (B, Q, ANCHOR_DIM), (
                        "after_refine must keep the shapes of instance_feature (B, Q, C) and anchor (B, Q, 11)"
                    )
                    if carried is not old:
                        carried_embed = self._check_carried(carried, B)
                if self.detach_anchor:
                    anchor = anchor.detach()
                if i != last:
                    anchor_embed = self.anchor_encoder(anchor)
        return outputs, f

    def canonical_state_dict_prefixes(self) -> dict[str, str]:
        """``{"layers.<i>.": "<op>[<k>]."}``: the i-th op is the k-th of its kind. Two decoders whose orders differ
        by inserted ops (``temp_attn``) share these names for the ops they share
        (:func:`trainer.lit_base.init_from_checkpoint`)."""
        seen: dict[str, int] = {}
        out = {}
        for i, op in enumerate(self.operation_order):
            out[f"layers.{i}."] = f"{op}[{seen.get(op, 0)}]."
            seen[op] = seen.get(op, 0) + 1
        return out

    def _check_carried(self, carried: CarriedInstances | None, B: int) -> torch.Tensor | None:
        if carried is None:
            return None
        T = carried.anchor.shape[1]
        assert carried.instance_feature.shape == (B, T, self.embed_dims) and carried.anchor.shape == (
            B,
            T,
            ANCHOR_DIM,
        ), (
            f"carried instances must be instance_feature (B={B}, T, C={self.embed_dims}) and anchor (B, T, 11); got "
            f"{tuple(carried.instance_feature.shape)}, {tuple(carried.anchor.shape)}"
        )
        assert carried.valid is None or tuple(carried.valid.shape) == (B,), (
            f"carried.valid must be (B={B},); got {tuple(carried.valid.shape)}"
        )
        return self.anchor_encoder(carried.anchor)  # (B, T, C)

    @staticmethod
    def _checked(op: str, out: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        assert out.shape == f.shape, f"{op} must return (B, Q, C) = {tuple(f.shape)}; got {tuple(out.shape)}"
        return out


# ---------------------------------------------------------------------------------------------
# Denoising (Sparse4Dv3's SparseBox3DTarget.get_dn_anchors, with a fixed assignment)


def make_denoising_queries(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_groups: int,
    noise_scale: torch.Tensor | Sequence[float] = DEFAULT_DN_NOISE_SCALE,
    max_gt: int = 32,
    generator: torch.Generator | None = None,
) -> dict | None:
    """Noisy copies of the GT anchors, ``num_groups`` groups of ``2 * M_max`` (None when no sample has GT).

    ``gt_boxes``: B tensors ``(M_b, 9)``; ``gt_labels``: B ``(M_b,)``; only the first ``max_gt`` of each
    sample are used; ``M_max = max_b min(M_b, max_gt)``. In group g, query ``g * 2 M_max + j`` is a positive
    copy of GT j (noise ``U(-1, 1) * noise_scale`` per anchor column) and ``g * 2 M_max + M_max + j`` a
    negative one (noise ``+-U(1, 2) * noise_scale``, the sign drawn per column) whose target is background;
    ``j >= M_b`` are padding (``valid`` False). The noise is added in anchor space to the GT anchors, an
    unknown (NaN) velocity read as 0. Sparse4D re-assigns each group's 2M noisy anchors to the M GT by a
    Hungarian match on L1; here the assignment is the known one (DN-DETR's).

    Returns ``{"anchor": (B, D, 11), "gt_anchor": (B, D, 11) (NaN kept where the GT velocity is unknown),
    "labels": (B, D) long (-1: background or padding), "valid": (B, D) bool, "max_gt": M_max}``.
    """
    B = len(gt_boxes)
    assert len(gt_labels) == B, f"gt_boxes and gt_labels must both have B entries; got {B}, {len(gt_labels)}"
    assert num_groups >= 1, f"num_groups must be >= 1; got {num_groups}"
    counts = [min(len(g), max_gt) for g in gt_boxes]
    Mx = max(counts, default=0)
    if Mx == 0:
        return None
    device, dtype = gt_boxes[0].device, gt_boxes[0].dtype
    gt = torch.zeros(B, Mx, ANCHOR_DIM, device=device, dtype=dtype)
    labels = torch.full((B, Mx), -1, device=device, dtype=torch.long)
    valid = torch.zeros(B, Mx, device=device, dtype=torch.bool)
    for b, m in enumerate(counts):
        assert gt_boxes[b].ndim == 2 and gt_boxes[b].shape[1] == 9 and gt_labels[b].shape == (len(gt_boxes[b]),), (
            f"sample {b}: gt_boxes must be (M, 9), gt_labels (M,); got {gt_boxes[b].shape}, {gt_labels[b].shape}"
        )
        gt[b, :m] = boxes_to_anchors(gt_boxes[b][:m].to(device=device, dtype=dtype))
        labels[b, :m] = gt_labels[b][:m].to(device)
        valid[b, :m] = True
    s = torch.as_tensor(noise_scale, device=device, dtype=dtype)
    assert s.shape == (ANCHOR_DIM,), f"noise_scale (dn_noise_scale) must have {ANCHOR_DIM} entries; got {s.shape}"
    G = num_groups

    def rand(*shape):  # on the device (no copy, no sync) unless a (CPU) generator is given
        if generator is None:
            return torch.rand(*shape, dtype=dtype, device=device)
        return torch.rand(*shape, generator=generator, dtype=dtype).to(device)

    clean = torch.nan_to_num(gt, nan=0.0)[:, None]  # (B, 1, Mx, 11)
    pos = clean + (rand(B, G, Mx, ANCHOR_DIM) * 2 - 1) * s  # (B, G, Mx, 11)
    sign = torch.where(rand(B, G, Mx, ANCHOR_DIM) > 0.5, 1.0, -1.0).to(dtype)
    neg = clean + (rand(B, G, Mx, ANCHOR_DIM) + 1) * sign * s  # (B, G, Mx, 11)
    D = G * 2 * Mx
    anchor = torch.stack([pos, neg], dim=2).reshape(B, D, ANCHOR_DIM)  # (B, G, 2, Mx, 11) -> (B, D, 11)
    gt_anchor = gt[:, None, None].expand(B, G, 2, Mx, ANCHOR_DIM).reshape(B, D, ANCHOR_DIM)  # (B, D, 11)
    lab = labels[:, None, None].expand(B, G, 2, Mx).clone()  # (B, G, 2, Mx)
    lab[:, :, 1] = -1
    valid_d = valid[:, None, None].expand(B, G, 2, Mx).reshape(B, D)  # (B, D)
    return {"anchor": anchor, "gt_anchor": gt_anchor, "labels": lab.reshape(B, D), "valid": valid_d, "max_gt": Mx}


def denoising_attn_mask(num_queries: int, num_groups: int, valid: torch.Tensor) -> torch.Tensor:
    """The self-attention mask ``(B, Q + D, Q + D)`` (True = blocked) of Q normal queries then G denoising groups.

    ``valid (B, D)``: the denoising queries that are not padding (:func:`make_denoising_queries`). Query i may
    attend key j iff both are normal queries, or both are in the same denoising group and j is not padding;
    every query may attend itself. So normal queries never see denoising ones (their outputs are those of a
    run without denoising), no group sees another, and denoising queries do not see the normal ones
    (Sparse4D blocks both off-diagonal blocks too; it does not mask padding).
    """
    B, D = valid.shape
    Q, G = num_queries, num_groups
    assert D % G == 0, f"valid (B, D={D}) must hold num_groups={G} groups"
    device = valid.device
    group = torch.cat(
        [torch.zeros(Q, dtype=torch.long, device=device), 1 + torch.arange(G, device=device).repeat_interleave(D // G)]
    )  # (Q + D,): 0 normal, g + 1 denoising group g
    blocked = group[:, None] != group[None, :]  # (Q + D, Q + D)
    key_ok = torch.cat([torch.ones(B, Q, dtype=torch.bool, device=device), valid], dim=1)  # (B, Q + D)
    blocked = blocked[None] | ~key_ok[:, None, :]  # (B, Q + D, Q + D)
    eye = torch.eye(Q + D, dtype=torch.bool, device=device)
    return blocked & ~eye


# ---------------------------------------------------------------------------------------------
# The head


def _batch_size(bev, img_feats, dt) -> int:
    if bev is not None:
        return bev.shape[0]
    if img_feats is not None and len(img_feats):
        return img_feats[0].shape[0]
    if isinstance(dt, torch.Tensor):
        return dt.shape[0]
    raise ValueError("SparseHead.forward needs bev or img_feats (or dt (B,)) to know the batch size")


class SparseHead(nn.Module):
    """Learned queries + :class:`SparseDecoder` (+ denoising queries in training).

    ``num_anchors`` learned instance features (zeros) and anchors (a Parameter initialised from
    ``anchors_init (num_anchors, 11)``, e.g. k-means of the training boxes; None: :func:`default_anchors`).
    ``decoder_kwargs`` go to :class:`SparseDecoder` (``num_heads``, ``dropout``, ``detach_anchor``, ...).

    Denoising (training with GT, ``num_dn_groups > 0``): :func:`make_denoising_queries` appended after the
    normal queries with zero features, and :func:`denoising_attn_mask` given to every self-attention op.

    ``forward(*, bev, img_feats, img_from_ego, image_hw, dt (B,), gt_boxes (B x (M_b, 9)), gt_labels
    (B x (M_b,)), carried, after_refine) -> {"layers": per refine {"anchor" (B, Q, 11), "cls" (B, Q, K),
    "quality" (B, Q, 2)} of the normal queries, "instance_feature": (B, Q, C), "dn": None or {"layers": the
    same of the denoising queries (B, D, ...), "gt_anchor", "labels", "valid"}}``, the input of
    :func:`~trainer.models.losses.sparse_detection_loss` (``layers``, ..., ``dn=out["dn"]``).

    ``proposals`` (``(anchor (B, K, 11), feature (B, K, C))``, e.g. from
    :class:`~trainer.models.components.sparse.proposals.DenseProposals`) replace the learned queries
    ``0 .. K - 1`` of every sample, so the number of queries stays ``num_anchors``.

    Tracking hook (the instance bank is the next issue): ``carried`` (:class:`CarriedInstances`, T =
    ``num_temp_instances`` of them, in the current ego frame) are the keys of every ``temp_attn`` op, and
    ``after_refine`` (see :data:`AfterRefine`) receives and may replace the *normal* queries after each layer,
    which is where the bank merges the carried instances in after the first layer (Sparse4D keeps Q fixed:
    ``num_temp_instances`` carried + the best new ones). ``num_temp_instances = 0`` is a single-frame head.
    """

    def __init__(
        self,
        num_anchors: int,
        embed_dims: int,
        num_classes: int,
        operation_order: Sequence[str],
        anchors_init: torch.Tensor | np.ndarray | Sequence | None = None,
        bev_agg: nn.Module | Callable[[], nn.Module] | None = None,
        pv_agg: nn.Module | Callable[[], nn.Module] | None = None,
        num_dn_groups: int = 5,
        dn_noise_scale: Sequence[float] = DEFAULT_DN_NOISE_SCALE,
        max_dn_gt: int = 32,
        num_temp_instances: int = 0,
        **decoder_kwargs,
    ):
        super().__init__()
        anchors = default_anchors(num_anchors) if anchors_init is None else torch.as_tensor(anchors_init).float()
        if anchors.shape != (num_anchors, ANCHOR_DIM):
            raise ValueError(f"anchors_init must be (num_anchors={num_anchors}, 11); got {tuple(anchors.shape)}")
        if num_dn_groups < 0 or max_dn_gt < 0:
            raise ValueError(f"num_dn_groups ({num_dn_groups}) and max_dn_gt ({max_dn_gt}) must be >= 0")
        if len(dn_noise_scale) != ANCHOR_DIM:
            raise ValueError(f"dn_noise_scale must have {ANCHOR_DIM} entries (anchor columns); got {dn_noise_scale}")
        if not 0 <= num_temp_instances < num_anchors:
            raise ValueError(f"num_temp_instances must be in [0, num_anchors={num_anchors}); got {num_temp_instances}")
        self.num_anchors, self.embed_dims, self.num_classes = num_anchors, embed_dims, num_classes
        self.num_dn_groups, self.max_dn_gt, self.num_temp_instances = num_dn_groups, max_dn_gt, num_temp_instances
        self.dn_noise_scale = tuple(float(s) for s in dn_noise_scale)
        self.anchor = nn.Parameter(anchors.clone())
        self.instance_feature = nn.Parameter(torch.zeros(num_anchors, embed_dims))
        self.decoder = SparseDecoder(operation_order, embed_dims, num_classes, bev_agg, pv_agg, **decoder_kwargs)

    def forward(
        self,
        *,
        bev: torch.Tensor | None = None,
        img_feats: Sequence[torch.Tensor] | None = None,
        img_from_ego: torch.Tensor | None = None,
        image_hw=None,
        dt: torch.Tensor | None = None,
        gt_boxes: Sequence[torch.Tensor] | None = None,
        gt_labels: Sequence[torch.Tensor] | None = None,
        carried: CarriedInstances | None = None,
        after_refine: AfterRefine | None = None,
        proposals: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        B, Q = _batch_size(bev, img_feats, dt), self.num_anchors
        if carried is not None and carried.anchor.shape[1] != self.num_temp_instances:
            raise ValueError(
                f"{carried.anchor.shape[1]} carried instances given, but num_temp_instances is "
                f"{self.num_temp_instances} (0: a single-frame head)"
            )
        f = self.instance_feature[None].expand(B, -1, -1)  # (B, Q, C)
        anchor = self.anchor[None].expand(B, -1, -1)  # (B, Q, 11)
        if proposals is not None:  # the first K queries start at the given anchors and features
            p_anchor, p_feature = proposals
            K = p_anchor.shape[1]
            assert p_anchor.shape == (B, K, ANCHOR_DIM) and p_feature.shape == (B, K, self.embed_dims), (
                f"proposals must be anchor (B={B}, K, 11) and feature (B, K, C={self.embed_dims}); got "
                f"{tuple(p_anchor.shape)}, {tuple(p_feature.shape)}"
            )
            if K > Q - self.num_temp_instances:
                raise ValueError(
                    f"{K} proposals for {Q} queries of which {self.num_temp_instances} are carried: at most "
                    f"{Q - self.num_temp_instances}"
                )
            anchor = torch.cat([p_anchor.to(anchor.dtype), anchor[:, K:]], dim=1)
            f = torch.cat([p_feature.to(f.dtype), f[:, K:]], dim=1)
        dn = None
        if self.training and self.num_dn_groups > 0 and gt_boxes is not None:
            assert gt_labels is not None, "gt_boxes given without gt_labels"
            assert len(gt_boxes) == B, f"gt_boxes must hold B={B} samples; got {len(gt_boxes)}"
            gt_boxes = [g.to(device=anchor.device, dtype=anchor.dtype) for g in gt_boxes]
            dn = make_denoising_queries(gt_boxes, gt_labels, self.num_dn_groups, self.dn_noise_scale, self.max_dn_gt)
        attn_mask, hook = None, after_refine
        if dn is not None:
            D = dn["anchor"].shape[1]
            anchor = torch.cat([anchor, dn["anchor"]], dim=1)  # (B, Q + D, 11)
            f = torch.cat([f, f.new_zeros(B, D, self.embed_dims)], dim=1)  # (B, Q + D, C)
            attn_mask = denoising_attn_mask(Q, self.num_dn_groups, dn["valid"])
            if after_refine is not None:

                def hook(layer, feat, anc, cls, carried_):
                    new_f, new_a, carried_ = after_refine(layer, feat[:, :Q], anc[:, :Q], cls[:, :Q], carried_)
                    return torch.cat([new_f, feat[:, Q:]], 1), torch.cat([new_a, anc[:, Q:]], 1), carried_

        layers, f = self.decoder(
            f,
            anchor,
            bev=bev,
            img_feats=img_feats,
            img_from_ego=img_from_ego,
            image_hw=image_hw,
            dt=dt,
            attn_mask=attn_mask,
            carried=carried,
            after_refine=hook,
        )

        def part(layer, sl):
            return {k: (v[:, sl] if v is not None else None) for k, v in layer.items()}

        out = {"layers": [part(l, slice(0, Q)) for l in layers], "instance_feature": f[:, :Q], "dn": None}
        if dn is not None:
            out["dn"] = {
                "layers": [part(l, slice(Q, None)) for l in layers],
                "gt_anchor": dn["gt_anchor"],
                "labels": dn["labels"],
                "valid": dn["valid"],
            }
        return out


@torch.no_grad()
def decode(layer_out: dict, topk: int = 300, score_threshold: float | None = None) -> list[dict]:
    """Detections of one layer's output (Sparse4Dv3's ``SparseBox3DDecoder``), per sample.

    ``layer_out``: ``{"anchor": (B, Q, 11), "cls": (B, Q, K), "quality": (B, Q, 2) or None}``. As Sparse4Dv3:
    the top ``topk`` (query, class) pairs over ``Q * K`` by ``sigmoid(cls)``, ``score_threshold`` applied to
    that class score, then each score multiplied by ``sigmoid(centerness)`` (when quality is given) and
    re-sorted. Returns B dicts ``{"boxes": (M, 9) (bevlabels.geometry layout, via anchors_to_boxes),
    "scores": (M,) descending, "labels": (M,) long, "query_index": (M,) long}``, boxes and scores float32 at
    least (bf16 / fp16 outputs of autocast are cast up first).
    """
    cls, anchor, quality = layer_out["cls"], layer_out["anchor"], layer_out.get("quality")
    up = torch.promote_types(cls.dtype, torch.float32)
    cls, anchor = cls.to(up), anchor.to(torch.promote_types(anchor.dtype, torch.float32))
    quality = quality.to(up) if quality is not None else None
    B, Q, K = cls.shape
    assert anchor.shape == (B, Q, ANCHOR_DIM), f"anchor must be (B, Q, 11); got {tuple(anchor.shape)}"
    assert quality is None or quality.shape == (B, Q, 2), f"quality must be (B, Q, 2); got {tuple(quality.shape)}"
    k = min(topk, Q * K)
    cls_score, idx = cls.sigmoid().flatten(1).topk(k, dim=1)  # (B, k) over (B, Q*K)
    query, label = idx // K, idx % K
    score = cls_score
    if quality is not None:
        score = cls_score * quality[..., CNS].sigmoid().gather(1, query)
        score, order = score.sort(dim=1, descending=True)
        cls_score, query, label = cls_score.gather(1, order), query.gather(1, order), label.gather(1, order)
    out = []
    for b in range(B):
        keep = slice(None) if score_threshold is None else cls_score[b] >= score_threshold
        q = query[b][keep]
        out.append(
            {
                "boxes": anchors_to_boxes(anchor[b, q]),
                "scores": score[b][keep],
                "labels": label[b][keep],
                "query_index": q,
            }
        )
    return out


@torch.no_grad()
def class_nms(detection: dict, radius_per_label: torch.Tensor) -> dict:
    """One sample's :func:`decode` output with duplicates removed by circle NMS within each class.

    Not in Sparse4D, whose one-to-one matching is to teach the queries to suppress each other. An
    under-trained head has not learned that yet: the CPU-budget ``dvd`` runs put a second car within 1 m
    of a third to a half of their car detections (``results/bench_dvd_cpu.md``), and each counts as a false
    positive in the devkit's AP. DETR's ablation shows the same by depth: NMS helps the outputs of its
    first decoder layers, which have not yet suppressed duplicates, and stops helping at the last. Greedy, highest score first
    (:func:`~trainer.models.components.center_head.circle_nms`); a detection suppresses only the lower-scoring
    ones of its own label whose centres lie within ``radius_per_label[label]`` metres (CenterPoint's per-class
    radii, ``dataset.nms_radius``). A radius of 0 keeps that class as it is. Keys and their row order (score
    descending) are kept; every ``(M, ...)`` value is filtered alike (``boxes``, ``scores``, ``labels``,
    ``query_index``).
    """
    labels, scores = detection["labels"], detection["scores"]
    assert radius_per_label.ndim == 1, f"radius_per_label must be (K,); got {tuple(radius_per_label.shape)}"
    if len(labels) and int(labels.max()) >= len(radius_per_label):
        raise ValueError(f"label {int(labels.max())} has no NMS radius (radius_per_label has {len(radius_per_label)})")
    keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    xy = detection["boxes"][:, :2]
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero(as_tuple=True)[0]
        r = float(radius_per_label[k])
        keep[idx if r <= 0 else idx[circle_nms(xy[idx], scores[idx], r)]] = True
    return {
        key: (v[keep] if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape else v)
        for key, v in detection.items()
    }
