"""Detections to the nuScenes detection result format (the JSON ``DetectionEval`` reads).

The format (nuScenes ``eval/detection/README``): ``{"meta": {use_camera, use_lidar, use_radar,
use_map, use_external}, "results": {sample_token: [box, ...]}}`` with every sample of the evaluated
split present (an empty list when nothing is detected) and each box::

    {"sample_token", "translation": [x, y, z] global (box centre), "size": [w, l, h],
     "rotation": [w, x, y, z] global, "velocity": [vx, vy] global, "detection_name",
     "detection_score", "attribute_name"}

Our detections are ``(M, 9)`` boxes in the keyframe's ego frame (``bevlabels.geometry`` layout);
:func:`boxes_to_global` moves them with the keyframe's ``global_from_ego``: centres transformed,
the heading composed with the ego pose's full rotation (``R_global = R_ego @ Rz(yaw)``) and
converted to a quaternion, velocity ``(vx, vy, 0)`` rotated (over-ground velocity, no ego-motion
term: the adapter rotated GT velocities the same way). Unknown (NaN) velocities are written as 0.

Attributes: the devkit scores ``attribute_name`` (mAAE) but has no rule for choosing one; we use
the rule of mmdetection3d's nuScenes export, by class and speed (:func:`default_attribute`).

Shapes: M boxes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.geometry import (
    VX,
    VY,
    YAW,
    H,
    L,
    W,
    X,
    Y,
    Z,
    quat_to_yaw,
    rot_z,
    rotmat_to_quat,
    to_numpy,
    transform_points,
)

#: class -> attribute for a slow object (speed <= :data:`MOVING_SPEED`), as mmdetection3d's ``DefaultAttribute``
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "trailer": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "barrier": "",
    "traffic_cone": "",
}
VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
CYCLES = ("bicycle", "motorcycle")
#: m/s above which an object counts as moving for its attribute
MOVING_SPEED = 0.2
#: the devkit's limit on boxes per sample (``DetectionEval`` asserts it)
MAX_BOXES_PER_SAMPLE = 500


def default_attribute(name: str, speed: float) -> str:
    """The attribute mmdetection3d's nuScenes export writes for a ``name`` box moving at ``speed`` m/s.

    Moving: vehicles ``vehicle.moving``, cycles ``cycle.with_rider``, others their default
    (pedestrian ``pedestrian.moving``); still: pedestrians ``pedestrian.standing``, a bus
    ``vehicle.stopped``, others their default (car ``vehicle.parked``); cones and barriers ``''``.
    """
    if speed > MOVING_SPEED:
        if name in VEHICLES:
            return "vehicle.moving"
        if name in CYCLES:
            return "cycle.with_rider"
        return DEFAULT_ATTRIBUTE.get(name, "")
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE.get(name, "")


def boxes_to_global(boxes_ego: np.ndarray, global_from_ego: np.ndarray) -> dict[str, np.ndarray]:
    """Ego-frame boxes ``(M, 9)`` in the devkit's terms: ``translation (M, 3)``, ``size (M, 3)`` w l h,
    ``rotation (M, 4)`` w x y z, ``velocity (M, 2)``, all in the global frame."""
    boxes_ego = np.asarray(boxes_ego, dtype=np.float64).reshape(-1, 9)
    T = np.asarray(global_from_ego, dtype=np.float64)
    assert T.shape == (4, 4), f"global_from_ego must be (4, 4); got {T.shape}"
    R = T[:3, :3]
    translation = transform_points(T, boxes_ego[:, [X, Y, Z]])
    rotation = rotmat_to_quat(R[None] @ rot_z(boxes_ego[:, YAW]))  # (M, 4)
    v = np.nan_to_num(boxes_ego[:, [VX, VY]], nan=0.0)
    velocity = (np.concatenate([v, np.zeros((len(v), 1))], 1) @ R.T)[:, :2]
    return {
        "translation": translation,
        "size": boxes_ego[:, [W, L, H]],
        "rotation": rotation,
        "velocity": velocity,
    }


def boxes_from_results(boxes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Our ``(M, 9)`` layout of a results file's boxes of one sample (detection or tracking format), still in the
    global frame: the centre, ``size`` w l h as L W H, the heading of ``rotation`` (upright boxes), the velocity
    (0 where the box has none). The inverse of :func:`boxes_to_global` for level poses."""
    out = np.zeros((len(boxes), 9), dtype=np.float64)
    if not len(boxes):
        return out
    out[:, [X, Y, Z]] = [b["translation"] for b in boxes]
    out[:, [W, L, H]] = [b["size"] for b in boxes]
    out[:, YAW] = quat_to_yaw(np.array([b["rotation"] for b in boxes], dtype=np.float64))
    out[:, [VX, VY]] = [list(b.get("velocity", (0.0, 0.0)))[:2] for b in boxes]
    return out


