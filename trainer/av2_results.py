"""Detections to Argoverse 2's detection format, scored by av2's own evaluation (``av2.evaluation.detection``).

What av2 wants (read from ``av2/evaluation/detection/eval.py`` and ``utils.py``, av2 0.3.x)
------------------------------------------------------------------------------------------
``av2.evaluation.detection.eval.evaluate(dts, gts, cfg, n_jobs)`` takes two pandas tables:

- ``dts``: one row per detection, columns ``log_id, timestamp_ns, category`` (it groups rows by
  these three: ``DETECTION_UUID_COLUMNS``), then ``DTS_COLUMNS`` = ``ORDERED_CUBOID_COL_NAMES``
  (``tx_m, ty_m, tz_m, length_m, width_m, height_m, qw, qx, qy, qz``) + ``score``;
- ``gts``: the same key columns, ``ORDERED_CUBOID_COL_NAMES`` + ``num_interior_pts``: the rows
  of the logs' ``annotations.feather``.

**Frame: the ego frame of the sweep, not the city frame.** av2 scores cuboids in the egovehicle
frame at their ``timestamp_ns``, as ``annotations.feather`` stores them: ``compute_evaluated_dts_mask``
/ ``compute_evaluated_gts_mask`` keep boxes whose centre ("``xyz_m_ego``: Center of the detections in
the egovehicle frame") is within ``max_range_m`` (150 m) of the origin, ``assign`` matches centres by
Euclidean distance in that frame, and the city pose is used only for the region-of-interest filter
(``compute_objects_in_roi_mask(cuboids_ego, city_SE3_ego, avm)`` moves the cuboids to the city frame
with the pose av2 reads itself, ``read_city_SE3_ego``, to look them up in the map's ROI raster). So
our detections, already in the keyframe's ego frame (the keyframe is the LiDAR sweep at
``timestamp_ns``, the adapter's ``"<log_id>:<timestamp_ns>"`` token), are written as they are: no
pose is applied here (a box written in the city frame lands kilometres from the origin and is
never evaluated; a test checks the score collapses then).

**Heading.** av2 reads a cuboid's yaw as ``mat_to_xyz(quat_to_mat(q))[..., 2]`` (its AOE,
``distance(..., DistanceType.ORIENTATION)``, is ``wrap_angles`` of the yaw difference, in [0, pi):
a box turned by pi has AOE pi). :func:`yaw_to_quat_wxyz` writes the quaternion with av2's own
inverse helpers, ``mat_to_quat(xyz_to_mat([0, 0, yaw]))`` (scalar first, ``qw, qx, qy, qz``), so av2
reads back exactly our yaw (tested). Our box centre is av2's ``tx_m, ty_m, tz_m`` and our
``l, w, h`` its ``length_m, width_m, height_m`` (see ``bevlabels.geometry.boxes_from_av2_cuboids``).
Velocities are not part of av2's detection format and are dropped.

**Ground truth** is av2's own: each evaluated log's ``annotations.feather`` read with
``av2.utils.io.read_feather`` and tagged with its ``log_id`` (what ``av2.utils.io.read_all_annotations``
does for a whole split), restricted to the keyframes predicted (:func:`read_gt`). All 30 annotated
categories are kept: av2 scores ``cfg.categories`` (the 26 ``SensorCompetitionCategories``) and
ignores the others.

**What av2 filters by itself** (nothing of it is redone here): detections beyond ``max_range_m``
and beyond the ``max_num_dts_per_category`` (100) best of a category in a sweep; GT beyond
``max_range_m`` or without a LiDAR point (``num_interior_pts == 0``), so a detection of an
unobservable object counts as a false positive; with ``eval_only_roi_instances``, detections and GT
with no corner in the map's region of interest. That last filter needs each log's ``map/`` folder
(``log_map_archive_*.json``, the ground-height raster and its ``*___img_Sim2_city.json``) under
``cfg.dataset_dir`` (the folder of the logs, e.g. ``av2/sensor/val``): :func:`logs_have_maps`.

**Metrics** come from av2 (``evaluate`` -> ``summarize_metrics``): AP (mean over the affinity
thresholds 0.5, 1, 2, 4 m), ATE, ASE, AOE on the true positives at ``tp_threshold_m`` (2 m), CDS,
per category, and the ``AVERAGE_METRICS`` row, their mean over **all 26 categories** (a category
without evaluated GT counts with AP 0 and the maximal errors, av2's defaults). Because a few logs
rarely hold all 26 categories, :func:`summarize` also gives the mean of av2's rows over the
categories that have evaluated GT (``mean_over_gt_categories``): a plain mean of av2's numbers.

av2's ``evaluate`` runs its per-sweep matching in a ``multiprocessing`` ``spawn`` pool of ``n_jobs``
processes: a script calling it needs the usual ``if __name__ == "__main__":`` guard.

Shapes: M boxes (of a keyframe), D detections, G GT rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.geometry import YAW, H, L, W, X, Y, Z, to_numpy

log = logging.getLogger("bevlabels.evaluate")

#: key columns of av2's detection and GT tables (``DETECTION_UUID_COLUMNS``)
KEY_COLUMNS = ("log_id", "timestamp_ns", "category")
#: av2's ``ORDERED_CUBOID_COL_NAMES``
CUBOID_COLUMNS = ("tx_m", "ty_m", "tz_m", "length_m", "width_m", "height_m", "qw", "qx", "qy", "qz")
#: the columns of our detection table, in order (av2's submission format)
DETECTION_COLUMNS = (*KEY_COLUMNS, *CUBOID_COLUMNS, "score")
#: av2's metric names, as its summary table's columns (``MetricNames``)
METRICS = ("AP", "ATE", "ASE", "AOE", "CDS")
#: the row of av2's summary table holding the means over the categories
AVERAGE_ROW = "AVERAGE_METRICS"
ANNOTATIONS_FILE = "annotations.feather"


# ---------------------------------------------------------------------------------------------
# Tokens, headings


def parse_token(token: str) -> tuple[str, int]:
    """``(log_id, timestamp_ns)`` of an AV2 keyframe token ``"<log_id>:<timestamp_ns>"``."""
    log_id, _, ts = str(token).rpartition(":")
    if not log_id or not ts.isdigit():
        raise ValueError(f"not an AV2 keyframe token ('<log_id>:<timestamp_ns>'): {token!r}")
    return log_id, int(ts)


def yaw_to_quat_wxyz(yaw: np.ndarray) -> np.ndarray:
    """``(..., 4)`` scalar-first quaternions of headings ``(...)`` about +z, made with av2's helpers.

    ``mat_to_quat(xyz_to_mat([0, 0, yaw]))``: the inverse of how av2 reads a yaw
    (:func:`quat_wxyz_to_yaw`).
    """
    from av2.geometry.geometry import mat_to_quat, xyz_to_mat

    yaw = np.asarray(yaw, dtype=np.float64)
    zeros = np.zeros_like(yaw)
    xyz = np.stack([zeros, zeros, yaw], -1).reshape(-1, 3)
    return mat_to_quat(xyz_to_mat(xyz)).reshape(*yaw.shape, 4)


def quat_wxyz_to_yaw(quat_wxyz: np.ndarray) -> np.ndarray:
    """The heading av2's evaluation reads from quaternions ``(..., 4)``: ``mat_to_xyz(quat_to_mat(q))[..., 2]``."""
    from av2.geometry.geometry import mat_to_xyz, quat_to_mat

    q = np.asarray(quat_wxyz, dtype=np.float64)
    return mat_to_xyz(quat_to_mat(q.reshape(-1, 4)))[..., 2].reshape(q.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Detections


def sweep_detections(
    token: str, boxes_ego: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The columns (:data:`DETECTION_COLUMNS`) of one keyframe's ``(M, 9)`` ego-frame boxes, best first."""
    log_id, ts = parse_token(token)
    boxes = np.asarray(boxes_ego, dtype=np.float64).reshape(-1, 9)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{token}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    params = boxes[:, [X, Y, Z, L, W, H, YAW]]
    if not (np.isfinite(params).all() and np.isfinite(scores).all()):
        raise ValueError(f"{token}: a detection has a non-finite centre, size, heading or score")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"{token}: labels outside 0..{len(class_names) - 1} (the model's class_names)")
    order = np.argsort(-scores, kind="stable")
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    quat = yaw_to_quat_wxyz(boxes[:, YAW])  # (M, 4)
    m = len(boxes)
    cols: dict[str, np.ndarray] = {
        "log_id": np.full(m, log_id, dtype=object),
        "timestamp_ns": np.full(m, ts, dtype=np.int64),
        "category": np.array([str(class_names[k]) for k in labels], dtype=object),
    }
    for name, col in zip(CUBOID_COLUMNS[:6], (X, Y, Z, L, W, H)):
        cols[name] = boxes[:, col]
    for j, name in enumerate(("qw", "qx", "qy", "qz")):
        cols[name] = quat[:, j]
    cols["score"] = scores
    return cols


def make_detections(predictions: Iterable[Mapping[str, Any]], class_names: Sequence[str]):
    """av2's detection table (pandas, :data:`DETECTION_COLUMNS`) of ``predict_step`` outputs.

    Each prediction: ``sample_token`` (``"<log_id>:<timestamp_ns>"``), ``boxes (M, 9)`` in the
    keyframe's ego frame, ``scores (M,)``, ``labels (M,)`` indices into ``class_names``. The boxes
    stay in the ego frame (see the module docstring). A class name outside av2's 26 categories is
    written as it is (av2 ignores it).
    """
    import pandas as pd

    parts = [
        sweep_detections(
            str(p["sample_token"]), to_numpy(p["boxes"]), to_numpy(p["scores"]), to_numpy(p["labels"]), class_names
        )
        for p in predictions
    ]
    if not parts:
        return empty_detections()
    df = pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in DETECTION_COLUMNS})
    df["timestamp_ns"] = df["timestamp_ns"].astype(np.int64)
    return df


