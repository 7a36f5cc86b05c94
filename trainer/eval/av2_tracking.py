"""The Argoverse 2 tracking benchmark: av2's own tracking evaluation (``av2.evaluation.tracking.eval.evaluate``,
TrackEval's HOTA and CLEAR metrics) of tracks made by :mod:`trainer.tracking`.

:func:`track_and_score_av2` is the AV2 counterpart of :func:`trainer.eval.nusc_tracking.track_and_score`: it tracks
detections (nuScenes detection-result boxes, global = city frame) log by log and scores the tracks with
:func:`run_av2_tracking_eval`.

What av2 wants (read from ``av2/evaluation/tracking/eval.py`` and ``utils.py``, av2 0.3.6)
-----------------------------------------------------------------------------------------
``evaluate(track_predictions, labels, objective_metric, max_range_m, dataset_dir, out)`` takes two
``{seq_id: [frame]}`` dicts (``seq_id`` = the log id), each log's frames in time order, one frame per evaluated
sweep in *both* (``evaluate_tracking`` asserts the same ``(seq_id, timestamp_ns)`` set; ``annotate_frame_metadata``
pairs prediction and label frames by position, so both are built here in the same order with av2's own
``utils.group_frames``). A frame is a dict of arrays over its I boxes: ``translation_m (I, 3)``, ``size (I, 3)``
(``length_m, width_m, height_m``, as the annotation table), ``yaw (I,)``, ``velocity_m_per_s (I, 3)``, ``label (I,)``
(index into av2's 26 ``AV2_CATEGORIES``), ``name (I,)`` (the category; a name outside the 26 would make TrackEval's
``full_class_list.index`` fail, so such boxes are dropped and counted), ``track_id (I,)``, ``score (I,)``
(predictions only) and the scalars ``timestamp_ns``, ``seq_id``, ``ego_translation_m`` (a list, as av2's
``concatenate_array_values`` needs: an array would be concatenated over the classes).

**Frame: the sweep's ego frame, with** ``ego_translation_m = [0, 0, 0]``. av2's metrics compare boxes only
within one timestamp: ``TrackEvalDataset._calculate_similarities`` is ``1 - d / 2 m`` of the xy centre distance
``d`` (``zero_distance=2``), and identities are the ``track_id`` values, so any rigid frame per timestamp, city or
ego, gives the same numbers (tested). What fixes the frame are av2's two filters. ``filter_max_dist`` keeps the
boxes with ``|translation_m[:, :2] - ego_translation_m[:2]| <= max_range_m``: right in either frame when
``ego_translation_m`` is the ego's position there. ``filter_drivable_area`` (the ROI filter, with ``dataset_dir``)
builds ``translation_m - ego_translation_m`` with the box ``yaw`` and hands it to
``compute_objects_in_roi_mask(boxes, city_SE3_ego, avm)``, whose argument is ``cuboids_ego`` and which moves it to
the city with ``city_SE3_ego`` before the raster look-up: right only if that difference is the ego-frame box,
i.e. for ego-frame boxes with ``ego_translation_m = 0``. City-frame boxes would be rotated about the ego by its
heading there (on the real log of ``shared/realdata``, heading -32 deg, the ROI filter keeps 52 of the 79 GT boxes
in range handed city boxes, and handed ego boxes the 77 that av2's detection ROI mask keeps: tested). So
tracks (made in the city frame) are moved into each sweep's ego frame with the inverse of the keyframe's
``global_from_ego`` (AV2's ``city_SE3_egovehicle``), and the GT is ``annotations.feather`` as stored (ego frame
at its ``timestamp_ns``), exactly as :mod:`trainer.av2_results` writes and reads detections.

**GT** is each evaluated log's ``annotations.feather`` (:func:`trainer.av2_results.read_gt`: av2's
``read_feather``, the evaluated keyframes only), rows of av2's 26 categories with a LiDAR point
(``num_interior_pts > 0``, as av2's detection evaluation, which does not evaluate GT without a point), ``track_uuid`` as the track id, yaw read as av2 reads it (:func:`trainer.av2_results.quat_wxyz_to_yaw`).
av2 has no velocity annotation: zeros (velocity is not scored).

**Metrics** are av2's: for each objective (``HOTA``, then ``MOTA``), ``evaluate`` filters by range (and ROI),
tunes one score threshold per category (the best of 10, at recalls 0.1 .. 1 of the matched scores,
``_tune_score_thresholds``) and runs TrackEval at those thresholds. Per category it returns the objective at
the best threshold and its mean over the 10 (clipped at 0): for MOTA that mean is av2's AMOTA (its docstring
cites the AMOTA of arXiv 2008.08063). Here per category: ``HOTA`` (and ``DetA, AssA, LocA, DetRe, DetPr, AssRe,
AssPr``, means over TrackEval's 19 localisation thresholds) at the HOTA-tuned thresholds, ``HOTA_recall_mean``
(what av2's own CLI prints with its default objective), ``MOTA`` (and ``MOTP, IDSW, Frag, CLR_TP, CLR_FP,
CLR_FN, MT, ML``) at the MOTA-tuned thresholds, ``AMOTA``, and TrackEval's counts ``num_gt`` / ``num_gt_tracks``
(evaluated GT boxes and ids). Overall: the mean of each rate over the categories with evaluated GT (top level),
the same over all 26 (``over_all_categories``: absent categories count 0), counts summed, and TrackEval's own
``cls_comb_det_av`` pooling (``combined``). ``IDSW`` counts identity switches; ``AssA`` is HOTA's association;
``Frag`` also counts a GT track's own gaps (a box without a LiDAR point, or out of range, interrupts it).

av2 writes TrackEval's summary and detail files (and, with ``plots``, its curves) under
``trackeval_<objective>/TRACKER/`` of ``out_dir``: ``evaluate`` derives that folder from ``out`` by joining its
parts with dots (``/a/b/x.json`` -> ``.a.b``, relative to the working directory), so it is called with the working
directory set to ``out_dir`` (process-wide, restored after: not for concurrent threads) and a one-folder ``out``.
Its prints go to ``av2_tracking_log.txt`` unless ``verbose``. av2 takes no
worker count: ``_tune_score_thresholds`` opens a ``multiprocessing.Pool`` of ``min(10, cpu_count())`` processes
(2 on a 2-core machine; the default start method, ``fork`` on Linux), TrackEval itself runs serially.

Shapes: I boxes of a frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.geometry import YAW, H, L, W, X, Y, Z, invert_transform, quat_to_yaw, transform_boxes

log = logging.getLogger("bevlabels.evaluate")

#: av2's tracking range (its CLI's ``--max_range_m`` default), metres from the ego in the ground plane
MAX_RANGE_M = 50
#: the objectives ``evaluate`` is run with: HOTA (av2's default) and MOTA (for AMOTA)
OBJECTIVES = ("HOTA", "MOTA")
#: per category, from the HOTA run (means over TrackEval's localisation thresholds)
HOTA_FIELDS = ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr")
#: per category, from the MOTA run
CLEAR_RATES = ("MOTA", "MOTP")
CLEAR_COUNTS = ("IDSW", "Frag", "CLR_TP", "CLR_FP", "CLR_FN", "MT", "ML")
#: the rates averaged over categories (top level and ``over_all_categories``)
RATES = ("HOTA", "HOTA_recall_mean", "AMOTA", "MOTA", "MOTP", "DetA", "AssA", "LocA")
#: the counts summed over categories
COUNTS = ("IDSW", "Frag", "CLR_TP", "CLR_FP", "CLR_FN", "num_gt", "num_gt_tracks")
#: TrackEval's tracker name in av2's ``evaluate``
AV2_TRACKER = "TRACKER"
PREDICTIONS_FILE = "track_predictions_av2.pkl"
LABELS_FILE = "labels_av2.pkl"


def _av2_tracking():
    """av2's tracking evaluation modules (importing them imports TrackEval; av2's NumPy alias shim warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from av2.evaluation.tracking import constants, utils
        from av2.evaluation.tracking import eval as tracking_eval
    return tracking_eval, utils, constants


