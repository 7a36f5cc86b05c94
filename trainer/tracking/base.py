"""What every tracker takes and gives: one keyframe's detections in the global frame, and the tracks it outputs.

A tracker (:class:`Tracker`) is reset at each scene's start and stepped once per keyframe, in time order, with
that keyframe's :class:`Detections` and the seconds ``dt`` since the scene's previous keyframe (0 at the first).
It returns the :class:`Tracks` to write for this keyframe: boxes with a track id each (ids unique over a whole
run). Everything is in the global frame, so a tracker never sees an ego pose and works on any detector's boxes,
those of a results JSON included (:meth:`Detections.from_result_boxes`).

Boxes are upright: a centre ``(x, y, z)``, a size ``(w, l, h)`` in the devkit's order, a heading ``yaw`` about
+z (counter-clockwise from global +x) and a ground velocity ``(vx, vy)`` in m/s.

Shapes: M detections of a keyframe, K output tracks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bevlabels.geometry import quat_to_yaw

#: the devkit's tracking classes (``nuscenes.eval.tracking.constants.TRACKING_NAMES``)
TRACKING_CLASSES = ("bicycle", "bus", "car", "motorcycle", "pedestrian", "trailer", "truck")


@dataclass
class Detections:
    """One keyframe's detections, global frame (module docstring). ``model_ids``: the detector's own track ids
    (the instance bank's), when it gives them; ``source``: each box's result dict, written back unchanged by a
    tracker that outputs the detected box itself."""

    centre: np.ndarray  # (M, 3)
    size: np.ndarray  # (M, 3) w, l, h
    yaw: np.ndarray  # (M,)
    velocity: np.ndarray  # (M, 2)
    names: list[str]
    scores: np.ndarray  # (M,)
    model_ids: np.ndarray | None = None  # (M,) int64
    source: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        M = len(self.names)
        self.centre = np.asarray(self.centre, dtype=np.float64).reshape(M, 3)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(M, 3)
        self.yaw = np.asarray(self.yaw, dtype=np.float64).reshape(M)
        self.velocity = np.nan_to_num(np.asarray(self.velocity, dtype=np.float64).reshape(M, 2))
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(M)
        if self.model_ids is not None:
            self.model_ids = np.asarray(self.model_ids, dtype=np.int64).reshape(M)
        self.names = list(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)), [], np.zeros(0))

    def take(self, index: Sequence[int] | np.ndarray) -> Detections:
        """The detections at ``index`` (in that order)."""
        return _take(self, index)

    @classmethod
    def from_result_boxes(
        cls, boxes: Sequence[Mapping[str, Any]], classes: Sequence[str] | None = TRACKING_CLASSES
    ) -> Detections:
        """Detections from a nuScenes result JSON's boxes of one sample (detection format: ``detection_name``,
        ``detection_score``; a ``tracking_id`` key, when present, is the detector's own id). ``classes``: keep
        those classes only (``None``: all)."""
        keep = [b for b in boxes if classes is None or b["detection_name"] in classes]
        if not keep:
            return cls.empty()
        q = np.array([b["rotation"] for b in keep], dtype=np.float64).reshape(-1, 4)
        ids = [b.get("tracking_id") for b in keep]
        return cls(
            centre=[b["translation"] for b in keep],
            size=[b["size"] for b in keep],
            yaw=quat_to_yaw(q),
            velocity=[b.get("velocity", [0.0, 0.0])[:2] for b in keep],
            names=[b["detection_name"] for b in keep],
            scores=[float(b["detection_score"]) for b in keep],
            model_ids=None if any(i is None for i in ids) else np.array([int(i) for i in ids], dtype=np.int64),
            source=list(keep),
        )


@dataclass
class Tracks:
    """What a tracker outputs for one keyframe: K boxes with their track ids (global frame), best score first.
    ``source[k]``: the index of the detection the box came from, or -1 for a box the tracker made."""

    centre: np.ndarray  # (K, 3)
    size: np.ndarray  # (K, 3)
    yaw: np.ndarray  # (K,)
    velocity: np.ndarray  # (K, 2)
    names: list[str]
    scores: np.ndarray  # (K,)
    ids: np.ndarray  # (K,) int64
    source: np.ndarray  # (K,) int64

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: Sequence[int] | np.ndarray) -> Tracks:
        """The boxes at ``index`` (in that order)."""
        return _take(self, index)

    @classmethod
    def concat(cls, a: Tracks, b: Tracks) -> Tracks:
        """``a``'s boxes, then ``b``'s."""
        return cls(
            *(np.concatenate([getattr(a, k), getattr(b, k)]) for k in ("centre", "size", "yaw", "velocity")),
            a.names + b.names,
            *(np.concatenate([getattr(a, k), getattr(b, k)]) for k in ("scores", "ids", "source")),
        )

    @classmethod
    def of_detections(cls, dets: Detections, index: np.ndarray, ids: np.ndarray) -> Tracks:
        """The detections at ``index`` themselves, with track ids ``ids``."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        d = dets.take(index)
        return cls(d.centre, d.size, d.yaw, d.velocity, d.names, d.scores, np.asarray(ids, np.int64).reshape(-1), index)


def _take(boxes, index):
    """The rows ``index`` of a :class:`Detections` or :class:`Tracks`: arrays indexed, lists picked, an absent
    (``None`` or empty) optional field left so."""
    from dataclasses import fields

    index = np.asarray(index, dtype=np.int64).reshape(-1)
    values = {}
    for f in fields(boxes):
        v = getattr(boxes, f.name)
        if v is None or (isinstance(v, list) and not v and len(boxes)):
            values[f.name] = v
        elif isinstance(v, list):
            values[f.name] = [v[i] for i in index]
        else:
            values[f.name] = v[index]
    return type(boxes)(**values)


class Tracker(Protocol):
    """A tracker (module docstring): ``name`` as in config (``tracker=<name>``), :meth:`reset` per scene,
    :meth:`step` per keyframe."""

    name: str

    def reset(self) -> None: ...

    def step(self, dets: Detections, dt: float) -> Tracks: ...


def circle_nms(dets: Detections, radius: Mapping[str, float]) -> np.ndarray:
    """Indices of ``dets`` kept by a circle NMS within each class, best score first: a box is dropped when a better
    box of its class lies within ``radius[class]`` metres in the ground plane (a class without a radius is kept
    whole). The tracker's input clean-up: a detector's duplicates would otherwise start tracks of their own."""
    order = np.argsort(-dets.scores, kind="stable")
    keep: list[int] = []
    kept_by_class: dict[str, list[int]] = {}
    for i in order:
        name = dets.names[i]
        r = radius.get(name)
        if r:
            others = kept_by_class.get(name, [])
            if others and np.min(np.linalg.norm(dets.centre[others, :2] - dets.centre[i, :2], axis=1)) < r:
                continue
        kept_by_class.setdefault(name, []).append(int(i))
        keep.append(int(i))
    return np.asarray(sorted(keep, key=lambda i: (-dets.scores[i], i)), dtype=np.int64)


__all__ = ["TRACKING_CLASSES", "Detections", "Tracker", "Tracks", "circle_nms"]