def empty_detections():
    """A detection table without rows, with av2's columns and dtypes."""
    import pandas as pd

    dtypes = {"log_id": object, "timestamp_ns": np.int64, "category": object}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, np.float64)) for c in DETECTION_COLUMNS})


def write_detections(path: str | Path, detections) -> Path:
    """Write the detection table as a feather file (av2's format for detections and annotations)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    detections.reset_index(drop=True).to_feather(path)
    return path


# ---------------------------------------------------------------------------------------------
# Where the logs are, GT, maps


def dataset_dir_of(frames: Iterable[Any]) -> Path:
    """The folder holding the frames' logs (av2's ``dataset_dir``, e.g. ``av2/sensor/val``).

    From each keyframe's sweep path, av2's layout ``<dataset_dir>/<log_id>/sensors/lidar/<ns>.feather``
    (``AV2SensorDataLoader.get_lidar_fpath``); every frame must agree.
    """
    dirs = set()
    for f in frames:
        log_dir = Path(f.lidar.path).parents[2]
        if log_dir.name != f.scene:
            raise ValueError(
                f"keyframe {f.token}: its sweep {f.lidar.path} is not at <dataset_dir>/{f.scene}/sensors/lidar/"
            )
        dirs.add(log_dir.parent)
    if len(dirs) != 1:
        raise ValueError(f"the evaluated logs are not in one folder: {sorted(map(str, dirs))}")
    return dirs.pop()


def read_gt(dataset_dir: str | Path, tokens: Iterable[str]):
    """av2's GT table of the keyframes ``tokens``: the rows of their logs' ``annotations.feather`` at those times.

    Read with ``av2.utils.io.read_feather`` and tagged with ``log_id``, as ``read_all_annotations``
    does; only the rows whose ``timestamp_ns`` is a keyframe of ``tokens`` are kept.
    """
    import pandas as pd
    from av2.utils.io import read_feather

    dataset_dir = Path(dataset_dir)
    wanted: dict[str, set[int]] = {}
    for t in tokens:
        log_id, ts = parse_token(t)
        wanted.setdefault(log_id, set()).add(ts)
    parts = []
    for log_id, stamps in sorted(wanted.items()):
        path = dataset_dir / log_id / ANNOTATIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no GT for AV2 log {log_id}: {path} not found (a test split cannot be scored)")
        ann = read_feather(path)
        ann = ann[ann["timestamp_ns"].isin(np.fromiter(stamps, dtype=np.int64))].copy()
        ann["log_id"] = log_id
        parts.append(ann)
    if not parts:
        raise ValueError("no keyframe to read GT for")
    gts = pd.concat(parts).reset_index(drop=True)
    gts["timestamp_ns"] = gts["timestamp_ns"].astype(np.int64)
    return gts


def map_files_missing(log_dir: Path) -> list[str]:
    """What av2's ROI filter (``ArgoverseStaticMap.from_map_dir(build_raster=True)``) needs and ``log_dir/map`` lacks."""
    m = Path(log_dir) / "map"
    needs = {
        "map/log_map_archive_*.json": "log_map_archive_*.json",
        "map/*_ground_height_surface____*.npy": "*_ground_height_surface____*.npy",
        "map/*___img_Sim2_city.json": "*___img_Sim2_city.json",
    }
    return [name for name, pattern in needs.items() if not (m.is_dir() and len(list(m.glob(pattern))) == 1)]


