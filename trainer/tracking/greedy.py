"""CenterPoint's greedy closest-distance tracker (``tracker=greedy``).

Yin et al., CVPR 2021, "Center-based 3D Object Detection and Tracking", Section 3 and its ``pub_tracker``,
written here from the algorithm: each detection's centre is moved back in time by its predicted velocity
(``c - v * dt``) and matched greedily, best-scoring detection first, to the nearest live track of its class whose
last position lies within the class's distance limit (CenterPoint's per-class values, :data:`MAX_DISTANCE`); a
matched detection inherits the track's id, an unmatched one starts a track (``min_new_score``: only from that score
on; 0 gives every detection an id, as CenterPoint), and a track unmatched for ``max_age`` keyframes is dropped,
moved meanwhile by its last velocity. Only tracks seen in the current keyframe are output, as the detected boxes.

It trusts the detector's velocity: with none (or a poor one), a moving object's track breaks whenever it moves
further than the class's limit between keyframes. :class:`~trainer.tracking.kalman.KalmanTracker` estimates
velocity from the track's history instead.

Shapes: M detections of a keyframe, T live tracks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trainer.tracking.base import Detections, Tracks

#: CenterPoint's per-class association limits (metres between a track and a detection moved back by its velocity)
MAX_DISTANCE = {
    "car": 4.0,
    "truck": 4.0,
    "bus": 5.5,
    "trailer": 3.0,
    "pedestrian": 1.0,
    "motorcycle": 13.0,
    "bicycle": 3.0,
}


@dataclass
class _Track:
    id: int
    label: str
    centre: np.ndarray  # (2,) global x, y where it was last seen (or moved to, while unmatched)
    velocity: np.ndarray  # (2,) global m/s
    age: int = 0  # keyframes since it was last matched


@dataclass
class GreedyTracker:
    """CenterPoint's greedy closest-distance tracker (module docstring). Call :meth:`reset` at each scene's start."""

    max_distance: Mapping[str, float] = field(default_factory=lambda: dict(MAX_DISTANCE))
    max_age: int = 3
    min_new_score: float = 0.0
    default_distance: float = 2.0  # metres, for a class without its own limit (e.g. Argoverse 2's categories)
    name: str = "greedy"

    def __post_init__(self):
        self.tracks: list[_Track] = []
        self.next_id = 0

    def reset(self) -> None:
        """Forget every track (a new scene); ids keep counting, so they stay unique over a whole run."""
        self.tracks = []

    def step(self, dets: Detections, dt: float) -> Tracks:
        """The tracks of one keyframe (:class:`~trainer.tracking.base.Tracker`): the detections that got an id."""
        ids = self.associate(dets.centre[:, :2], dets.velocity, dets.names, dets.scores, dt)
        keep = np.flatnonzero(ids >= 0)
        keep = keep[np.argsort(-dets.scores[keep], kind="stable")]
        return Tracks.of_detections(dets, keep, ids[keep])

    def associate(
        self, centres: np.ndarray, velocities: np.ndarray, labels: Sequence[str], scores: np.ndarray, dt: float
    ) -> np.ndarray:
        """Track ids ``(M,)`` int64 of one keyframe's detections (-1: no track, under ``min_new_score``).

        ``centres (M, 2)`` and ``velocities (M, 2)`` global; ``labels`` M class names; ``dt`` seconds
        since the previous keyframe of the scene.
        """
        centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        velocities = np.nan_to_num(np.asarray(velocities, dtype=np.float64).reshape(-1, 2))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        M, T = len(centres), len(self.tracks)
        assert velocities.shape == (M, 2) and scores.shape == (M,) and len(labels) == M, "one row per detection"
        ids = np.full(M, -1, dtype=np.int64)
        back = centres - velocities * float(dt)  # where each detection was at the previous keyframe
        taken = np.zeros(T, dtype=bool)
        matched_track = np.full(M, -1, dtype=np.int64)
        if T:
            last = np.stack([t.centre for t in self.tracks])  # (T, 2)
            dist = np.linalg.norm(back[:, None] - last[None], axis=-1)  # (M, T)
            same = np.array([[lab == t.label for t in self.tracks] for lab in labels], dtype=bool).reshape(M, T)
            limit = np.array([self.max_distance.get(lab, self.default_distance) for lab in labels]).reshape(M, 1)
            dist = np.where(same & (dist <= limit), dist, np.inf)
            for m in np.argsort(-scores, kind="stable"):  # the best detection chooses first
                row = np.where(taken, np.inf, dist[m])
                t = int(np.argmin(row))
                if np.isfinite(row[t]):
                    taken[t] = True
                    matched_track[m] = t
        survivors: list[_Track] = []
        for m in range(M):
            t = matched_track[m]
            if t >= 0:
                track = self.tracks[t]
                track.centre, track.velocity, track.age = centres[m], velocities[m], 0
            elif scores[m] >= self.min_new_score:
                track = _Track(self.next_id, labels[m], centres[m], velocities[m])
                self.next_id += 1
            else:
                continue
            ids[m] = track.id
            survivors.append(track)
        for t, track in enumerate(self.tracks):
            if not taken[t] and track.age + 1 < self.max_age:
                track.age += 1
                track.centre = track.centre + track.velocity * float(dt)  # coast on its last velocity
                survivors.append(track)
        self.tracks = survivors
        return ids
