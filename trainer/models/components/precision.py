"""Full precision inside mixed precision: where geometry, box targets and matching must not run in bf16 / fp16.

Under ``torch.autocast`` (Lightning's ``bf16-mixed`` / ``16-mixed``) matmuls, linears and convolutions run in
the low dtype whatever their inputs' dtype. That is what the networks want and what box geometry must not
get: bf16 keeps 8 significant bits, so a centre at x = 40.3 m is stored as 40.25 m, and every metre beyond
16 m is rounded to 0.125-0.25 m. The trainer keeps boxes, anchors, camera matrices, matching costs and
decoded boxes in float32 (or float64): their tensors are cast up where predictions meet them, and the few
matmuls among them run inside :func:`autocast_off`.
"""

from __future__ import annotations

import contextlib

import torch


def autocast_off(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """A region where autocast is off for the device type of ``like`` (its ops run in their inputs' dtypes).

    A no-op for device types without autocast (``meta``).
    """
    kind = like.device.type
    if torch.amp.is_autocast_available(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 when it is float64 (a bf16 / fp16 prediction cast up where it meets a box)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


__all__ = ["at_least_float32", "autocast_off"]
