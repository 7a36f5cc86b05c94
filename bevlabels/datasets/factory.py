"""The dataset adapter a config names (``_target_`` + kwargs), built once per process.

The one factory the label stages (dask workers), the trainer (DataLoader workers) and the store tools share: each
of them holds only the plain config (picklable) and asks for the adapter where it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

_ADAPTERS: dict[str, Any] = {}


def build_adapter(adapter_cfg: Mapping) -> Any:
    """The adapter of a ``dataset.adapter`` config, e.g. ``{"_target_": "bevlabels.datasets.nuscenes.NuScenesDataset",
    "root": ..., "version": ...}``; the same config gives the same object for the rest of the process."""
    cfg = dict(adapter_cfg)
    if "_target_" not in cfg:
        raise ValueError(f"a dataset adapter config needs a _target_ (the adapter's class); got keys {sorted(cfg)}")
    key = repr(sorted((k, repr(v)) for k, v in cfg.items()))
    if key not in _ADAPTERS:
        module, _, name = str(cfg.pop("_target_")).rpartition(".")
        _ADAPTERS[key] = getattr(importlib.import_module(module), name)(**cfg)
    return _ADAPTERS[key]
