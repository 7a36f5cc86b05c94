"""Score a checkpoint with its dataset's official evaluation: ``python -m trainer.evaluate ckpt=... [split=val] [out=...]``.

    python -m trainer.evaluate ckpt=outputs/teacher_centerpoint/<run>/checkpoints/last.ckpt
    python -m trainer.evaluate ckpt=... split=train out=/tmp/eval num_workers=0 device=cpu   # default: device=auto
    python -m trainer.evaluate ckpt=... limit_scenes=0     # the whole split, whatever data.limit_scenes was
    python -m trainer.evaluate ckpt=<an AV2 run> roi=false n_jobs=2     # AV2: av2's evaluation, options

Which evaluation: the one the dataset adapter declares (``DriveDataset.evaluation``, see
:func:`evaluation_of`): ``"nuscenes"`` (nuScenes and the synthetic world) is the nuScenes devkit,
described first below; ``"av2"`` (Argoverse 2) is av2's own detection evaluation, described at the end.

The data module and the model are rebuilt from the checkpoint's stored config alone
(:func:`trainer.lit_base.load_checkpoint`; a checkpoint whose weights do not fit its config is
refused, naming the missing and unexpected keys). The model predicts every keyframe of the split's
scenes the config selects (all of them, or the first ``data.limit_scenes``: see below; no
augmentation); :mod:`trainer.nusc_results` writes the detections as a nuScenes result JSON
(ego -> global with each keyframe's pose, every predicted keyframe present); the devkit's
``DetectionEval`` (``detection_cvpr_2019``, ``eval_set`` = the dataset's name of the split, e.g.
``mini_val`` for the synthetic world) scores it. A table (NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE
and per-class AP and TP errors) is printed, and the evaluation folder, next to the checkpoint by
default (``<ckpt dir>/eval-<ckpt name>-<split>/``), receives ``results_nusc.json``, the devkit's
``metrics_summary.json`` and ``metrics_details.json``, and ``extra_metrics.json`` when the model
has an ``extra_eval`` hook.

Tracking (``tracking=true``, the default). The same predictions are tracked scene by scene by the
tracker of ``tracker=kalman|greedy|bank`` (``conf/tracker``; :mod:`trainer.tracking`: a Kalman filter that
learns velocity from the track's history, CenterPoint's greedy association, or the model's own instance-bank
ids), written in the nuScenes tracking format and scored by the devkit's
``TrackingEval`` (``tracking_nips_2019``): AMOTA, AMOTP, MOTA, IDS, FRAG overall and per class in
``tracking/metrics_summary.json``, the overall ones under ``tracking`` in ``metrics_summary.json`` and
in the printout, and a PNG per scene (``tracking/png/<scene>.png``: predicted tracks beside the GT's,
seen from above). ``tracking=false`` skips it.

Part of a split. The scenes predicted are those of the checkpoint's data config: a run trained with
``data.limit_scenes=n`` is evaluated on the first ``n`` scenes of the split (``limit_scenes=0``
evaluates the whole split; ``limit_scenes=k`` the first ``k``). The devkit scores exactly the keyframes
predicted: :func:`run_detection_eval` finds the split's scenes the results cover
(:func:`split_coverage`), refuses results that miss a keyframe of a scene they cover or hold samples
outside the split, and restricts the devkit's GT (its own ``load_gt``, then its own
``add_center_dist``/``filter_eval_boxes`` and metrics) to those scenes' samples. Which scenes and how
many keyframes were scored, against the whole split, is printed and written to
``metrics_summary.json`` under ``evaluated``::

    {"eval_set": "mini_val", "partial": true, "scenes": ["scene-0103"], "keyframes": 3,
     "split_scenes": 2, "split_keyframes": 6}

Argoverse 2 (:func:`evaluate_av2`). :mod:`trainer.av2_results` writes the detections as av2's
detection table (``log_id, timestamp_ns, category, tx_m, ty_m, tz_m, length_m, width_m, height_m,
qw, qx, qy, qz, score``) in the sweep's **ego frame**, which is what av2 scores (its city poses only
place cuboids in the map for the region-of-interest filter), reads the GT from the evaluated logs'
``annotations.feather`` (the predicted keyframes only: the same whole-log coverage rule and
``evaluated`` record as above, logs being the scenes) and scores with
``av2.evaluation.detection.eval.evaluate`` and a ``DetectionCfg`` of av2's defaults (its 26
categories, ``dataset_dir`` = the folder of the logs). The ROI filter (``eval_only_roi_instances``)
is on when every evaluated log has its ``map/``, else off (``roi=true|false`` forces it); which,
and why, is printed and in the summary's ``roi``. The evaluation folder receives
``detections_av2.feather`` and ``metrics_summary.json`` (av2's ``AVERAGE_METRICS``: ``AP CDS ATE
ASE AOE`` over all 26 categories; ``mean_over_gt_categories``: the same over the categories with
evaluated GT; ``per_category``; ``roi``; ``evaluated``). Tracking is not scored on AV2 (a message
says so). av2 matches in a ``spawn`` process pool of ``n_jobs`` (default: up to 8, at most the CPUs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from trainer.eval.coverage import coverage_of, describe_coverage, gt_restricted_to, split_coverage
from trainer.lit_base import DetectionModule, LoadedCheckpoint, load_checkpoint

log = logging.getLogger("bevlabels.evaluate")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EVAL_CONFIG = "detection_cvpr_2019"
#: the devkit's TP errors' usual names, in the order of its ``tp_errors``
TP_SHORT = ("ATE", "ASE", "AOE", "AVE", "AAE")


def build_datamodule(config: dict, **overrides: Any):
    """The data module of a stored (resolved) config, with ``overrides`` of its keys (``None`` values ignored)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data_cfg = dict(config["data"])
    data_cfg.update({k: v for k, v in overrides.items() if v is not None})
    return instantiate(OmegaConf.create(data_cfg))


