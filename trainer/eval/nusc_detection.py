"""The nuScenes detection benchmark: the devkit's ``DetectionEval`` (``detection_cvpr_2019``) on a checkpoint's
predictions, for the nuScenes-format datasets (nuScenes and the synthetic world). :func:`evaluate_nuscenes` is what
``python -m trainer.evaluate`` runs on them.

The model predicts every keyframe of the split's scenes its config selects (no augmentation,
:func:`trainer.eval.predict.predict`); :mod:`trainer.nusc_results` writes the detections as a nuScenes result JSON
(ego -> global with each keyframe's pose, every predicted keyframe present); the devkit's ``DetectionEval``
(``eval_set`` = the dataset's name of the split, e.g. ``mini_val`` for the synthetic world) scores it. A table
(NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE and per-class AP and TP errors) is printed, and the evaluation folder
receives ``results_nusc.json``, the devkit's ``metrics_summary.json`` and ``metrics_details.json``, and
``extra_metrics.json`` when the model has an ``extra_eval`` hook.

Tracking (``tracking=true``, the default). The same predictions are tracked scene by scene by the
tracker of ``tracker=kalman|greedy|bank`` (``conf/tracker``; :mod:`trainer.tracking`: a Kalman filter that
learns velocity from the track's history, CenterPoint's greedy association, or the model's own instance-bank
ids), written in the nuScenes tracking format and scored by the devkit's ``TrackingEval`` (``tracking_nips_2019``,
:mod:`trainer.eval.nusc_tracking`): AMOTA, AMOTP, MOTA, IDS, FRAG overall and per class in
``tracking/metrics_summary.json``, the overall ones under ``tracking`` in ``metrics_summary.json`` and
in the printout, and a PNG per scene (``tracking/png/<scene>.png``: predicted tracks beside the GT's,
seen from above). ``tracking=false`` skips it.

Part of a split. The devkit scores exactly the keyframes predicted: :func:`run_detection_eval` finds the split's
scenes the results cover (:func:`trainer.eval.coverage.split_coverage`), refuses results that miss a keyframe of
a scene they cover or hold samples outside the split, and restricts the devkit's GT (its own ``load_gt``, then its
own ``add_center_dist``/``filter_eval_boxes`` and metrics) to those scenes' samples. Which scenes and how
many keyframes were scored, against the whole split, is printed and written to ``metrics_summary.json`` under
``evaluated``::

    {"eval_set": "mini_val", "partial": true, "scenes": ["scene-0103"], "keyframes": 3,
     "split_scenes": 2, "split_keyframes": 6}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from trainer.eval.coverage import describe_coverage, gt_restricted_to, split_coverage
from trainer.eval.decoding import describe_decoding
from trainer.eval.predict import evaluation_result, predict, ran_of, run_extra_eval
from trainer.lit_base import LoadedCheckpoint

log = logging.getLogger("bevlabels.evaluate")

#: the devkit's detection configuration
EVAL_CONFIG = "detection_cvpr_2019"
#: the devkit's TP errors' usual names, in the order of its ``tp_errors``
TP_SHORT = ("ATE", "ASE", "AOE", "AVE", "AAE")


def nuscenes_of(datamodule):
    """The devkit ``NuScenes`` object behind the data module's adapter; a clear error for other datasets."""
    nusc = getattr(datamodule.adapter, "nusc", None)
    if nusc is None:
        raise NotImplementedError(
            f"the nuScenes devkit's evaluation needs a nuScenes-format dataset; the dataset adapter "
            f"{datamodule.adapter} is not one"
        )
    return nusc


def no_detections_eval(eval_set: str) -> tuple[dict, dict]:
    """What ``DetectionEval`` gives a result file without a single box: AP 0, TP errors 1 (NaN where it skips them).

    The devkit cannot score such a file (its ``filter_eval_boxes`` looks for a first box and raises
    "Invalid box type: None"); a barely trained model can produce one. This is the devkit's own
    metric step (``DetectionEval.evaluate``) on ``DetectionMetricData.no_predictions()`` for every class.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.algo import calc_ap, calc_tp
    from nuscenes.eval.detection.constants import TP_METRICS
    from nuscenes.eval.detection.data_classes import DetectionMetricData, DetectionMetricDataList, DetectionMetrics

    cfg = config_factory(EVAL_CONFIG)
    md_list, metrics = DetectionMetricDataList(), DetectionMetrics(cfg)
    for class_name in cfg.class_names:
        for dist_th in cfg.dist_ths:
            md_list.set(class_name, dist_th, DetectionMetricData.no_predictions())
            metrics.add_label_ap(
                class_name, dist_th, calc_ap(md_list[(class_name, dist_th)], cfg.min_recall, cfg.min_precision)
            )
        for metric_name in TP_METRICS:
            skipped = (class_name == "traffic_cone" and metric_name in ("attr_err", "vel_err", "orient_err")) or (
                class_name == "barrier" and metric_name in ("attr_err", "vel_err")
            )
            tp = (
                float("nan") if skipped else calc_tp(md_list[(class_name, cfg.dist_th_tp)], cfg.min_recall, metric_name)
            )
            metrics.add_label_tp(class_name, metric_name, tp)
    metrics.add_runtime(0.0)
    summary = metrics.serialize()
    summary["meta"] = {"eval_set": eval_set, "no_detections": True}
    return summary, md_list.serialize()


def run_detection_eval(nusc, result_path: Path, eval_set: str, out_dir: Path, verbose: bool = False):
    """The devkit's ``DetectionEval`` on a result file: ``(metrics summary dict, metric details dict)``.

    The results may cover part of ``eval_set``, scene by scene (:func:`trainer.eval.coverage.split_coverage`; a
    scene with a keyframe missing is refused): the devkit then scores the GT of those scenes only. The summary's
    ``evaluated`` says which scenes and how many keyframes, against the whole split.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    with open(result_path) as f:
        results = json.load(f)["results"]
    evaluated = split_coverage(nusc, eval_set, results)
    if evaluated["partial"]:
        log.warning("evaluating part of the split: %s", describe_coverage(evaluated))
    if not any(results.values()):
        log.warning("no detection in any sample of %s: every AP is 0 and every TP error 1", eval_set)
        summary, details = no_detections_eval(eval_set)
        return {**summary, "evaluated": evaluated}, details
    with gt_restricted_to(results) if evaluated["partial"] else nullcontext():
        evaluator = DetectionEval(
            nusc,
            config=config_factory(EVAL_CONFIG),
            result_path=str(result_path),
            eval_set=eval_set,
            output_dir=str(out_dir),
            verbose=verbose,
        )
    assert set(evaluator.gt_boxes.sample_tokens) == set(results), "the devkit's GT is not the predicted samples"
    metrics, metric_data = evaluator.evaluate()
    summary = metrics.serialize()
    summary["meta"] = dict(evaluator.meta)
    summary["evaluated"] = evaluated
    return summary, metric_data.serialize()


