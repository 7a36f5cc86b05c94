"""nuScenes tables of the synthetic world: tokens, the fixed vocabularies, writing the JSON files.

Tokens are 32 hex digits, the MD5 of a readable key (``"<seed>/<scene>/sample/3"``), so they are
unique, stable across runs and independent of generation order. The vocabulary tables (category,
attribute, visibility, sensor) do not depend on the seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bevlabels.synthetic import catalog
from bevlabels.synthetic.rig import CAMERA_NAMES, LIDAR_NAME

TABLE_NAMES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
               "sample_annotation", "sample_data", "scene", "sensor", "visibility")  # fmt: skip

#: per-scene tables (the rest are vocabularies)
SCENE_TABLES = ("calibrated_sensor", "ego_pose", "instance", "log", "map", "sample", "sample_annotation",
                "sample_data", "scene")  # fmt: skip


def token(*key) -> str:
    """A nuScenes-style token: 32 hex digits of the MD5 of the key's parts joined by ``/``."""
    return hashlib.md5("/".join(str(k) for k in key).encode()).hexdigest()


def category_token(name: str) -> str:
    return token("category", name)


def attribute_token(name: str) -> str:
    return token("attribute", name)


def sensor_token(channel: str) -> str:
    return token("sensor", channel)


def vocabulary_tables() -> dict[str, list[dict]]:
    """The seed-independent tables: category (23, with lidarseg indices), attribute (8), visibility (4), sensor."""
    return {
        "category": [
            {"token": category_token(n), "name": n, "description": f"nuScenes category {n}", "index": i}
            for n, i in catalog.CATEGORIES
        ],
        "attribute": [
            {"token": attribute_token(n), "name": n, "description": f"nuScenes attribute {n}"}
            for n in catalog.ATTRIBUTES
        ],
        "visibility": [
            {
                "token": t,
                "level": lvl,
                "description": f"visibility of whole object is between {lvl[1:].replace('-', ' and ')}%",
            }
            for t, lvl in catalog.VISIBILITY
        ],
        "sensor": [{"token": sensor_token(LIDAR_NAME), "channel": LIDAR_NAME, "modality": "lidar"}]
        + [{"token": sensor_token(c), "channel": c, "modality": "camera"} for c in CAMERA_NAMES],
    }


def write_tables(table_dir: Path, tables: dict[str, list[dict]]) -> None:
    """Write each table as ``<table_dir>/<name>.json`` (nuScenes' layout: a list of records, indent 0)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        with open(table_dir / f"{name}.json", "w") as f:
            json.dump(tables[name], f, indent=0)
            f.write("\n")
