"""The synthetic world's on-disk formats, and generating a configured world where it is missing.

:data:`WRITERS` maps a format to its writer: ``nuscenes`` (:func:`bevlabels.synthetic.generate.generate`,
a devkit-loadable nuScenes dataset) and ``av2`` (:func:`bevlabels.synthetic.av2_generate.generate_av2`,
Argoverse 2 sensor logs that av2's loaders read). :func:`ensure_world` is what the label stage and the
data modules call with a ``dataset`` config: a config with a ``generate`` section names a synthetic
world, written on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bevlabels.synthetic.config import SynthConfig, SynthConfigError


@dataclass(frozen=True)
class Writer:
    """One format: its ``generate(cfg, out, overwrite=, map_fn=, log=)``, the paths it owns in ``out``, and
    ``exists(root, dataset_cfg)``, whether a world of this format is already at ``root``."""

    generate: Callable
    own_paths: tuple[str, ...]
    exists: Callable[[Path, Mapping], bool]


#: format -> (module, generate function, owned-paths constant, existence check)
WRITERS = {
    "nuscenes": ("bevlabels.synthetic.generate", "generate", "OWN_PATHS", "has_tables"),
    "av2": ("bevlabels.synthetic.av2_generate", "generate_av2", "OWN_PATHS_AV2", "is_generated_for"),
}


def writer(fmt: str) -> Writer:
    """The :class:`Writer` of a format, or :class:`SynthConfigError` naming the known ones."""
    if fmt not in WRITERS:
        raise SynthConfigError(f"format={fmt!r}: unknown dataset format; known: {sorted(WRITERS)}")
    module, fn, own, exists = WRITERS[fmt]
    mod = importlib.import_module(module)
    return Writer(getattr(mod, fn), tuple(getattr(mod, own)), getattr(mod, exists))


def ensure_world(
    dataset_cfg: Mapping,
    map_fn: Callable[[Callable, Iterable], Iterable] | None = None,
    log: Callable[[str], None] = print,
) -> bool:
    """Generate the synthetic world a ``dataset`` config names when it is missing; True when it generated one.

    A config names a synthetic world by its ``generate`` section (``format``: ``nuscenes`` by default
    or ``av2``; ``preset``; ``seed``); the world belongs at ``dataset_cfg["root"]``. Configs without
    that section (real nuScenes, real AV2) are left alone. ``map_fn`` renders scenes in parallel.
    """
    gen = dict(dataset_cfg.get("generate") or {})
    if not gen:
        return False
    root = Path(dataset_cfg["root"])
    fmt = str(gen.get("format", "nuscenes"))
    w = writer(fmt)  # an unknown format stops here, naming the known ones
    if w.exists(root, dataset_cfg):
        return False
    preset, seed = gen.get("preset", "small"), int(gen.get("seed", 0))
    log(f"synthetic world ({fmt}) not found at {root}: generating it (preset={preset} seed={seed}) first")
    w.generate(SynthConfig.from_preset(preset, seed=seed), root, map_fn=map_fn, log=log)
    return True
