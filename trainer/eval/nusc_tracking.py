"""The nuScenes tracking benchmark: the devkit's ``TrackingEval`` (``tracking_nips_2019``) on a tracking result file.

Also the printed table of its summary (:func:`format_tracking_table`) and the keys compared across runs
(:data:`TRACKING_METRICS`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from trainer.tracking.base import TRACKING_CLASSES

log = logging.getLogger("bevlabels.evaluate")

#: the devkit's tracking configuration
TRACKING_EVAL_CONFIG = "tracking_nips_2019"


def run_tracking_eval(nusc, result_path: Path, eval_set: str, out_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """The devkit's ``TrackingEval`` (``tracking_nips_2019``) on a result file: its metrics summary.

    As :func:`trainer.evaluate.run_detection_eval`: results covering part of ``eval_set``, whole scenes,
    are scored against the GT of those samples only (the devkit's ``load_gt`` wrapped, nothing else);
    ``evaluated`` says which. ``TrackingEval`` builds its own ``NuScenes`` from ``nusc``'s version and root.
    """
    import nuscenes.eval.tracking.evaluate as devkit_tracking
    from nuscenes.eval.common.config import config_factory

    from trainer.eval.coverage import describe_coverage, gt_restricted_to, split_coverage

    with open(result_path) as f:
        results = json.load(f)["results"]
    evaluated = split_coverage(nusc, eval_set, results)
    if evaluated["partial"]:
        log.warning("tracking: evaluating part of the split: %s", describe_coverage(evaluated))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(results.values()):
        log.warning("no tracked box in any sample of %s: AMOTA 0, nothing to score", eval_set)
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


#: tracking_nips_2019's dist_th_tp (metres, centre distance in the ground plane)
MATCH_DISTANCE = 2.0


def oracle_id_results(detections: dict[str, list], nusc, max_distance: float = MATCH_DISTANCE) -> dict:
    """The ceiling of association on ``detections`` (``{sample_token: [detection box dicts]}``): each detection
    given the *true* track id, as a tracking ``results`` dict.

    In each keyframe, each detection of a tracking class, best score first, takes the nearest GT box of its class
    not yet taken whose centre lies within ``max_distance`` (``tracking_nips_2019``'s ``dist_th_tp``, 2 m, the
    distance at which ``TrackingEval`` counts a match) in the ground plane and inherits that box's
    ``instance_token`` as its track id; a detection with no such box gets an id of its own (a false positive to
    every tracker). No tracker knows the truth: what ``TrackingEval`` leaves below AMOTA 1 on these tracks is the
    detector's (missed boxes, false positives, their scores), so a tracker's AMOTA over this one is its share.
    """
    from nuscenes.eval.tracking.utils import category_to_tracking_name

    from trainer.nusc_results import MAX_BOXES_PER_SAMPLE

    results: dict[str, list] = {}
    fresh = 0
    for token, dets in detections.items():
        sample = nusc.get("sample", token)
        gts: dict[str, list] = {}
        for a in sample["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_tracking_name(ann["category_name"])
            if name is not None:
                gts.setdefault(name, []).append((ann["instance_token"], np.asarray(ann["translation"][:2], float)))
        taken: set[str] = set()
        boxes = []
        dets = sorted(
            (d for d in dets if d["detection_name"] in TRACKING_CLASSES), key=lambda d: -float(d["detection_score"])
        )
        for d in dets[:MAX_BOXES_PER_SAMPLE]:
            name = d["detection_name"]
            p = np.asarray(d["translation"][:2], float)
            best, best_dist = None, max_distance
            for inst, c in gts.get(name, []):
                dist = float(np.linalg.norm(c - p))
                if inst not in taken and dist <= best_dist:
                    best, best_dist = inst, dist
            if best is None:
                track_id = f"unmatched-{fresh}"
                fresh += 1
            else:
                taken.add(best)
                track_id = best
            boxes.append(
                {
                    "sample_token": token,
                    "translation": d["translation"],
                    "size": d["size"],
                    "rotation": d["rotation"],
                    "velocity": d["velocity"],
                    "tracking_id": track_id,
                    "tracking_name": name,
                    "tracking_score": float(d["detection_score"]),
                }
            )
        results[token] = boxes
    return results


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


def oracle_ceiling(nusc, detections: Mapping[str, list], meta: Mapping, eval_set: str, out_dir: Path) -> dict[str, Any]:
    """``TrackingEval`` of :func:`oracle_id_results` on ``detections``, written under ``out_dir``: its summary."""
    from trainer.nusc_results import write_results

    out_dir = Path(out_dir)
    path = write_results(
        out_dir / "tracking_oracle_ids.json", {"meta": dict(meta), "results": oracle_id_results(detections, nusc)}
    )
    return run_tracking_eval(nusc, path, eval_set, out_dir)


def as_detections(tracking_results: Mapping[str, list]) -> dict[str, list]:
    """Tracking result boxes as detection result boxes (``detection_name`` / ``detection_score`` from the tracking
    ones, the track id dropped): what :func:`oracle_id_results` reads."""
    return {
        token: [
            {
                **{k: v for k, v in b.items() if not k.startswith("tracking_")},
                "detection_name": b["tracking_name"],
                "detection_score": b["tracking_score"],
                "attribute_name": "",
            }  # fmt: skip
            for b in boxes
        ]
        for token, boxes in tracking_results.items()
    }


def track_and_score(
    nusc,
    frames: Sequence[Any],
    detections: Mapping[str, list],
    tracker: str | Mapping[str, Any],
    out_dir: Path,
    eval_set: str,
    meta: Mapping[str, bool],
    verbose: bool = False,
    ceiling: bool = True,
    pictures: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Track ``detections`` (``{sample_token: [detection result boxes]}``, global frame) scene by scene with
    ``tracker`` (a name of ``conf/tracker`` or its config) and score them with ``TrackingEval``.

    ``frames``: the keyframes tracked (``token``, ``scene``, ``timestamp``; grouped by scene in their order). Writes
    under ``out_dir``: ``results_nusc_tracking.json``, the devkit's ``metrics_summary.json``, with ``ceiling`` the
    oracle-id ceiling of the same detections (``oracle_ids/``, :func:`oracle_ceiling`), and with ``pictures`` a
    PNG per scene (``png/<scene>.png``, titled with the tracker, its AMOTA and the ceiling's). Returns the summary
    with ``tracker`` (its name) and ``oracle_ids`` (the ceiling's summary, or ``{}``) added; with ``ceiling`` also
    ``oracle_ids_on_tracks``: the true ids given to the tracker's own output boxes (``oracle_ids_on_tracks/``).
    The gap from the ceiling to it is what the tracker's choice of boxes costs (thresholds, its NMS, what it drops);
    the gap from it to the tracker's AMOTA is what its association costs (switches, fragments, false tracks).
    """
    from trainer.nusc_results import write_results
    from trainer.tracking import build_tracker, render_scenes, scenes_of, track_scenes, tracker_config

    cfg = tracker_config(tracker)
    trk, input_nms = build_tracker(cfg)
    scenes = scenes_of(frames)
    out_dir = Path(out_dir)
    results = track_scenes(scenes, detections, trk, input_nms=input_nms, meta=meta)
    path = write_results(out_dir / "results_nusc_tracking.json", results)
    summary = run_tracking_eval(nusc, path, eval_set, out_dir, verbose=verbose)
    summary["tracker"] = trk.name
    summary["tracker_config"] = cfg
    oracle = oracle_ceiling(nusc, detections, meta, eval_set, out_dir / "oracle_ids") if ceiling else {}
    summary["oracle_ids"] = oracle
    if ceiling:  # the true ids on the tracker's own boxes: what its association, not its choice of boxes, costs
        own = oracle_ceiling(nusc, as_detections(results["results"]), meta, eval_set, out_dir / "oracle_ids_on_tracks")
        summary["oracle_ids_on_tracks"] = own
    summary.update(extra or {})
    with open(out_dir / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    if pictures:
        note = f"AMOTA {_fmt3(summary.get('amota'))}" + (
            f", oracle-id ceiling {_fmt3(oracle.get('amota'))}" if oracle else ""
        )
        render_scenes(scenes, results["results"], out_dir / "png", tracker=trk.name, note=note)
    return summary


def describe_ceiling(summary: Mapping[str, Any]) -> str:
    """``tracker kalman: AMOTA 0.412 of the oracle-id ceiling 0.480 (86%), IDS 12 (ceiling 0)``: the tracker's share."""
    oracle = summary.get("oracle_ids") or {}
    line = f"tracker {summary.get('tracker', '?')}: AMOTA {_fmt3(summary.get('amota'))}"
    if not oracle:
        return line + " (no oracle-id ceiling computed)"
    a, c = summary.get("amota"), oracle.get("amota")
    share = f" ({100 * a / c:.0f}%)" if not _missing(a) and not _missing(c) and c > 0 else ""
    line += f" of the oracle-id ceiling {_fmt3(c)}{share}, IDS {summary.get('ids')} (ceiling {oracle.get('ids')})"
    own = summary.get("oracle_ids_on_tracks") or {}
    if own:
        line += f"; the true ids on its own boxes: {_fmt3(own.get('amota'))} (IDS {own.get('ids')})"
    return line


__all__ = [
    "MATCH_DISTANCE",
    "TRACKING_EVAL_CONFIG",
    "TRACKING_METRICS",
    "as_detections",
    "format_tracking_table",
    "oracle_ceiling",
    "oracle_id_results",
    "run_tracking_eval",
    "track_and_score",
    "describe_ceiling",
]