def logs_have_maps(dataset_dir: str | Path, log_ids: Iterable[str]) -> tuple[bool, str]:
    """``(every log has the map av2's ROI filter reads, why not)``."""
    lacking = {log_id: map_files_missing(Path(dataset_dir) / log_id) for log_id in log_ids}
    lacking = {k: v for k, v in lacking.items() if v}
    if not lacking:
        return True, ""
    first = next(iter(lacking))
    return False, (
        f"{len(lacking)} evaluated log(s) have no usable map (e.g. {first}: no {', '.join(lacking[first])} "
        f"under {Path(dataset_dir) / first})"
    )


def roi_decision(dataset_dir: Path, log_ids, roi: bool | None, what: str) -> tuple[bool, str]:
    """Whether av2's region-of-interest filter runs, and why: ``roi=None`` turns it on when every log of ``log_ids``
    has its map under ``dataset_dir`` (a warning naming ``what`` when not); ``True`` needs the maps (an error naming
    the first missing one); ``False`` turns it off."""
    have_maps, why_not = logs_have_maps(dataset_dir, log_ids)
    if roi is None:
        if not have_maps:
            log.warning("%s without the region-of-interest filter: %s", what, why_not)
        return have_maps, "on: every evaluated log has its map" if have_maps else f"off: {why_not}"
    if roi:
        if not have_maps:
            raise FileNotFoundError(f"the ROI filter (av2's region of interest) needs each log's map: {why_not}")
        return True, "on: asked for"
    return False, "off: asked for"


