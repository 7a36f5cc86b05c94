"""The synthetic world's on-disk formats, and generating a configured world where it is missing.

:data:`WRITERS` maps a format to its writer: ``nuscenes`` (:func:`bevlabels.synthetic.generate.generate`,
a devkit-loadable nuScenes dataset) and ``av2`` (:func:`bevlabels.synthetic.av2_generate.generate_av2`,
Argoverse 2 sensor logs that av2's loaders read). :func:`ensure_world` is what the label stage and the
data modules call with a ``dataset`` config: a config with a ``generate`` section names a synthetic
world, written on first use; with ``scenes``, only those of its scenes (the nuScenes format: a partial world,
completed by a later call that needs more, :mod:`bevlabels.synthetic.generate`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bevlabels.synthetic.config import SynthConfig, SynthConfigError


@dataclass(frozen=True)
class Writer:
    """One format: its ``generate(cfg, out, overwrite=, map_fn=, log=)``, the paths it owns in ``out``,
    ``exists(root, dataset_cfg)``, whether a whole world of this format is already at ``root``, and
    ``missing(root, cfg, scenes)``, the scenes of ``scenes`` a world at ``root`` lacks, for a format that writes part
    of a world (its ``generate`` takes ``scenes=``); None for one that writes only whole worlds."""

    generate: Callable
    own_paths: tuple[str, ...]
    exists: Callable[[Path, Mapping], bool]
    missing: Callable[[Path, SynthConfig, Sequence[str]], list[str]] | None = None


#: format -> (module, generate function, owned-paths constant, existence check, missing scenes or None)
WRITERS = {
    "nuscenes": ("bevlabels.synthetic.generate", "generate", "OWN_PATHS", "has_world", "missing_scenes"),
    "av2": ("bevlabels.synthetic.av2_generate", "generate_av2", "OWN_PATHS_AV2", "is_generated_for", None),
}


def writer(fmt: str) -> Writer:
    """The :class:`Writer` of a format, or :class:`SynthConfigError` naming the known ones."""
    if fmt not in WRITERS:
        raise SynthConfigError(f"format={fmt!r}: unknown dataset format; known: {sorted(WRITERS)}")
    module, fn, own, exists, missing = WRITERS[fmt]
    mod = importlib.import_module(module)
    return Writer(
        getattr(mod, fn), tuple(getattr(mod, own)), getattr(mod, exists), getattr(mod, missing) if missing else None
    )


def ensure_world(
    dataset_cfg: Mapping,
    map_fn: Callable[[Callable, Iterable], Iterable] | None = None,
    log: Callable[[str], None] = print,
    scenes: Callable[[SynthConfig], Sequence[str]] | None = None,
) -> bool:
    """Generate the synthetic world a ``dataset`` config names when it is missing; True when it rendered scenes.

    A config names a synthetic world by its ``generate`` section (``format``: ``nuscenes`` by default
    or ``av2``; ``preset``; ``seed``); the world belongs at ``dataset_cfg["root"]``. Configs without
    that section (real nuScenes, real AV2) are left alone. ``map_fn`` renders scenes in parallel.

    ``scenes(cfg)``: the names of the scenes the caller needs, of the world's config ``cfg``; only those are
    rendered (and those of them a partial world at ``root`` lacks), where the format writes part of a world
    (:attr:`Writer.missing`). Without it, or for a format that writes whole worlds only, the whole world.
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
    cfg = SynthConfig.from_preset(preset, seed=seed)
    if scenes is not None and w.missing is not None:
        needed = list(scenes(cfg))
        todo = w.missing(root, cfg, needed)
        if not todo:
            return False
        log(f"synthetic world ({fmt}, preset={preset} seed={seed}) at {root}: rendering the {len(todo)} scene(s) "
            f"this run needs and lacks first, {todo}; the others wait for a run that needs them")  # fmt: skip
        w.generate(cfg, root, map_fn=map_fn, log=log, scenes=needed)
        return True
    what = "incomplete" if root.is_dir() and any(root.iterdir()) else "not found"
    log(f"synthetic world ({fmt}) {what} at {root}: generating it (preset={preset} seed={seed}) first")
    w.generate(cfg, root, map_fn=map_fn, log=log)
    return True
