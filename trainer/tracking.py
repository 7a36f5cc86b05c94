"""Tracking by detection, the nuScenes tracking result format, and the devkit's ``TrackingEval``.

:class:`GreedyTracker` is CenterPoint's tracker (Yin et al., CVPR 2021, "Center-based 3D Object
Detection and Tracking", Section 3 and its ``pub_tracker``), written here from the algorithm: each
detection's centre is moved back in time by its predicted velocity (``c - v * dt``) and matched
greedily, best-scoring detection first, to the nearest live track of its class whose last position
lies within the class's distance limit (CenterPoint's per-class values, :data:`MAX_DISTANCE`);
a matched detection inherits the track's id, an unmatched one starts a track (``min_new_score``: only
from that score on; 0 gives every detection an id, as CenterPoint), and a track unmatched for
``max_age`` keyframes is dropped, moved meanwhile by its last velocity. Only tracks seen in the
current keyframe are output. Everything runs in the global frame, scene by scene in time order,
and the tracker is reset at a scene's start. It works on any detector's boxes (the detection
results chain's :func:`~trainer.nusc_results.boxes_to_global`), so every detector gets AMOTA.

The result format (nuScenes ``eval/tracking/README``): per sample a list of ``{"sample_token",
"translation", "size", "rotation", "velocity", "tracking_id": str, "tracking_name",
"tracking_score"}``, only for the seven tracking classes (:data:`TRACKING_CLASSES`), every sample of
the evaluated scenes present. Track ids are plain ints written as strings, unique within a scene.

Shapes: M detections of a keyframe, T live tracks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.nusc_results import MAX_BOXES_PER_SAMPLE, _np, boxes_to_global, result_meta

#: the devkit's tracking classes (``nuscenes.eval.tracking.constants.TRACKING_NAMES``)
TRACKING_CLASSES = ("bicycle", "bus", "car", "motorcycle", "pedestrian", "trailer", "truck")
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
#: the devkit's tracking configuration
TRACKING_EVAL_CONFIG = "tracking_nips_2019"


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

    def __post_init__(self):
        self.tracks: list[_Track] = []
        self.next_id = 0

    def reset(self) -> None:
        """Forget every track (a new scene); ids keep counting, so they stay unique over a whole run."""
        self.tracks = []

    def step(
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
            limit = np.array([self.max_distance.get(lab, 0.0) for lab in labels]).reshape(M, 1)
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


def track_boxes(
    sample_token: str,
    boxes_ego: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    track_ids: np.ndarray,
    global_from_ego: np.ndarray,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """The tracking result boxes of one sample: tracking classes only, ids >= 0, best first, at most 500."""
    boxes_ego = np.asarray(boxes_ego, dtype=np.float64).reshape(-1, 9)
    scores, labels, track_ids = (np.asarray(a).reshape(-1) for a in (scores, labels, track_ids))
    names = [class_names[int(k)] for k in labels]
    keep = [i for i in np.argsort(-scores, kind="stable") if names[i] in TRACKING_CLASSES and track_ids[i] >= 0]
    keep = keep[:MAX_BOXES_PER_SAMPLE]
    if not keep:
        return []
    g = boxes_to_global(boxes_ego[keep], global_from_ego)
    return [
        {
            "sample_token": sample_token,
            "translation": [float(v) for v in g["translation"][j]],
            "size": [float(v) for v in g["size"][j]],
            "rotation": [float(v) for v in g["rotation"][j]],
            "velocity": [float(v) for v in g["velocity"][j]],
            "tracking_id": str(int(track_ids[i])),
            "tracking_name": names[i],
            "tracking_score": float(scores[i]),
        }
        for j, i in enumerate(keep)
    ]


def make_tracking_results(
    scenes: Sequence[Sequence[Any]],
    predictions: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    tracker: GreedyTracker | None = None,
    use_camera: bool = False,
    use_lidar: bool = False,
    use_model_ids: bool = True,
) -> dict[str, Any]:
    """The tracking result dict of whole scenes.

    ``scenes``: per scene its keyframes in time order, each with ``token``, ``timestamp`` (us) and
    ``global_from_ego``. ``predictions``: ``predict_step`` outputs (``sample_token``, ``boxes`` ego
    ``(M, 9)``, ``scores``, ``labels``, and ``track_ids (M,)`` when the model tracks by itself). Without
    ``track_ids`` the ``tracker`` (default :class:`GreedyTracker`) associates the detections, reset per
    scene. ``use_model_ids=False`` ignores the model's ``track_ids`` and associates with the ``tracker``
    (the bank against greedy association on the same detections). Every keyframe of ``scenes`` gets an entry; a
    keyframe without a prediction is an error.
    """
    by_token = {str(p["sample_token"]): p for p in predictions}
    tracker = tracker if tracker is not None else GreedyTracker()
    results: dict[str, list] = {}
    for frames in scenes:
        tracker.reset()
        prev_ts = None
        for f in frames:
            p = by_token.get(f.token)
            if p is None:
                raise KeyError(f"no prediction for keyframe {f.token}, which the tracked scenes hold")
            boxes, scores, labels = (
                _np(p["boxes"]).reshape(-1, 9),
                _np(p["scores"]).reshape(-1),
                _np(p["labels"]).reshape(-1),
            )
            if use_model_ids and "track_ids" in p:
                ids = _np(p["track_ids"]).astype(np.int64).reshape(-1)
            else:
                dt = 0.0 if prev_ts is None else (int(f.timestamp) - prev_ts) / 1e6
                g = boxes_to_global(boxes, f.global_from_ego)
                names = [class_names[int(k)] for k in labels]
                ids = tracker.step(g["translation"][:, :2], g["velocity"], names, scores, dt)
            prev_ts = int(f.timestamp)
            results[f.token] = track_boxes(f.token, boxes, scores, labels, ids, f.global_from_ego, class_names)
    return {"meta": result_meta(use_camera, use_lidar), "results": results}


def run_tracking_eval(nusc, result_path: Path, eval_set: str, out_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """The devkit's ``TrackingEval`` (``tracking_nips_2019``) on a result file: its metrics summary.

    As :func:`trainer.evaluate.run_detection_eval`: results covering part of ``eval_set``, whole scenes,
    are scored against the GT of those samples only (the devkit's ``load_gt`` wrapped, nothing else);
    ``evaluated`` says which. ``TrackingEval`` builds its own ``NuScenes`` from ``nusc``'s version and root.
    """
    import nuscenes.eval.tracking.evaluate as devkit_tracking
    from nuscenes.eval.common.config import config_factory

    from trainer.evaluate import describe_coverage, gt_restricted_to, split_coverage

    with open(result_path) as f:
        results = json.load(f)["results"]
    evaluated = split_coverage(nusc, eval_set, results)
    if evaluated["partial"]:
        import logging

        logging.getLogger(__name__).warning("tracking: evaluating part of the split: %s", describe_coverage(evaluated))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(results.values()):
        import logging

        logging.getLogger(__name__).warning("no tracked box in any sample of %s: AMOTA 0, nothing to score", eval_set)
        return {"amota": 0.0, "amotp": float("nan"), "recall": 0.0, "evaluated": evaluated, "skipped": "no tracked box"}
    with gt_restricted_to(results, module=devkit_tracking) if evaluated["partial"] else nullcontext():
        evaluator = devkit_tracking.TrackingEval(
            config=config_factory(TRACKING_EVAL_CONFIG),
            result_path=str(result_path),
            eval_set=eval_set,
            output_dir=str(out_dir),
            nusc_version=nusc.version,
            nusc_dataroot=nusc.dataroot,
            verbose=verbose,
        )
        summary = evaluator.main(render_curves=False)
    summary["evaluated"] = evaluated
    return summary


def render_scene_tracks(
    frames: Sequence[Any], results: Mapping[str, list], path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """A PNG of one scene: predicted tracks (left) beside the GT tracks (right), in the global frame seen from
    above, each track a polyline of its box centres over the keyframes, coloured by id; the ego path in black.

    ``frames``: the scene's keyframes in time order (``token``, ``global_from_ego``, ``boxes`` of
    :class:`bevlabels.datasets.base.Boxes`); ``results``: the tracking result dict's ``results``. GT tracks are
    the boxes of tracking classes (``detection_class`` in :data:`TRACKING_CLASSES`) by ``instance_id``.
    """
    from bevlabels.viz import _plt

    plt = _plt()
    pred: dict[str, list] = {}
    for f in frames:
        for b in results.get(f.token, []):
            pred.setdefault(b["tracking_id"], []).append(b["translation"][:2])
    gt: dict[str, list] = {}
    for f in frames:
        if not len(f.boxes):
            continue
        centres = (np.asarray(f.global_from_ego)[:3, :3] @ f.boxes.boxes[:, :3].T).T + np.asarray(f.global_from_ego)[
            :3, 3
        ]
        for c, name, inst in zip(centres, f.boxes.detection_class, f.boxes.instance_id):
            if name in TRACKING_CLASSES:
                gt.setdefault(inst, []).append(c[:2])
    ego = np.array([np.asarray(f.global_from_ego)[:2, 3] for f in frames])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, tracks, title in ((axes[0], pred, "predicted tracks"), (axes[1], gt, "GT tracks")):
        for k, (_, pts) in enumerate(sorted(tracks.items(), key=lambda kv: str(kv[0]))):
            pts = np.asarray(pts)
            ax.plot(pts[:, 0], pts[:, 1], "-o", color=cmap(k % 20), ms=2, lw=1)
        ax.plot(ego[:, 0], ego[:, 1], "k-", lw=2, label="ego")
        ax.set_title(f"{title} ({len(tracks)})")
        ax.set_aspect("equal")
        ax.set_xlabel("global x (m)")
    axes[0].set_ylabel("global y (m)")
    fig.suptitle(f"scene {getattr(frames[0], 'scene', '')}: {len(frames)} keyframes")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


#: the overall tracking metrics printed and compared (the devkit's summary keys)
TRACKING_METRICS = ("amota", "amotp", "recall", "mota", "motp", "ids", "frag", "tp", "fp", "fn")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _fmt3(v) -> str:
    return "nan" if _missing(v) else f"{v:.3f}"


def format_tracking_table(summary: Mapping[str, Any]) -> str:
    """The overall tracking metrics, then AMOTA / AMOTP / IDS per class."""
    lines = ["tracking (TrackingEval, tracking_nips_2019)"]
    lines += [
        f"  {k:<8}{summary[k]:.4f}" if isinstance(summary.get(k), float) else f"  {k:<8}{summary.get(k)}"
        for k in TRACKING_METRICS
    ]
    per = summary.get("label_metrics", {})
    if per:
        lines.append(f"  {'class':<12}{'AMOTA':>8}{'AMOTP':>8}{'IDS':>6}")
        for c in TRACKING_CLASSES:
            a, p, i = (per.get(m, {}).get(c) for m in ("amota", "amotp", "ids"))
            if a is None:
                continue
            lines.append(f"  {c:<12}{_fmt3(a):>8}{_fmt3(p):>8}{'nan' if _missing(i) else int(i):>6}")
    return "\n".join(lines)


__all__ = [
    "MAX_DISTANCE",
    "TRACKING_CLASSES",
    "GreedyTracker",
    "format_tracking_table",
    "make_tracking_results",
    "render_scene_tracks",
    "run_tracking_eval",
    "track_boxes",
]
