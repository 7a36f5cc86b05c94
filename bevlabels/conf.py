"""The repository's config folder ``conf/``: where it is, its grids by name, and plain dicts of its (OmegaConf) nodes.

The one module of the library that knows ``conf/``: the library itself takes its numbers from its callers (a
:class:`~bevlabels.grid.GridSpec`, a mapping), and the Hydra entry points (``trainer.train``, ``pipelines.labels``,
...) and the scripts compose the configs found here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bevlabels.grid import GridSpec

#: the repository's Hydra config folder
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def plain(cfg: Any, *, throw_on_missing: bool = False) -> Any:
    """A plain, resolved copy of an OmegaConf node (``DictConfig`` -> dict, ``ListConfig`` -> list); a mapping as a
    dict (a shallow copy); anything else as it is. ``throw_on_missing``: a ``???`` value raises instead of staying."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
    return dict(cfg) if isinstance(cfg, Mapping) else cfg


# ---------------------------------------------------------------------------------------------
# Grids (conf/grid/*.yaml)


def grid_names() -> list[str]:
    """The grids of ``conf/grid/``, by name."""
    return sorted(p.stem for p in (CONF_DIR / "grid").glob("*.yaml"))


def load_grid(name_or_path: str | Path) -> GridSpec:
    """The grid ``conf/grid/<name>.yaml`` (a name without a suffix) or of an explicit YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / "grid" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"grid config {path} not found; known grids: {grid_names()}")
    return GridSpec.from_yaml(path)