def evaluation_result(summary: dict, extra: dict, out_dir, eval_set, keyframes: int, ran: dict) -> dict[str, Any]:
    """What an evaluation returns, for either benchmark: its metrics summary, the extra metrics, where it wrote, what
    it scored and on which device and precision it predicted."""
    return {
        **summary,
        "extra": extra,
        "out_dir": str(out_dir),
        "eval_set": eval_set,
        "keyframes": keyframes,
        "device": ran["device"],
        "precision": ran["precision"],
    }


def predict(
    model: DetectionModule,
    datamodule,
    split: str = "val",
    device: str = "auto",
    precision: str | None = "auto",
    ran: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``predict_step`` outputs for every keyframe of ``split`` (a flat list, one dict per keyframe).

    ``device`` / ``precision``: as :func:`trainer.device.resolve_eval_device` (``auto``: a CUDA GPU in
    bf16-mixed when there is one, else the CPU in fp32). ``ran``, when given, receives ``device``,
    ``precision`` and ``ran`` (the line :func:`trainer.device.describe_run` prints).
    """
    import pytorch_lightning as pl

    from trainer.device import describe_run, resolve_eval_device

    accelerator, precision = resolve_eval_device(device, precision)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    if hasattr(datamodule, "device_type"):  # its loaders pin memory and size their workers for this device
        datamodule.device_type = trainer.strategy.root_device.type
    batches = trainer.predict(model, dataloaders=datamodule.predict_dataloader(split))
    if ran is not None:
        ran.update(
            device=str(trainer.strategy.root_device), precision=str(trainer.precision), ran=describe_run(trainer)
        )
    return [p for batch in batches for p in batch]


def ran_of(device: str = "auto", precision: str | None = "auto") -> dict[str, str]:
    """What :func:`predict` will run on, before it runs (it replaces this with the trainer's own account)."""
    from trainer.device import resolve_eval_device

    accelerator, precision = resolve_eval_device(device, precision)
    return {"device": accelerator, "precision": precision, "ran": f"device {accelerator}, precision {precision}"}


#: the evaluations :func:`evaluate` runs, by the adapter's ``DriveDataset.evaluation``
EVALUATIONS = ("nuscenes", "av2")


def evaluation_of(adapter) -> str:
    """Which evaluation scores the dataset of ``adapter``: what it declares (``DriveDataset.evaluation``)."""
    kind = getattr(adapter, "evaluation", None)
    if kind not in EVALUATIONS:
        raise NotImplementedError(
            f"trainer.evaluate has no evaluation for the dataset adapter {adapter} (it declares "
            f"evaluation={kind!r}; known: {', '.join(EVALUATIONS)})"
        )
    return kind


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

    The results may cover part of ``eval_set``, scene by scene (:func:`split_coverage`; a scene with a
    keyframe missing is refused): the devkit then scores the GT of those scenes only. The summary's
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


def default_out_dir(ckpt: Path, split: str) -> Path:
    """``<ckpt dir>/eval-<ckpt stem>-<split>``: the evaluation's files, next to the checkpoint."""
    return ckpt.parent / f"eval-{ckpt.stem}-{split}"


def tracking_text(summary: Mapping[str, Any]) -> str:
    from trainer.eval.nusc_tracking import describe_ceiling, format_tracking_table

    return f"{format_tracking_table(summary)}\n{describe_ceiling(summary)}"


def evaluate(
    ckpt: str | Path,
    split: str = "val",
    out: str | Path | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    batch_size: int | None = None,
    verbose: bool = False,
    limit_scenes: int | None = None,
    tracking: bool = True,
    roi: bool | None = None,
    n_jobs: int | None = None,
    tracker: str | Mapping[str, Any] = "kalman",
    nms: str = "auto",
    precision: str | None = "auto",
) -> dict[str, Any]:
    """Predict ``split`` with the checkpoint and score it with the dataset's official evaluation; return its summary (+ paths).

    The evaluation is the one the dataset adapter declares (``DriveDataset.evaluation``,
    :func:`evaluation_of`): the nuScenes devkit's ``DetectionEval`` (:func:`evaluate_nuscenes`) or
    av2's detection evaluation (:func:`evaluate_av2`).

    ``tracking``: also track the detections scene by scene with ``tracker`` (a name of ``conf/tracker``,
    ``kalman`` | ``greedy`` | ``bank``, or its config; ``bank``: the model's own ``track_ids``) and score
    them with ``TrackingEval``, beside the oracle-id ceiling of the same detections:
    ``tracking/metrics_summary.json`` under the output folder, its overall metrics in the returned
    summary's ``tracking`` and the printout. nuScenes-format datasets only: on AV2 it is skipped
    with a message.

    ``limit_scenes``: predict the first that many scenes of the split; ``None`` keeps the checkpoint's
    ``data.limit_scenes`` (the scenes it was validated on), ``0`` the whole split. The summary's
    ``evaluated`` says which scenes and how many keyframes were scored, against the whole split.

    ``roi``, ``n_jobs`` (AV2 only): av2's region-of-interest filter (``None``: on when every
    evaluated log has its map) and the size of av2's process pool (``None``: up to 8, at most the CPUs).

    ``nms`` (sparse detectors, :meth:`DualViewDistill.set_nms`): ``"auto"`` decodes as the checkpoint's
    config says; ``"none"`` without NMS (Sparse4Dv3's top-K only); ``"circle"`` with a circle NMS within
    each class at the checkpoint's ``dataset.nms_radius`` (CenterPoint's radii). Same weights either way,
    so one checkpoint can be scored both ways; the summary's ``decoding`` says which was used.

    ``device`` (``auto``, ``cpu``, ``gpu``, ``cuda``) and ``precision`` (``auto`` or a Lightning precision):
    where and how the model predicts (:func:`trainer.device.resolve_eval_device`: ``auto`` is a CUDA GPU in
    bf16-mixed when there is one, else the CPU in fp32); the printout and the returned ``device``,
    ``precision`` say what ran.
    """
    from trainer.device import resolve_eval_device

    resolve_eval_device(device, precision)  # a bad device fails here, naming the key, before any loading
    from trainer.tracking import build_tracker

    try:  # before the checkpoint and the data are loaded
        build_tracker(tracker)
    except ValueError as e:
        raise ValueError(f"evaluate: tracker (conf/tracker, tracker=kalman|greedy|bank): {e}") from e
    if nms not in NMS_CHOICES:
        raise ValueError(f"evaluate: nms (conf/evaluate.yaml) must be one of {NMS_CHOICES}; got {nms!r}")
    t0 = time.perf_counter()
    loaded: LoadedCheckpoint = load_checkpoint(ckpt)
    decoding = set_decoding_nms(loaded, nms)
    datamodule = build_datamodule(
        loaded.config, num_workers=num_workers, batch_size=batch_size, limit_scenes=limit_scenes
    )
    datamodule.prepare_data()
    datamodule.setup("predict")
    kind = evaluation_of(datamodule.adapter)
    out_dir = Path(out) if out else default_out_dir(loaded.path, split)
    if kind == "av2":
        return evaluate_av2(
            loaded,
            datamodule,
            split,
            out_dir,
            device=device,
            tracking=tracking,
            roi=roi,
            n_jobs=n_jobs,
            t0=t0,
            decoding=decoding,
            precision=precision,
        )
    return evaluate_nuscenes(
        loaded,
        datamodule,
        split,
        out_dir,
        device=device,
        verbose=verbose,
        tracking=tracking,
        t0=t0,
        tracker=tracker,
        decoding=decoding,
        precision=precision,
    )


def describe_decoding(decoding: Mapping[str, Any]) -> str:
    """``"top-K only (no NMS)"`` or ``"top-K, then circle NMS per class (car 2.0 m, ...)"``."""
    if decoding.get("nms") != "circle":
        return "top-K only (no NMS, as Sparse4Dv3)"
    radii = ", ".join(f"{c} {r:.2f} m" for c, r in decoding["radius"].items())
    return f"top-K, then circle NMS per class ({radii})"


#: :func:`evaluate`'s ``nms`` choices
NMS_CHOICES = ("auto", "none", "circle")


def set_decoding_nms(loaded: LoadedCheckpoint, nms: str) -> dict[str, Any] | None:
    """Apply :func:`evaluate`'s ``nms`` to the loaded model; return what it decodes with (None: not a sparse detector).

    ``{"nms": "none"}`` or ``{"nms": "circle", "radius": {class: metres}}``. ``"circle"`` takes the radii of
    the checkpoint's ``dataset.nms_radius``; a model without :meth:`set_nms` is refused for ``none``/``circle``.
    """
    detector = getattr(loaded.model, "detector", None)
    settable = hasattr(detector, "set_nms")
    if nms != "auto":
        if not settable:
            raise ValueError(
                f"evaluate: nms={nms} needs a sparse detector (DualViewDistill.set_nms); {type(detector).__name__} "
                "decodes with its own NMS (model.detector.head.nms_type, set at training)"
            )
        if nms == "none":
            detector.set_nms(None)
        else:
            radius = (loaded.config.get("dataset") or {}).get("nms_radius")
            if not radius:
                raise ValueError(
                    f"evaluate: nms=circle needs dataset.nms_radius in the checkpoint's config ({loaded.path})"
                )
            detector.set_nms(radius)
    if not settable:
        return None
    if detector.nms_radius is None:
        return {"nms": "none"}
    return {"nms": "circle", "radius": dict(zip(detector.class_names, detector.nms_radius.tolist()))}


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
    """:func:`evaluate` on a nuScenes-format dataset: ``DetectionEval`` (and ``TrackingEval``) of the devkit."""
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

    extra = {}
    if hasattr(model, "extra_eval"):
        extra = model.extra_eval(predictions, datamodule) or {}
        with open(out_dir / "extra_metrics.json", "w") as f:
            json.dump(extra, f, indent=2)

    track_summary = None
    if tracking:
        from trainer.eval.nusc_tracking import TRACKING_METRICS, track_and_score

        detections = make_results(
            predictions,
            poses={f.token: f.global_from_ego for f in frames},
            class_names=model.class_names,
            all_tokens=[f.token for f in frames],
            with_track_ids=True,
        )["results"]
        track_summary = track_and_score(
            nusc, frames, detections, tracker, out_dir / "tracking", eval_set, results["meta"], verbose=verbose
        )
        summary["tracking"] = {k: track_summary.get(k) for k in (*TRACKING_METRICS, "evaluated", "tracker")}
        summary["tracking"]["oracle_ids"] = {k: track_summary["oracle_ids"].get(k) for k in TRACKING_METRICS}
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
    log by log (:func:`coverage_of` over ``adapter.scenes(eval_set)`` and their keyframes; a log with
    a keyframe missing is refused); av2 then scores the GT of exactly those keyframes
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


#: what :func:`evaluate_av2` says about tracking
AV2_TRACKING_SKIPPED = (
    "tracking skipped: trainer.evaluate scores tracking with the nuScenes devkit only; "
    "av2's tracking evaluation (av2.evaluation.tracking) is not wired in yet"
)


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
) -> dict[str, Any]:
    """:func:`evaluate` on Argoverse 2: av2's detection evaluation (:func:`run_av2_eval`).

    Writes ``detections_av2.feather`` (av2's detection table: ego-frame cuboids, as av2 scores them)
    and ``metrics_summary.json`` (av2's averages over its 26 categories ``AP CDS ATE ASE AOE``, the
    same over the categories with GT, ``per_category``, ``roi``, ``evaluated``), ``extra_metrics.json``
    when the model has an ``extra_eval`` hook, and prints a table. Tracking is skipped (a message).
    """
    from trainer.av2_results import format_av2_table, write_detections

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
    extra = {}
    if hasattr(model, "extra_eval"):
        extra = model.extra_eval(predictions, datamodule) or {}
        with open(out_dir / "extra_metrics.json", "w") as f:
            json.dump(extra, f, indent=2)
    if tracking:
        summary["tracking"] = {"skipped": AV2_TRACKING_SKIPPED}
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
        + (f"\n{AV2_TRACKING_SKIPPED}" if tracking else "")
        + f"\ndetections: {det_path}\nsummary: {out_dir / 'metrics_summary.json'}",
        flush=True,
    )
    return evaluation_result(summary, extra, out_dir, eval_set, len(frames), ran)


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
    def _main(cfg) -> None:
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        evaluate(
            cfg.ckpt,
            split=cfg.split,
            out=cfg.get("out"),
            device=str(cfg.get("device", "auto")),
            precision=cfg.get("precision", "auto"),
            num_workers=cfg.get("num_workers"),
            batch_size=cfg.get("batch_size"),
            verbose=bool(cfg.get("verbose", False)),
            limit_scenes=cfg.get("limit_scenes"),
            tracking=bool(cfg.get("tracking", True)),
            roi=cfg.get("roi"),
            n_jobs=cfg.get("n_jobs"),
            tracker=cfg.tracker,
            nms=str(cfg.get("nms", "auto")),
        )

    _main()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