def av2_categories() -> tuple[str, ...]:
    """av2's 26 tracking categories (``av2.evaluation.tracking.constants.AV2_CATEGORIES``), in its order."""
    return tuple(_av2_tracking()[2].AV2_CATEGORIES)


# ---------------------------------------------------------------------------------------------
# Frames in av2's format


def _frame(
    log_id: str,
    timestamp_ns: int,
    boxes_ego: np.ndarray,
    names: Sequence[str],
    track_ids: Sequence[str],
    categories: Sequence[str],
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """One av2 tracking frame of ``(I, 9)`` ego-frame boxes (module docstring)."""
    boxes = np.asarray(boxes_ego, dtype=np.float64).reshape(-1, 9)
    n = len(boxes)
    velocity = np.zeros((n, 3))
    velocity[:, :2] = np.nan_to_num(boxes[:, 7:9])
    frame: dict[str, Any] = {
        "seq_id": log_id,
        "timestamp_ns": int(timestamp_ns),
        "ego_translation_m": [0.0, 0.0, 0.0],
        "translation_m": boxes[:, [X, Y, Z]],
        "size": boxes[:, [L, W, H]],
        "yaw": boxes[:, YAW],
        "velocity_m_per_s": velocity,
        "label": np.array([categories.index(c) for c in names], dtype=np.int64),
        "name": np.array(list(names), dtype=str) if n else np.zeros(0, dtype="<U1"),
        "track_id": np.array([str(t) for t in track_ids], dtype=str) if n else np.zeros(0, dtype="<U1"),
    }
    if scores is not None:
        frame["score"] = np.asarray(scores, dtype=np.float64).reshape(n)
    return frame


def prediction_frames(
    frames: Sequence[Any], results: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[list[dict[str, Any]], int]:
    """``(av2 frames, boxes dropped)`` of tracking ``results`` (``{token: [tracking boxes]}``, global frame) on
    ``frames`` (keyframes with ``token`` and ``global_from_ego``), in ``frames``' order.

    Each box is moved into its keyframe's ego frame (centre, heading and velocity, :func:`transform_boxes`);
    ``size`` (w, l, h) becomes av2's (l, w, h). Boxes whose ``tracking_name`` is not one of av2's 26 categories
    are dropped (counted). Every keyframe needs an entry (an empty list for no box).
    """
    from trainer.av2_results import parse_token

    categories = av2_categories()
    out, dropped = [], 0
    for f in frames:
        if f.token not in results:
            raise KeyError(f"no tracking result for keyframe {f.token} (every evaluated keyframe needs an entry)")
        boxes = [b for b in results[f.token] if b["tracking_name"] in categories]
        dropped += len(results[f.token]) - len(boxes)
        g = np.zeros((len(boxes), 9))
        for i, b in enumerate(boxes):
            w, l, h = (float(v) for v in b["size"])
            vel = list(b.get("velocity") or (0.0, 0.0))[:2]
            g[i] = [*b["translation"][:3], l, w, h, float(quat_to_yaw(np.asarray(b["rotation"], float))), *vel]
        ego = transform_boxes(invert_transform(np.asarray(f.global_from_ego, dtype=np.float64)), g)
        log_id, ts = parse_token(f.token)
        out.append(
            _frame(
                log_id,
                ts,
                ego,
                [b["tracking_name"] for b in boxes],
                [b["tracking_id"] for b in boxes],
                categories,
                scores=np.array([float(b["tracking_score"]) for b in boxes]),
            )
        )
    return out, dropped


def label_frames(dataset_dir: str | Path, tokens: Sequence[str]) -> list[dict[str, Any]]:
    """av2 frames of the GT of the keyframes ``tokens`` (``"<log_id>:<timestamp_ns>"``), in ``tokens``' order:
    their logs' ``annotations.feather`` rows of av2's 26 categories with a LiDAR point, ego frame, ``track_uuid``
    as the track id."""
    from trainer.av2_results import parse_token, quat_wxyz_to_yaw, read_gt

    categories = av2_categories()
    gts = read_gt(dataset_dir, tokens)
    gts = gts[gts["category"].isin(categories) & (gts["num_interior_pts"] > 0)]
    groups = {key: rows for key, rows in gts.groupby(["log_id", "timestamp_ns"], sort=False)}
    out = []
    for token in tokens:
        log_id, ts = parse_token(token)
        rows = groups.get((log_id, ts))
        n = 0 if rows is None else len(rows)
        boxes = np.zeros((n, 9))
        if n:
            boxes[:, [X, Y, Z, L, W, H]] = rows[["tx_m", "ty_m", "tz_m", "length_m", "width_m", "height_m"]].to_numpy(
                np.float64
            )
            boxes[:, YAW] = quat_wxyz_to_yaw(rows[["qw", "qx", "qy", "qz"]].to_numpy(np.float64))
        names = [] if rows is None else [str(c) for c in rows["category"]]
        ids = [] if rows is None else [str(u) for u in rows["track_uuid"]]
        out.append(_frame(log_id, ts, boxes, names, ids, categories))
    return out


# ---------------------------------------------------------------------------------------------
# Scoring


_TRACKEVAL_LOCK = threading.Lock()


@contextlib.contextmanager
def _trackeval_plots(on: bool) -> Iterator[None]:
    """While open, TrackEval's ``Evaluator`` draws its curves (``PLOT_CURVES``) only if ``on``.

    av2's ``evaluate_tracking`` builds its ``Evaluator`` from ``get_default_eval_config()`` (``PLOT_CURVES: True``):
    a PDF and a PNG per category and run, 9 of the 9.5 s of a run on a 4-sweep log. Off, that static method is
    wrapped to return the same defaults with ``PLOT_CURVES: False`` (restored on exit): the numbers, summary and
    detail files are TrackEval's, unchanged.
    """
    if on:
        yield
        return
    import trackeval

    cls = trackeval.Evaluator
    with _TRACKEVAL_LOCK:
        raw = cls.__dict__["get_default_eval_config"]
        defaults = cls.get_default_eval_config

        def without_plots() -> dict[str, Any]:
            return {**defaults(), "PLOT_CURVES": False}

        cls.get_default_eval_config = staticmethod(without_plots)
        try:
            yield
        finally:
            cls.get_default_eval_config = raw


@contextlib.contextmanager
def _inside(folder: Path, log_path: Path | None) -> Iterator[None]:
    """Work from ``folder`` (av2 writes TrackEval's files relative to the working directory), with stdout and
    stderr into ``log_path`` when given."""
    prev = os.getcwd()
    with contextlib.ExitStack() as stack:
        if log_path is not None:
            sink = stack.enter_context(open(log_path, "a"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(prev)


def _hota_mean(v) -> float:
    return float(np.mean(v))


def summarize(runs: Mapping[str, tuple], categories: Sequence[str]) -> dict[str, Any]:
    """av2's returns per objective (``{objective: (res, tuned_metric_values, mean_metric_values)}``) as a
    JSON-able summary (module docstring)."""

    def combined(objective: str) -> dict[str, Any]:
        return runs[objective][0]["TrackEvalDataset"][AV2_TRACKER]["COMBINED_SEQ"]

    hota, clear = combined("HOTA"), combined("MOTA")
    per_category: dict[str, dict[str, Any]] = {}
    for cat in categories:
        row: dict[str, Any] = {f: _hota_mean(hota[cat]["HOTA"][f]) for f in HOTA_FIELDS}
        row["HOTA"] = float(runs["HOTA"][1][cat])  # av2's tuned value (the same run, the same number)
        row["HOTA_recall_mean"] = float(runs["HOTA"][2][cat])
        row["MOTA"] = float(runs["MOTA"][1][cat])
        row["AMOTA"] = float(runs["MOTA"][2][cat])
        row["MOTP"] = float(clear[cat]["CLEAR"]["MOTP"])
        row.update({k: int(clear[cat]["CLEAR"][k]) for k in CLEAR_COUNTS})
        row["num_gt"] = int(hota[cat]["Count"]["GT_Dets"])
        row["num_gt_tracks"] = int(hota[cat]["Count"]["GT_IDs"])
        per_category[cat] = row
    present = [c for c in categories if per_category[c]["num_gt"] > 0]

    def mean(cats, key):
        return float(np.mean([per_category[c][key] for c in cats])) if cats else None

    pooled_hota, pooled_clear = hota["cls_comb_det_av"], clear["cls_comb_det_av"]
    return {
        **{k: mean(present, k) for k in RATES},
        **{k: int(sum(per_category[c][k] for c in categories)) for k in COUNTS},
        "per_category": per_category,
        "gt_categories": present,
        "over_all_categories": {k: mean(list(categories), k) for k in RATES},
        "combined": {
            **{f: _hota_mean(pooled_hota["HOTA"][f]) for f in ("HOTA", "DetA", "AssA")},
            **{f: float(pooled_clear["CLEAR"][f]) for f in CLEAR_RATES},
            "IDSW": int(pooled_clear["CLEAR"]["IDSW"]),
        },
    }


def run_av2_tracking_eval(
    adapter,
    eval_set: str,
    frames: Sequence[Any],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    out_dir: str | Path,
    max_range_m: int = MAX_RANGE_M,
    roi: bool | None = None,
    verbose: bool = False,
    plots: bool = False,
) -> dict[str, Any]:
    """av2's tracking evaluation of ``results`` on ``frames``: its summary (module docstring), also written as
    ``out_dir/metrics_summary.json``.

    ``results``: a tracking result dict's ``results`` (``{token: [tracking boxes]}``, global = city frame, every
    keyframe of ``frames`` present, :func:`trainer.tracking.track_scenes`). ``frames``: the evaluated keyframes
    (``token``, ``scene``, ``global_from_ego``, ``lidar``), whole logs of ``adapter.scenes(eval_set)`` (the
    coverage rule and ``evaluated`` record of :func:`trainer.eval.coverage.coverage_of`). ``roi``: av2's ROI
    filter (its ``dataset_dir`` argument): ``None`` turns it on when every evaluated log has its map, ``True``
    insists, ``False`` turns it off (as :func:`trainer.av2_results.run_av2_detection_eval`). ``max_range_m``: av2's
    range filter. ``plots``: TrackEval's curves (:func:`_trackeval_plots`; off: 0.5 s a run instead of 9.5 s on a
    4-sweep log). Writes under ``out_dir``: the frames av2 scored (``track_predictions_av2.pkl``,
    ``labels_av2.pkl``: pickles of ``{log_id: [frame]}``, av2's CLI input), TrackEval's files, av2's printout
    (``av2_tracking_log.txt``) and ``metrics_summary.json``.
    """
    from trainer.av2_results import dataset_dir_of, roi_decision
    from trainer.eval.coverage import coverage_of, describe_coverage

    tracking_eval, utils, _ = _av2_tracking()
    categories = av2_categories()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    frames = list(frames)
    tokens = [f.token for f in frames]
    unknown = sorted(set(results) - set(tokens))
    if unknown:
        raise KeyError(
            f"tracking results for {len(unknown)} samples not among the evaluated keyframes (e.g. {unknown[:3]})"
        )
    per_scene = {scene: adapter.keyframe_tokens(scene) for scene in adapter.scenes(eval_set)}
    evaluated = coverage_of(per_scene, eval_set, tokens)
    if evaluated["partial"]:
        log.warning("AV2 tracking: evaluating part of the split: %s", describe_coverage(evaluated))

    dataset_dir = dataset_dir_of(frames).resolve()  # av2 reads it from inside out_dir
    log_ids = sorted({f.scene for f in frames})
    roi, roi_reason = roi_decision(dataset_dir, log_ids, roi, "av2 tracking evaluation")

    preds, dropped = prediction_frames(frames, results)
    if dropped:
        log.warning("AV2 tracking: %d tracked boxes of classes outside av2's 26 categories not scored", dropped)
    predictions = utils.group_frames(preds)
    labels = utils.group_frames(label_frames(dataset_dir, tokens))
    for name, data in ((PREDICTIONS_FILE, predictions), (LABELS_FILE, labels)):
        with open(out_dir / name, "wb") as f:
            pickle.dump(data, f)

    log_path = None if verbose else out_dir / "av2_tracking_log.txt"
    if log_path is not None:
        log_path.write_text("")
    runs = {}
    with _inside(out_dir, log_path), _trackeval_plots(plots):
        for objective in OBJECTIVES:
            # av2 filters copies of the frames but writes ego_translation_m into the prediction frames: fresh
            # copies per run keep the two runs independent.
            runs[objective] = tracking_eval.evaluate(
                _copy(predictions),
                _copy(labels),
                objective_metric=objective,
                max_range_m=int(max_range_m),
                dataset_dir=str(dataset_dir) if roi else None,
                out=f"trackeval_{objective}/summary.json",
            )
    summary = summarize(runs, categories)
    summary["dropped_predictions"] = dropped
    summary["roi"] = {"on": bool(roi), "reason": roi_reason}
    summary["config"] = {
        "categories": len(categories),
        "max_range_m": int(max_range_m),
        "objectives": list(OBJECTIVES),
        "match": "xy centre distance, TrackEval similarity 1 - d / 2 m (CLEAR: similarity >= 0.5, d <= 1 m)",
        "frame": "ego frame of each sweep, ego_translation_m = 0",
        "dataset_dir": str(dataset_dir),
        "plots": bool(plots),
    }
    summary["meta"] = {"eval_set": eval_set, "evaluation": "av2.evaluation.tracking.eval.evaluate"}
    summary["evaluated"] = evaluated
    with open(out_dir / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _copy(sequences: Mapping[str, list]) -> dict[str, list]:
    return {seq: [dict(frame) for frame in frames] for seq, frames in sequences.items()}


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def format_av2_tracking_table(summary: Mapping[str, Any]) -> str:
    """av2's tracking numbers as text: the means over the categories with GT, then one row per such category."""
    lines = [f"tracking (av2.evaluation.tracking, {summary.get('tracker', 'tracks')})"]
    lines += [f"  {k:<17}{_fmt(summary.get(k))}" for k in RATES]
    lines += [f"  {k:<17}{summary.get(k)}" for k in COUNTS]
    if "roi" in summary:
        lines.append(f"  ROI filter {summary['roi']['reason']}")
    lines.append(f"  {'category':<33}{'HOTA':>7}{'AssA':>7}{'AMOTA':>7}{'MOTA':>7}{'IDSW':>6}{'GT':>6}")
    for cat in summary.get("gt_categories", []):
        r = summary["per_category"][cat]
        lines.append(
            f"  {cat:<33}{_fmt(r['HOTA']):>7}{_fmt(r['AssA']):>7}{_fmt(r['AMOTA']):>7}{_fmt(r['MOTA']):>7}"
            f"{r['IDSW']:>6}{r['num_gt']:>6}"
        )
    oracle = summary.get("oracle_ids") or {}
    if oracle:
        a, c = summary.get("AMOTA"), oracle.get("AMOTA")
        share = f" ({100 * a / c:.0f}%)" if isinstance(a, float) and isinstance(c, float) and c > 0 else ""
        lines.append(
            f"tracker {summary.get('tracker', '?')}: AMOTA {_fmt(a)} of the oracle-id ceiling {_fmt(c)}{share}, "
            f"HOTA {_fmt(summary.get('HOTA'))} (ceiling {_fmt(oracle.get('HOTA'))}), IDSW {summary.get('IDSW')} "
            f"(ceiling {oracle.get('IDSW')})"
        )
    return "\n".join(lines)


def track_and_score_av2(
    adapter,
    frames: Sequence[Any],
    detections: Mapping[str, list],
    tracker: str | Mapping[str, Any],
    out_dir: str | Path,
    eval_set: str,
    meta: Mapping[str, bool] | None = None,
    max_range_m: int = MAX_RANGE_M,
    roi: bool | None = None,
    verbose: bool = False,
    pictures: bool = True,
    plots: bool = False,
    ceiling: bool = True,
) -> dict[str, Any]:
    """Track ``detections`` (``{sample_token: [detection result boxes]}``, global = city frame, AV2 category
    names) log by log with ``tracker`` (a name of ``conf/tracker`` or its config) and score the tracks with av2's
    tracking evaluation (:func:`run_av2_tracking_eval`).

    ``frames``: the keyframes tracked (``token``, ``scene`` = log id, ``timestamp``, ``global_from_ego``,
    ``boxes``; grouped by log in their order). Every class is tracked (``track_scenes(..., classes=None)``); av2
    scores its 26 categories. Writes under ``out_dir``: ``results_av2_tracking.json`` (the tracks in the nuScenes
    tracking result format, global frame), :func:`run_av2_tracking_eval`'s files, ``metrics_summary.json`` and, with
    ``pictures``, a PNG per log (``png/<log_id>.png``: tracks beside the GT tracks of av2's categories, titled
    with the tracker, HOTA and AMOTA). ``max_range_m``, ``roi``, ``verbose``, ``plots``: :func:`run_av2_tracking_eval`'s.
    Returns the summary with ``tracker`` (its name), ``tracker_config`` and, with ``ceiling``, ``oracle_ids``: av2's
    summary of the same detections given their true track ids (:func:`oracle_id_results_av2`), under ``oracle_ids/``.
    """
    from trainer.nusc_results import write_results
    from trainer.tracking import build_tracker, render_scenes, scenes_of, track_scenes, tracker_config

    cfg = tracker_config(tracker)
    trk, input_nms = build_tracker(cfg)
    scenes = scenes_of(frames)
    out_dir = Path(out_dir)
    results = track_scenes(scenes, detections, trk, input_nms=input_nms, classes=None, meta=meta)
    write_results(out_dir / "results_av2_tracking.json", results)
    summary = run_av2_tracking_eval(
        adapter,
        eval_set,
        frames,
        results["results"],
        out_dir,
        max_range_m=max_range_m,
        roi=roi,
        verbose=verbose,
        plots=plots,
    )
    summary["tracker"] = trk.name
    summary["tracker_config"] = cfg
    oracle = {}
    if ceiling:
        oracle_results = oracle_id_results_av2(frames, detections)
        write_results(
            out_dir / "oracle_ids" / "results_av2_tracking.json", {"meta": results["meta"], "results": oracle_results}
        )
        oracle = run_av2_tracking_eval(
            adapter, eval_set, frames, oracle_results, out_dir / "oracle_ids", max_range_m=max_range_m, roi=roi
        )
    summary["oracle_ids"] = oracle
    with open(out_dir / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    if pictures:
        note = f"HOTA {_fmt(summary.get('HOTA'))}, AMOTA {_fmt(summary.get('AMOTA'))} (av2)" + (
            f", oracle-id ceiling AMOTA {_fmt(oracle.get('AMOTA'))}" if oracle else ""
        )
        render_scenes(
            scenes, results["results"], out_dir / "png", tracker=trk.name, note=note, classes=av2_categories()
        )
    return summary


def oracle_id_results_av2(
    frames: Sequence[Any], detections: Mapping[str, list], max_distance: float = 2.0
) -> dict[str, list]:
    """The ceiling of association on ``detections`` (``{token: [detection result boxes]}``, city frame): each box,
    best score first, takes the track id (``track_uuid``) of the nearest GT box of its category not yet taken within
    ``max_distance`` metres in the ground plane (av2's tracking similarity is 0 from 2 m on), else an id of its own.
    The GT is what av2 scores (:func:`label_frames`). A tracking ``results`` dict, city frame."""
    from bevlabels.geometry import transform_points
    from trainer.av2_results import dataset_dir_of

    frames = list(frames)
    labels = label_frames(dataset_dir_of(frames).resolve(), [f.token for f in frames])
    out: dict[str, list] = {}
    fresh = 0
    for f, gt in zip(frames, labels):
        centres = transform_points(np.asarray(f.global_from_ego, np.float64), gt["translation_m"])[:, :2]
        taken = np.zeros(len(centres), bool)
        boxes = []
        for d in sorted(detections.get(f.token, []), key=lambda d: -float(d["detection_score"])):
            dist = np.linalg.norm(centres - np.asarray(d["translation"][:2], np.float64), axis=1)
            ok = (gt["name"] == d["detection_name"]) & ~taken & (dist <= max_distance)
            if ok.any():
                j = int(np.flatnonzero(ok)[np.argmin(dist[ok])])
                taken[j] = True
                track_id = str(gt["track_id"][j])
            else:
                track_id, fresh = f"unmatched-{fresh}", fresh + 1
            boxes.append(
                {
                    "sample_token": f.token,
                    "translation": d["translation"],
                    "size": d["size"],
                    "rotation": d["rotation"],
                    "velocity": d.get("velocity", [0.0, 0.0]),
                    "tracking_id": track_id,
                    "tracking_name": d["detection_name"],
                    "tracking_score": float(d["detection_score"]),
                }
            )
        out[f.token] = boxes
    return out


__all__ = [
    "MAX_RANGE_M",
    "oracle_id_results_av2",
    "OBJECTIVES",
    "av2_categories",
    "format_av2_tracking_table",
    "label_frames",
    "prediction_frames",
    "run_av2_tracking_eval",
    "summarize",
    "track_and_score_av2",
]
