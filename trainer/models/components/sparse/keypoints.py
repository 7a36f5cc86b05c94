"""Keypoints of an anchor box: where the sparse head's queries sample features (Sparse4D's key points).

Each anchor (``anchors.py`` layout: centre, log size, ``(sin, cos)`` yaw) yields ``P = F + num_learned``
points in the ego frame of its anchors:

- ``F`` *fixed* points ``fix_scale * (L, W, H)`` in the box frame (x along the heading, y to its left,
  z up), by default the centre and six points just inside the face centres (``+-0.45 L`` along x,
  ``+-0.45 W`` along y, ``+-0.45 H`` along z; the faces sit at ``+-0.5``), so ``F = 7``;
- ``num_learned`` *learned* points ``(sigmoid(Linear(instance_feature)) - 0.5) * (L, W, H)``, anywhere
  inside the box, one ``Linear(C, 3 * num_learned)`` predicting them per query.

All are rotated by the anchor's yaw with the rotation ``[[cos, -sin], [sin, cos]]`` built from its
``SIN`` and ``COS`` columns as they are (not renormalised: a refinement that lets ``(sin, cos)`` drift
off the unit circle scales the points about the centre, as in Sparse4D), then moved to its centre.

The fixed scales are a non-persistent float64 buffer (cast to the anchors' dtype in ``forward``), never
a parameter: no initialiser and no checkpoint touches them (Sparse4D kept them in an ``nn.Parameter`` that its ``init_weights`` overwrote with random
values, its issue #34).

Shape letters: B batch, Q queries, C channels, P keypoints (F fixed + learned).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainer.models.components.sparse.anchors import ANCHOR_DIM, COS, LOG_H, LOG_L, LOG_W, SIN, X, Y, Z

#: the centre and the six face points of Sparse4D's nuScenes configs, in units of (L, W, H)
DEFAULT_FIX_SCALE = (
    (0.0, 0.0, 0.0),
    (0.45, 0.0, 0.0),
    (-0.45, 0.0, 0.0),
    (0.0, 0.45, 0.0),
    (0.0, -0.45, 0.0),
    (0.0, 0.0, 0.45),
    (0.0, 0.0, -0.45),
)


class KeypointGenerator(nn.Module):
    """Keypoints ``(B, Q, P, 3)`` of anchors ``(B, Q, 11)``; see the module docstring."""

    def __init__(
        self,
        embed_dims: int,
        num_learned: int = 6,
        fix_scale: Sequence[Sequence[float]] = DEFAULT_FIX_SCALE,
    ):
        super().__init__()
        scale = torch.tensor([list(map(float, s)) for s in fix_scale], dtype=torch.float64).reshape(-1, 3)  # (F, 3)
        if len(scale) == 0 and num_learned == 0:
            raise ValueError("KeypointGenerator needs fix_scale or num_learned > 0: it would make no keypoint")
        if num_learned < 0:
            raise ValueError(f"num_learned must be >= 0; got {num_learned}")
        self.embed_dims = int(embed_dims)
        self.num_fixed = len(scale)
        self.num_learned = int(num_learned)
        self.num_points = self.num_fixed + self.num_learned
        self.register_buffer("fix_scale", scale, persistent=False)
        self.learned_fc = nn.Linear(self.embed_dims, 3 * self.num_learned) if self.num_learned else None
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform weights, zero bias for the learned points (learned points start at the centre on average)."""
        if self.learned_fc is not None:
            nn.init.xavier_uniform_(self.learned_fc.weight)
            nn.init.zeros_(self.learned_fc.bias)

    def forward(self, anchor: torch.Tensor, instance_feature: torch.Tensor | None = None) -> torch.Tensor:
        """Ego-frame keypoints ``(B, Q, P, 3)``; only the ``F`` fixed ones (``P = F``) without ``instance_feature``.

        Args:
            anchor: ``(B, Q, 11)`` anchor states.
            instance_feature: ``(B, Q, C)`` query features, or None.
        """
        assert anchor.ndim == 3 and anchor.shape[-1] == ANCHOR_DIM, (
            f"anchor must be (B, Q, 11); got {tuple(anchor.shape)}"
        )
        b, q = anchor.shape[:2]
        size = anchor[..., [LOG_L, LOG_W, LOG_H]].exp()[:, :, None]  # (B, Q, 1, 3)
        local = self.fix_scale.to(anchor.dtype) * size  # (B, Q, F, 3)
        if instance_feature is not None and self.learned_fc is not None:
            assert instance_feature.shape == (b, q, self.embed_dims), (
                f"instance_feature must be (B, Q, C) = {(b, q, self.embed_dims)}; got {tuple(instance_feature.shape)}"
            )
            learned = self.learned_fc(instance_feature).reshape(b, q, self.num_learned, 3)  # (B, Q, P-F, 3)
            local = torch.cat([local, (learned.sigmoid() - 0.5).to(anchor.dtype) * size], dim=2)  # (B, Q, P, 3)
        sin, cos = anchor[..., SIN, None], anchor[..., COS, None]  # (B, Q, 1) each
        lx, ly, lz = local.unbind(-1)  # (B, Q, P) each
        rotated = torch.stack([cos * lx - sin * ly, sin * lx + cos * ly, lz], dim=-1)  # (B, Q, P, 3)
        return rotated + anchor[..., None, [X, Y, Z]]
