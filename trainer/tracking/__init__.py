"""Tracking by detection: one interface (:mod:`~trainer.tracking.base`), three trackers chosen by config
(``tracker=kalman|greedy|bank``, :mod:`~trainer.tracking.factory`), whole scenes tracked into the nuScenes tracking
format (:mod:`~trainer.tracking.scenes`) and a picture per scene (:mod:`~trainer.tracking.render`).

Scoring lives with the benchmarks: :mod:`trainer.eval.nusc_tracking` (the devkit's ``TrackingEval``).
"""

from trainer.tracking.bank import BankTracker, NoModelIdsError
from trainer.tracking.base import TRACKING_CLASSES, Detections, Tracker, Tracks, circle_nms
from trainer.tracking.factory import TRACKERS, build_tracker, tracker_config
from trainer.tracking.greedy import MAX_DISTANCE, GreedyTracker
from trainer.tracking.kalman import ClassParams, ConstantVelocityFilter, KalmanTracker
from trainer.tracking.render import render_scene_tracks, render_scenes
from trainer.tracking.scenes import global_detections, scenes_of, track_predictions, track_scenes, tracked_boxes

__all__ = [
    "MAX_DISTANCE",
    "TRACKERS",
    "TRACKING_CLASSES",
    "BankTracker",
    "ClassParams",
    "ConstantVelocityFilter",
    "Detections",
    "GreedyTracker",
    "KalmanTracker",
    "NoModelIdsError",
    "Tracker",
    "Tracks",
    "build_tracker",
    "global_detections",
    "circle_nms",
    "render_scene_tracks",
    "render_scenes",
    "scenes_of",
    "track_predictions",
    "track_scenes",
    "tracked_boxes",
    "tracker_config",
]
