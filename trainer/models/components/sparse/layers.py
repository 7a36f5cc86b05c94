"""The ops of the sparse head's decoder (Sparse4Dv3's layers): anchor encoder, decoupled attention, FFN, refine.

Each op is an ``nn.Module`` over the queries: rows of an instance feature ``(B, Q, C)`` and an anchor ``(B, Q, 11)``
(columns named in :mod:`~trainer.models.components.sparse.anchors`).
:class:`~trainer.models.components.sparse.decoder.SparseDecoder` builds and runs them in its ``operation_order``.

Departures from Sparse4Dv3, all because the aggregation here is additive (``f + agg``; Sparse4Dv3's
``residual_mode="cat"`` widens f to 2C and its ``AsymmetricFFN`` pre-norms and projects back to C):
the FFN is ``x + W2 relu(W1 x)`` on C channels; the attention residual is ``f + W_o attn(...)`` (Sparse4D
projects ``cat(f, anchor_embed) + attn`` back to C, mixing the embedding into f).

Shape letters: B batch, Q queries, C channels (``embed_dims``), K classes, S keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bevlabels.datasets.base import DEFAULT_DT
from trainer.models.components.sparse.anchors import (
    ANCHOR_DIM,
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
)

# The refine layer adds residuals to contiguous column blocks: position+size, yaw, velocity.
assert (X, Y, Z, LOG_L, LOG_W, LOG_H, SIN, COS, VX, VY, VZ) == tuple(range(ANCHOR_DIM))
_POS_SIZE, _YAW, _VEL = slice(X, LOG_H + 1), slice(SIN, COS + 1), slice(VX, VZ + 1)


#: classification bias for a prior probability of 0.01 (RetinaNet)
CLS_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


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
