"""A tracker from its config group (``conf/tracker/<name>.yaml``): ``tracker=kalman|greedy|bank``.

Each file names its tracker (``name``) and holds its parameters, per class where they depend on the class; the
key ``input_nms`` (per-class radii in metres, or null) is the circle NMS applied to every keyframe's detections
before the tracker sees them (:func:`trainer.tracking.scenes.track_scenes`), whichever the tracker, its radii
multiplied by ``input_nms_scale`` (default 1: a detector whose duplicates spread further, as a camera detector's
along the viewing ray, wants more without restating every class).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bevlabels.conf import CONF_DIR
from trainer.tracking.bank import BankTracker
from trainer.tracking.base import Tracker
from trainer.tracking.greedy import GreedyTracker
from trainer.tracking.kalman import kalman_from_config

#: the trackers, by config name
TRACKERS = ("kalman", "greedy", "bank")
#: the config group's folder
TRACKER_CONF = CONF_DIR / "tracker"


def tracker_config(name_or_cfg: str | Mapping[str, Any]) -> dict[str, Any]:
    """The plain-dict config of a tracker: a name reads ``conf/tracker/<name>.yaml``; a mapping (a Hydra node) is
    resolved to a dict."""
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in TRACKERS:
            raise ValueError(f"tracker must be one of {TRACKERS}; got {name_or_cfg!r}")
        import yaml

        with open(TRACKER_CONF / f"{name_or_cfg}.yaml") as f:
            return yaml.safe_load(f)
    from bevlabels.conf import plain

    return plain(name_or_cfg)


def build_tracker(name_or_cfg: str | Mapping[str, Any]) -> tuple[Tracker, dict[str, float] | None]:
    """``(tracker, input_nms)`` of a tracker's name or config (module docstring)."""
    cfg = tracker_config(name_or_cfg)
    name = cfg.get("name")
    if name not in TRACKERS:
        raise ValueError(f"tracker config: name must be one of {TRACKERS}; got {name!r}")
    scale = float(cfg.get("input_nms_scale", 1.0))
    if scale <= 0:
        raise ValueError(f"tracker config: input_nms_scale must be > 0; got {scale}")
    input_nms = {k: float(v) * scale for k, v in cfg["input_nms"].items()} if cfg.get("input_nms") else None
    params = {k: v for k, v in cfg.items() if k not in ("name", "input_nms", "input_nms_scale")}
    if name == "kalman":
        return kalman_from_config(params), input_nms
    if name == "greedy":
        return GreedyTracker(**params), input_nms
    return BankTracker(**params), input_nms


__all__ = ["TRACKERS", "build_tracker", "tracker_config"]