def sample_results(
    sample_token: str,
    boxes_ego: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    global_from_ego: np.ndarray,
    class_names: Sequence[str],
    track_ids: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The result boxes of one sample (best first, at most :data:`MAX_BOXES_PER_SAMPLE`). ``track_ids (M,)``: the
    detector's own track ids (an instance bank's), added to each box as ``tracking_id`` for the trackers
    (:class:`trainer.tracking.BankTracker`); a detection results file is written without them."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:MAX_BOXES_PER_SAMPLE]
    if not len(order):
        return []
    g = boxes_to_global(np.asarray(boxes_ego)[order], global_from_ego)
    out = []
    for i, k in enumerate(order):
        name = class_names[int(labels[k])]
        vel = g["velocity"][i]
        out.append(
            {
                "sample_token": sample_token,
                "translation": [float(v) for v in g["translation"][i]],
                "size": [float(v) for v in g["size"][i]],
                "rotation": [float(v) for v in g["rotation"][i]],
                "velocity": [float(v) for v in vel],
                "detection_name": name,
                "detection_score": float(scores[k]),
                "attribute_name": default_attribute(name, float(np.hypot(*vel))),
            }
        )
        if track_ids is not None:
            out[-1]["tracking_id"] = str(int(np.asarray(track_ids).reshape(-1)[k]))
    return out


def make_results(
    predictions: Iterable[Mapping[str, Any]],
    poses: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    use_camera: bool = False,
    use_lidar: bool = False,
    all_tokens: Sequence[str] | None = None,
    with_track_ids: bool = False,
) -> dict[str, Any]:
    """The result dict of a split: ``predictions`` (``predict_step`` outputs) with every token of ``all_tokens``.

    ``poses[token]`` is the keyframe's ``global_from_ego (4, 4)``. A token of ``all_tokens`` without a
    prediction gets ``[]``; a prediction for a token outside ``all_tokens`` is an error. ``with_track_ids``:
    boxes of predictions that carry ``track_ids`` (a model with an instance bank) get their ``tracking_id``
    (for the trackers, not for a results file).
    """
    results: dict[str, list] = {t: [] for t in all_tokens} if all_tokens is not None else {}
    for p in predictions:
        tok = str(p["sample_token"])
        if all_tokens is not None and tok not in results:
            raise KeyError(f"a prediction for sample {tok}, which is not in the evaluated split")
        results[tok] = sample_results(
            tok,
            to_numpy(p["boxes"]),
            to_numpy(p["scores"]),
            to_numpy(p["labels"]),
            poses[tok],
            class_names,
            track_ids=to_numpy(p["track_ids"]) if with_track_ids and "track_ids" in p else None,
        )
    return {"meta": result_meta(use_camera, use_lidar), "results": results}


def result_meta(use_camera: bool, use_lidar: bool) -> dict[str, bool]:
    """The result file's ``meta`` (the modalities used; no radar, map or external data), detection and tracking alike."""
    return {
        "use_camera": bool(use_camera),
        "use_lidar": bool(use_lidar),
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write the result dict as JSON (strict: no NaN) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, allow_nan=False)
    return path
