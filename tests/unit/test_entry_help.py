"""Each entry point's ``--help`` lists its own config groups, and only those, with every option each one has.

The config folder is shared by every entry point, so Hydra's own ``$APP_CONFIG_GROUPS`` would list all of them
(``python -m trainer.track --help`` offered ``preset`` and ``experiment``). Each entry's help template lists its
groups by hand; this test keeps those lists true: the groups are the entry config's own defaults list, and each
group's options are the files in ``conf/<group>/``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
#: entry point module -> its config
ENTRIES = {
    "trainer.train": "train",
    "trainer.evaluate": "evaluate",
    "trainer.track": "track",
    "trainer.view": "view",
    "pipelines.labels": "labels",
    "pipelines.teacher": "teacher",
    "pipelines.synth": "synth",
}


def own_groups(config: str) -> list[str]:
    defaults = yaml.safe_load((CONF / f"{config}.yaml").read_text()).get("defaults", [])
    return [next(iter(e)) for e in defaults if isinstance(e, dict)]


def listed_groups(help_text: str) -> dict[str, list[str]]:
    block = help_text.split("Config groups (choose with group=option):", 1)[1]
    out = {}
    for line in block.splitlines()[1:]:
        m = re.match(r"^\s+([\w/]+): (.+)$", line)
        if not m:
            break
        out[m.group(1)] = [o.strip() for o in m.group(2).split(",")]
    return out


@pytest.mark.parametrize("module", sorted(ENTRIES))
def test_help_lists_only_its_own_groups(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"python -m {module}"), r.stdout[:200]
    listed = listed_groups(r.stdout)
    assert list(listed) == own_groups(ENTRIES[module]), (module, list(listed))
    for group, options in listed.items():
        assert options == sorted(p.stem for p in (CONF / group).glob("*.yaml")), (module, group, options)
