"""Frozen foundation-model image encoders behind one interface, built once per process.

:class:`FeatureExtractor` maps images ``(N, 3, H, W)`` to patch features ``(N, C, h, w)`` (letters
and the pixel <-> feature-grid convention are in :mod:`bevlabels.features.base`);
:class:`HFBackbone` implements it for Hugging Face ViT-style backbones, DINOv2 ViT-S/14 by default.

Build one with :func:`build_extractor`; in pipeline tasks use :func:`get_extractor`, which keeps one
extractor per distinct config in the process, so a dask worker loads the model once, not once per
task. Both take the same keyword config (what ``conf/features/*.yaml`` holds), e.g.
``get_extractor(model="facebook/dinov2-small", weights="auto", image_height=224)``.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    compute_dtype_on,
    pixel_to_feature,
    resolve_device,
    resolve_dtype,
    round_to_multiple,
    sample_features,
)
from .hf import (
    BUILTIN_CONFIGS,
    DEFAULT_MODEL,
    HFBackbone,
    WeightsNotFoundError,
    builtin_config,
    hf_cache_dir,
    how_to_provide_weights,
    num_prefix_tokens,
)
from .oracle import SyntheticOracle

__all__ = [
    "BACKENDS",
    "BUILTIN_CONFIGS",
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "HFBackbone",
    "SyntheticOracle",
    "WeightsNotFoundError",
    "build_extractor",
    "builtin_config",
    "clear_extractor_cache",
    "compute_dtype_on",
    "get_extractor",
    "hf_cache_dir",
    "how_to_provide_weights",
    "num_prefix_tokens",
    "pixel_to_feature",
    "resolve_device",
    "resolve_dtype",
    "round_to_multiple",
    "sample_features",
]

# backend name -> extractor class; the config's ``backend`` key picks one (default "hf").
BACKENDS: dict[str, type[FeatureExtractor]] = {"hf": HFBackbone, "synthetic_oracle": SyntheticOracle}

_CACHE: dict[Hashable, FeatureExtractor] = {}
_LOCK = threading.Lock()


def build_extractor(backend: str = "hf", **cfg: Any) -> FeatureExtractor:
    """Return a new extractor of ``backend`` built from ``cfg`` (the backend class's keyword args)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown feature backend {backend!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[backend](**cfg)


def _freeze(value: Any) -> Hashable:
    """Return a hashable, order-independent key for a (nested) config value."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def get_extractor(**cfg: Any) -> FeatureExtractor:
    """Return this process's extractor for ``cfg``, building it on first use (thread-safe).

    Equal configs (same keys and values, in any order) share one object; a different config gets
    its own. Use it inside dask tasks so each worker process loads the model once.
    """
    key = _freeze(cfg)
    with _LOCK:
        extractor = _CACHE.get(key)
        if extractor is None:
            extractor = _CACHE[key] = build_extractor(**cfg)
        return extractor


def clear_extractor_cache() -> None:
    """Forget every extractor :func:`get_extractor` built in this process (frees their memory)."""
    with _LOCK:
        _CACHE.clear()
