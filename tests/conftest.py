"""Shared pytest fixtures. Keep each one small and self-contained; add new fixtures below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def realdata_root() -> Path:
    """The shared real-data folder: ``$BEVLABELS_REALDATA``, else ``../shared/realdata`` beside the repo."""
    env = os.environ.get("BEVLABELS_REALDATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real-data folder (see ``realdata_root``); skips the test when it is absent."""
    root = realdata_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set BEVLABELS_REALDATA to its folder)")
    return root


@pytest.fixture(scope="session")
def nuscenes_demo(realdata: Path) -> Path:
    """The real nuScenes demo root (one v1.0-mini keyframe of scene-0061); skips when absent."""
    root = realdata / "nuscenes-demo"
    if not (root / "v1.0-mini").is_dir():
        pytest.skip(f"nuScenes demo tables not found at {root / 'v1.0-mini'}")
    return root


@pytest.fixture(scope="session")
def av2_sensor_log(realdata: Path) -> Path:
    """The real AV2 sensor-dataset log folder (``av2-sensor/val/<log_id>``, no images); skips when absent."""
    logs = sorted((realdata / "av2-sensor" / "val").glob("*/city_SE3_egovehicle.feather"))
    if not logs:
        pytest.skip(f"AV2 sensor log not found under {realdata / 'av2-sensor' / 'val'}")
    return logs[0].parent
