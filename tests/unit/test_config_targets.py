"""The configs and the code agree: every ``_target_`` of ``conf/`` resolves, and code defaults equal the configs'.

A ``_target_`` is also stored in every checkpoint's resolved config, so a class or function that moves must leave
its old path resolving (a re-export); this test fails the day a move breaks one. Nothing is built: each dotted
path is only looked up (``hydra.utils.get_object``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

CONF = Path(__file__).resolve().parents[2] / "conf"


def _targets(node, where: str):
    """``(dotted path, where)`` of every ``_target_`` under a parsed YAML node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value), where
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def conf_targets() -> dict[str, list[str]]:
    """``{dotted path: [file:key, ...]}`` of every ``_target_`` in ``conf/**/*.yaml``."""
    out: dict[str, list[str]] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        for target, where in _targets(yaml.safe_load(path.read_text()), str(path.relative_to(CONF))):
            out.setdefault(target, []).append(where)
    return out


TARGETS = conf_targets()


def test_the_configs_name_targets():
    # the scan itself: the model, data and trainer groups are all in it
    assert len(TARGETS) > 30
    assert "trainer.models.components.sparse.head.SparseHead" in TARGETS
    assert "trainer.lit_dualviewdistill.DualViewDistillModule" in TARGETS


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_in_conf_resolves(target):
    obj = get_object(target)  # raises, naming the path, when the module or the name is gone
    assert callable(obj), f"{target} (in {TARGETS[target]}) is not a class or a function"


def test_the_lightning_modules_loss_defaults_are_the_configs():
    """``DEFAULT_LOSS`` only fills in a config without ``model.loss``; its weights must be the model configs' own."""
    from trainer.lit_bevdepth import DEFAULT_LOSS

    for name in ("bevdepth", "dualviewdistill"):
        loss = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())["loss"]
        assert loss == DEFAULT_LOSS, f"conf/model/{name}.yaml loss {loss} != trainer.lit_bevdepth.DEFAULT_LOSS"