def default_jobs() -> int:
    """av2's default pool size (8), at most the CPUs there are."""
    return max(1, min(8, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------
# Scoring


def run_av2_detection_eval(
    detections,
    gts,
    dataset_dir: str | Path,
    roi: bool | None = None,
    n_jobs: int | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score ``detections`` against ``gts`` with ``av2.evaluation.detection.eval.evaluate``; return :func:`summarize`'s dict.

    ``roi``: av2's ``eval_only_roi_instances``. ``None`` turns it on when every log of ``gts`` has
    its map (:func:`logs_have_maps`), off otherwise (with a warning); ``True`` insists (an error
    naming the missing files); ``False`` turns it off. ``dataset_dir`` (the folder of the logs) is
    passed to av2 either way. ``categories``: av2's default (the 26 ``SensorCompetitionCategories``)
    when ``None``.
    """
    from av2.evaluation.detection.eval import evaluate
    from av2.evaluation.detection.utils import DetectionCfg

    dataset_dir = Path(dataset_dir)
    log_ids = sorted(set(gts["log_id"]))
    dt_logs = set(detections["log_id"])
    if not dt_logs <= set(log_ids):
        raise ValueError(f"detections for logs without GT rows: {sorted(dt_logs - set(log_ids))[:3]}")
    roi, roi_reason = roi_decision(dataset_dir, log_ids, roi, "av2 evaluation")

    kwargs: dict[str, Any] = {"dataset_dir": dataset_dir, "eval_only_roi_instances": bool(roi)}
    if categories is not None:
        kwargs["categories"] = tuple(categories)
    cfg = DetectionCfg(**kwargs)
    dts_out, gts_out, metrics = evaluate(
        detections.reset_index(drop=True), gts.reset_index(drop=True), cfg, n_jobs=n_jobs or default_jobs()
    )
    summary = summarize(metrics, dts_out, gts_out, cfg)
    summary["roi"] = {"on": bool(roi), "reason": roi_reason}
    return summary


def summarize(metrics, dts_out, gts_out, cfg) -> dict[str, Any]:
    """av2's summary table as a JSON-able dict.

    ``AP, ATE, ASE, AOE, CDS``: av2's ``AVERAGE_METRICS`` row (means over all of ``cfg.categories``);
    ``per_category``: av2's rows, with ``num_gt`` / ``num_dt`` the GT and detections av2 evaluated
    (its ``is_evaluated`` flag); ``gt_categories``: those with ``num_gt > 0``;
    ``mean_over_gt_categories``: the mean of av2's rows over them (``None`` without any).
    """

    def evaluated_per_category(table) -> dict[str, int]:
        if not len(table):
            return {}
        return {str(k): int(v) for k, v in table[table["is_evaluated"].astype(bool)].groupby("category").size().items()}

    n_gt, n_dt = evaluated_per_category(gts_out), evaluated_per_category(dts_out)
    per_category = {}
    for cat in cfg.categories:
        row: dict[str, Any] = {m: float(metrics.loc[cat, m]) for m in METRICS}
        row["num_gt"], row["num_dt"] = n_gt.get(cat, 0), n_dt.get(cat, 0)
        per_category[cat] = row
    present = [c for c in cfg.categories if per_category[c]["num_gt"] > 0]
    mean_present = {m: float(np.mean([per_category[c][m] for c in present])) if present else None for m in METRICS}
    return {
        **{m: float(metrics.loc[AVERAGE_ROW, m]) for m in METRICS},
        "per_category": per_category,
        "gt_categories": present,
        "mean_over_gt_categories": mean_present,
        "num_gt": int(sum(r["num_gt"] for r in per_category.values())),
        "num_dt": int(sum(r["num_dt"] for r in per_category.values())),
        "config": {
            "categories": len(cfg.categories),
            "affinity_thresholds_m": [float(t) for t in cfg.affinity_thresholds_m],
            "tp_threshold_m": float(cfg.tp_threshold_m),
            "max_range_m": float(cfg.max_range_m),
            "max_num_dts_per_category": int(cfg.max_num_dts_per_category),
            "eval_only_roi_instances": bool(cfg.eval_only_roi_instances),
            "dataset_dir": str(cfg.dataset_dir),
        },
    }


def format_av2_table(summary: Mapping[str, Any]) -> str:
    """av2's numbers as a text table: the averages, then AP, TP errors, CDS and GT count per category."""
    mp = summary["mean_over_gt_categories"]
    head = (f"over {summary['config']['categories']}", f"over {len(summary['gt_categories'])} with GT")
    lines = [f"{'':<6}{head[0]:>10}{head[1]:>14}"]
    for m in ("AP", "CDS", "ATE", "ASE", "AOE"):
        name = m if m in ("AP", "CDS") else f"m{m}"
        lines.append(f"{name:<6}{summary[m]:10.4f}" + (f"{mp[m]:14.4f}" if mp[m] is not None else f"{'-':>14}"))
    if "roi" in summary:
        lines.append(f"ROI filter {summary['roi']['reason']}")
    lines += ["", f"{'category':<33}{'AP':>7}{'ATE':>7}{'ASE':>7}{'AOE':>7}{'CDS':>7}{'GT':>7}{'det':>7}"]
    for cat, row in summary["per_category"].items():
        values = "".join(f"{row[m]:7.3f}" for m in ("AP", "ATE", "ASE", "AOE", "CDS"))
        lines.append(f"{cat:<33}{values}{row['num_gt']:7d}{row['num_dt']:7d}")
    return "\n".join(lines)
