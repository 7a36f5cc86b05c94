"""The sparse head's query decoder (Sparse4Dv3's), whose layer order is data: :class:`SparseDecoder`.

Queries are rows of an instance feature ``(B, Q, C)`` and an anchor ``(B, Q, 11)`` (columns named in
:mod:`~trainer.models.components.sparse.anchors`). The decoder runs the ops of ``operation_order``
(:func:`default_operation_order` is Sparse4Dv3's; the ops are in :mod:`~trainer.models.components.sparse.layers`):

``self_attn`` (alias ``gnn``)   decoupled self-attention between queries (:class:`~.layers.DecoupledSelfAttention`)
``temp_attn`` (``temp_gnn``)    the same module as cross-attention to instances carried from the previous
                                frame (:class:`CarriedInstances`); skipped when none are carried (or, with
                                ``temp_attn_without_carried="self"``, run as self-attention, as Sparse4D does)
``norm``                        LayerNorm
``ffn``                         two-layer MLP with residual (:class:`~.layers.FFN`)
``bev_agg`` / ``pv_agg``        ``f = f + agg(...)``: deformable aggregation from the BEV map / the cameras'
                                feature pyramid (modules passed in; their interfaces are in :class:`SparseDecoder`)
``refine``                      box residuals, class logits and quality (:class:`~.layers.RefineLayer`); ends a layer

Every op has its own parameters; only the anchor encoder is shared by all layers (as Sparse4D, whose
decoupled-attention projections ``fc_before``/``fc_after`` are also shared: here each attention op owns
its projections). The anchor embedding is recomputed from the refined anchor after every ``refine``.
Sparse4D does *not* detach the anchor between layers (``sparse4d_head.py`` feeds the refined anchor,
with its graph, to the next layer; only the instance bank detaches what it caches); that is the default
here, ``detach_anchor=True`` gives the Deformable-DETR behaviour.

Shape letters: B batch, Q queries, C channels (``embed_dims``), K classes, T carried instances, N cameras,
H/W BEV grid, h/w image feature size.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from trainer.models.components.sparse.anchors import ANCHOR_DIM
from trainer.models.components.sparse.layers import (
    DEFAULT_DT,
    FFN,
    AnchorEncoder,
    DecoupledSelfAttention,
    RefineLayer,
)

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
    dt (B,) | None, attn_mask (see :class:`~.layers.DecoupledSelfAttention`; self-attention ops only), carried,
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
