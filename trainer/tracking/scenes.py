"""Track whole scenes of detections and write the nuScenes tracking result format.

:func:`track_scenes` runs one tracker (:mod:`trainer.tracking.factory`) over scenes of keyframes, each scene in
time order from a fresh :meth:`~trainer.tracking.base.Tracker.reset`, on detections in the nuScenes *detection*
result format (global frame: what ``trainer.evaluate`` writes, or any other codebase's ``results_nusc.json``).
Before the tracker sees a keyframe, its detections are cleaned by a circle NMS within each class when the
tracker's config gives ``input_nms`` radii (:func:`~trainer.tracking.base.circle_nms`).

The result format (nuScenes ``eval/tracking/README``): per sample a list of ``{"sample_token", "translation",
"size", "rotation", "velocity", "tracking_id": str, "tracking_name", "tracking_score"}``, only for the tracked
classes (nuScenes: :data:`~trainer.tracking.base.TRACKING_CLASSES`), every sample of the tracked scenes present.
Track ids are ints written as strings, unique over the run. A box the tracker passes on unchanged keeps the
detection's own translation, size and rotation; a filtered box is written upright (its yaw as a rotation about z).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bevlabels.geometry import yaw_to_quat
from trainer.nusc_results import MAX_BOXES_PER_SAMPLE, result_meta
from trainer.tracking.base import TRACKING_CLASSES, Detections, Tracker, Tracks, circle_nms


def scenes_of(frames: Sequence[Any]) -> list[list[Any]]:
    """Keyframes (in scene and time order) grouped by their ``scene``."""
    from itertools import groupby

    return [list(g) for _, g in groupby(frames, key=lambda f: f.scene)]


def tracked_boxes(token: str, tracks: Tracks, dets: Detections) -> list[dict[str, Any]]:
    """The tracking result boxes of one sample (best score first, at most the devkit's 500)."""
    out = []
    for k in range(min(len(tracks), MAX_BOXES_PER_SAMPLE)):
        src = int(tracks.source[k])
        if src >= 0 and dets.source:  # the detection itself: its own numbers, unchanged
            d = dets.source[src]
            translation, size, rotation = d["translation"], d["size"], d["rotation"]
        else:
            translation = tracks.centre[k].tolist()
            size = tracks.size[k].tolist()
            rotation = yaw_to_quat(np.float64(tracks.yaw[k])).tolist()
        out.append(
            {
                "sample_token": token,
                "translation": [float(v) for v in translation],
                "size": [float(v) for v in size],
                "rotation": [float(v) for v in rotation],
                "velocity": [float(v) for v in tracks.velocity[k]],
                "tracking_id": str(int(tracks.ids[k])),
                "tracking_name": tracks.names[k],
                "tracking_score": float(tracks.scores[k]),
            }
        )
    return out


def track_scenes(
    scenes: Sequence[Sequence[Any]],
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    tracker: Tracker,
    input_nms: Mapping[str, float] | None = None,
    classes: Sequence[str] | None = TRACKING_CLASSES,
    meta: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """The tracking result dict of whole scenes.

    ``scenes``: per scene its keyframes in time order, each with ``token`` and ``timestamp`` (microseconds).
    ``detections``: ``{sample_token: [detection result boxes]}`` (global frame; a ``tracking_id`` key in a box is
    the detector's own id, which ``tracker=bank`` writes). ``classes``: the classes tracked (``None``: all).
    Every keyframe of ``scenes`` needs an entry (an empty list for no detections): a missing one is an error
    naming it. ``meta``: the result file's ``meta`` (default: camera only).
    """
    results: dict[str, list] = {}
    for frames in scenes:
        tracker.reset()
        prev_ts = None
        for f in frames:
            if f.token not in detections:
                raise KeyError(f"no detections for keyframe {f.token} of scene {getattr(f, 'scene', '?')}")
            dets = Detections.from_result_boxes(detections[f.token], classes)
            if input_nms and len(dets):
                dets = dets.take(circle_nms(dets, input_nms))
            dt = 0.0 if prev_ts is None else (int(f.timestamp) - prev_ts) / 1e6
            prev_ts = int(f.timestamp)
            results[f.token] = tracked_boxes(f.token, tracker.step(dets, dt), dets)
    return {"meta": dict(meta) if meta is not None else result_meta(True, False), "results": results}


def global_detections(
    frames: Sequence[Any], predictions: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> dict[str, list]:
    """A model's ``predict_step`` outputs on ``frames`` as the trackers read them: ``{token: [detection result boxes]}``
    in the global frame (each keyframe's ``global_from_ego``), with the model's ``tracking_id`` where it gives one."""
    from trainer.nusc_results import make_results

    return make_results(
        predictions,
        poses={f.token: f.global_from_ego for f in frames},
        class_names=class_names,
        all_tokens=[f.token for f in frames],
        with_track_ids=True,
    )["results"]


def track_predictions(
    scenes: Sequence[Sequence[Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    tracker: str | Mapping[str, Any] = "kalman",
    meta: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """:func:`track_scenes` on a model's ``predict_step`` outputs (ego-frame ``boxes``, ``scores``, ``labels`` and,
    from a model with an instance bank, ``track_ids``), moved to the global frame by each keyframe's
    ``global_from_ego`` (``scenes``' keyframes carry it) as the detection results file is written.
    ``tracker``: a name of ``conf/tracker`` or its config."""
    from trainer.tracking.factory import build_tracker

    detections = global_detections([f for scene in scenes for f in scene], predictions, class_names)
    trk, input_nms = build_tracker(tracker)
    return track_scenes(scenes, detections, trk, input_nms=input_nms, meta=meta)


__all__ = ["global_detections", "scenes_of", "track_predictions", "track_scenes", "tracked_boxes"]
