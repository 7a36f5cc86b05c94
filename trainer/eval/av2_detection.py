"""The Argoverse 2 detection benchmark: av2's own detection evaluation of a checkpoint's predictions.
:func:`evaluate_av2` is what ``python -m trainer.evaluate`` runs on AV2 datasets.

:mod:`trainer.av2_results` writes the detections as av2's detection table (``log_id, timestamp_ns, category, tx_m,
ty_m, tz_m, length_m, width_m, height_m, qw, qx, qy, qz, score``) in the sweep's **ego frame**, which is what av2
scores (its city poses only place cuboids in the map for the region-of-interest filter), reads the GT from the
evaluated logs' ``annotations.feather`` (the predicted keyframes only: the same whole-log coverage rule and
``evaluated`` record as the nuScenes benchmark's, logs being the scenes, :func:`trainer.eval.coverage.coverage_of`)
and scores with ``av2.evaluation.detection.eval.evaluate`` and a ``DetectionCfg`` of av2's defaults (its 26
categories, ``dataset_dir`` = the folder of the logs). The ROI filter (``eval_only_roi_instances``) is on when
every evaluated log has its ``map/``, else off (``roi=true|false`` forces it); which, and why, is printed and in
the summary's ``roi``. The evaluation folder receives ``detections_av2.feather`` and ``metrics_summary.json``
(av2's ``AVERAGE_METRICS``: ``AP CDS ATE ASE AOE`` over all 26 categories; ``mean_over_gt_categories``: the same
over the categories with evaluated GT; ``per_category``; ``roi``; ``evaluated``). Tracking (``tracking=true``):
the same predictions tracked log by log by ``tracker`` and scored by ``av2.evaluation.tracking``
(:mod:`trainer.eval.av2_tracking`), under ``tracking/``. av2 matches in a ``spawn`` process pool of ``n_jobs``
(default: up to 8, at most the CPUs).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.eval.coverage import coverage_of, describe_coverage
from trainer.eval.predict import evaluation_result, predict, ran_of, run_extra_eval
from trainer.lit_base import LoadedCheckpoint

log = logging.getLogger("bevlabels.evaluate")


def run_av2_eval(
    adapter,
    eval_set: str,
    frames: Sequence[Any],
    predictions: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    roi: bool | None = None,
    n_jobs: int | None = None,
):
    """av2's detection evaluation of ``predictions`` on ``frames`` (keyframes of ``eval_set``): ``(summary, detections)``.

    Like the nuScenes path: ``frames`` are the keyframes predicted (a keyframe without a prediction
    has no detections; a prediction outside ``frames`` is an error). They may cover part of the split,
    log by log (:func:`trainer.eval.coverage.coverage_of` over ``adapter.scenes(eval_set)`` and their
    keyframes; a log with a keyframe missing is refused); av2 then scores the GT of exactly those keyframes
    (:func:`trainer.av2_results.read_gt`). ``detections`` is av2's detection table (ego frame, see
    :mod:`trainer.av2_results`); ``summary`` is :func:`trainer.av2_results.run_av2_detection_eval`'s
    with ``evaluated`` and ``meta`` added.
    """
    from trainer import av2_results

    predictions = list(predictions)
    tokens = [f.token for f in frames]
    unknown = sorted({str(p["sample_token"]) for p in predictions} - set(tokens))
    if unknown:
        raise KeyError(f"predictions for {len(unknown)} samples not among the evaluated keyframes (e.g. {unknown[:3]})")
    per_scene = {scene: adapter.keyframe_tokens(scene) for scene in adapter.scenes(eval_set)}
    evaluated = coverage_of(per_scene, eval_set, tokens)
    if evaluated["partial"]:
        log.warning("evaluating part of the split: %s", describe_coverage(evaluated))
    detections = av2_results.make_detections(predictions, class_names)
    dataset_dir = av2_results.dataset_dir_of(frames)
    gts = av2_results.read_gt(dataset_dir, tokens)
    summary = av2_results.run_av2_detection_eval(detections, gts, dataset_dir, roi=roi, n_jobs=n_jobs)
    summary["meta"] = {"eval_set": eval_set, "evaluation": "av2.evaluation.detection.eval.evaluate"}
    summary["evaluated"] = evaluated
    return summary, detections


def evaluate_av2(
    loaded: LoadedCheckpoint,
    datamodule,
    split: str,
    out_dir: Path,
    device: str = "auto",
    tracking: bool = True,
    roi: bool | None = None,
    n_jobs: int | None = None,
    t0: float | None = None,
    decoding: dict[str, Any] | None = None,
    precision: str | None = "auto",
    tracker: str | Mapping[str, Any] = "kalman",
) -> dict[str, Any]:
    """:func:`trainer.evaluate.evaluate` on Argoverse 2: av2's detection evaluation (:func:`run_av2_eval`) and, with
    ``tracking``, av2's tracking evaluation of the ``tracker``'s tracks (:mod:`trainer.eval.av2_tracking`).

    Writes ``detections_av2.feather`` (av2's detection table: ego-frame cuboids, as av2 scores them)
    and ``metrics_summary.json`` (av2's averages over its 26 categories ``AP CDS ATE ASE AOE``, the
    same over the categories with GT, ``per_category``, ``roi``, ``evaluated``), ``extra_metrics.json``
    when the model has an ``extra_eval`` hook, and prints a table. Tracking writes ``tracking/`` (the tracks, av2's
    tracking metrics: HOTA, AMOTA, MOTA, IDSW per category and their means) and its overall numbers under
    ``tracking`` in the summary.
    """
    from trainer.av2_results import format_av2_table, write_detections
    from trainer.eval.av2_tracking import format_av2_tracking_table

    t0 = time.perf_counter() if t0 is None else t0
    model = loaded.model
    eval_set = datamodule.split_name(split)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = datamodule.frames(split)
    ran = ran_of(device, precision)
    predictions = predict(model, datamodule, split, device, precision, ran=ran)
    summary, detections = run_av2_eval(
        datamodule.adapter, eval_set, frames, predictions, model.class_names, roi=roi, n_jobs=n_jobs
    )
    det_path = write_detections(out_dir / "detections_av2.feather", detections)
    extra = run_extra_eval(model, predictions, datamodule, out_dir)
    track_summary = None
    if tracking:
        from trainer.eval.av2_tracking import track_and_score_av2
        from trainer.tracking import global_detections

        detections_g = global_detections(frames, predictions, model.class_names)
        track_summary = track_and_score_av2(
            datamodule.adapter, frames, detections_g, tracker, out_dir / "tracking", eval_set, roi=roi
        )
        summary["tracking"] = {
            k: track_summary.get(k)
            for k in ("HOTA", "AMOTA", "MOTA", "IDSW", "tracker", "evaluated")
            if k in track_summary
        }
    if decoding is not None:
        summary["decoding"] = decoding
    with open(out_dir / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2)

    print(
        f"\n{loaded.path} (epoch {loaded.epoch}, step {loaded.global_step}) on AV2 {eval_set}: "
        f"{len(frames)} keyframes, {len(detections)} boxes, {time.perf_counter() - t0:.1f} s\n"
        f"predicted on: {ran['ran']}\n"
        f"evaluated: {describe_coverage(summary['evaluated'])}\n"
        + format_av2_table(summary)
        + "".join(f"\n{k:<22}{v}" for k, v in extra.items())
        + (f"\n{format_av2_tracking_table(track_summary)}" if track_summary is not None else "")
        + f"\ndetections: {det_path}\nsummary: {out_dir / 'metrics_summary.json'}",
        flush=True,
    )
    return evaluation_result(summary, extra, out_dir, eval_set, len(frames), ran)