def format_table(summary: dict) -> str:
    """The devkit's numbers as a text table: the headline metrics, then AP and TP errors per class."""
    tp_names = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
    lines = [
        f"NDS   {summary['nd_score']:.4f}",
        f"mAP   {summary['mean_ap']:.4f}",
        *(f"m{short:<5}{summary['tp_errors'][n]:.4f}" for short, n in zip(TP_SHORT, tp_names)),
        "",
        f"{'class':<22}{'AP':>7}{'ATE':>7}{'ASE':>7}{'AOE':>7}{'AVE':>7}{'AAE':>7}",
    ]
    for cls, ap in summary["mean_dist_aps"].items():
        errs = summary["label_tp_errors"][cls]
        lines.append(f"{cls:<22}{ap:7.3f}" + "".join(f"{errs[n]:7.3f}" for n in tp_names))
    return "\n".join(lines)


def tracking_text(summary: Mapping[str, Any]) -> str:
    from trainer.eval.nusc_tracking import describe_ceiling, format_tracking_table

    return f"{format_tracking_table(summary)}\n{describe_ceiling(summary)}"


def evaluate_nuscenes(
    loaded: LoadedCheckpoint,
    datamodule,
    split: str,
    out_dir: Path,
    device: str = "auto",
    verbose: bool = False,
    tracking: bool = True,
    t0: float | None = None,
    tracker: str | Mapping[str, Any] = "kalman",
    decoding: dict[str, Any] | None = None,
    precision: str | None = "auto",
) -> dict[str, Any]:
    """:func:`trainer.evaluate.evaluate` on a nuScenes-format dataset: ``DetectionEval`` (and ``TrackingEval``) of the
    devkit."""
    t0 = time.perf_counter() if t0 is None else t0
    model = loaded.model
    nusc = nuscenes_of(datamodule)
    eval_set = datamodule.split_name(split)
    out_dir.mkdir(parents=True, exist_ok=True)

    from trainer.nusc_results import make_results, write_results

    frames = datamodule.frames(split)
    ran = ran_of(device, precision)
    predictions = predict(model, datamodule, split, device, precision, ran=ran)
    results = make_results(
        predictions,
        poses={f.token: f.global_from_ego for f in frames},
        class_names=model.class_names,
        use_camera=model.use_camera,
        use_lidar=model.use_lidar,
        all_tokens=[f.token for f in frames],
    )
    result_path = write_results(out_dir / "results_nusc.json", results)
    summary, details = run_detection_eval(nusc, result_path, eval_set, out_dir, verbose=verbose)
    if decoding is not None:
        summary["decoding"] = decoding
    with open(out_dir / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    with open(out_dir / "metrics_details.json", "w") as f:
        json.dump(details, f, indent=2)

    extra = run_extra_eval(model, predictions, datamodule, out_dir)

    track_summary = None
    if tracking:
        from trainer.eval.nusc_tracking import TRACKING_METRICS, track_and_score
        from trainer.tracking import global_detections

        detections = global_detections(frames, predictions, model.class_names)
        track_summary = track_and_score(
            nusc, frames, detections, tracker, out_dir / "tracking", eval_set, results["meta"], verbose=verbose
        )
        summary["tracking"] = {k: track_summary.get(k) for k in (*TRACKING_METRICS, "evaluated", "tracker")}
        for key in ("oracle_ids", "oracle_ids_on_tracks"):
            summary["tracking"][key] = {k: (track_summary.get(key) or {}).get(k) for k in TRACKING_METRICS}
        with open(out_dir / "metrics_summary.json", "w") as f:
            json.dump(summary, f, indent=2)

    n_boxes = sum(len(v) for v in results["results"].values())
    evaluated = summary["evaluated"]
    print(
        f"\n{loaded.path} (epoch {loaded.epoch}, step {loaded.global_step}) on {eval_set}: "
        f"{len(frames)} keyframes, {n_boxes} boxes, {time.perf_counter() - t0:.1f} s\n"
        f"predicted on: {ran['ran']}\n"
        f"evaluated: {describe_coverage(evaluated)}\n"
        + (f"decoding: {describe_decoding(decoding)}\n" if decoding is not None else "")
        + format_table(summary)
        + "".join(f"\n{k:<22}{v}" for k, v in extra.items())
        + (f"\n{tracking_text(track_summary)}" if track_summary else "")
        + f"\nsummary: {out_dir / 'metrics_summary.json'}",
        flush=True,
    )
    return evaluation_result(summary, extra, out_dir, eval_set, len(frames), ran)
