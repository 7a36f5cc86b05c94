"""Score a checkpoint with its dataset's official evaluation: ``python -m trainer.evaluate ckpt=... [split=val] [out=...]``.

    python -m trainer.evaluate ckpt=outputs/teacher_centerpoint/<run>/checkpoints/last.ckpt
    python -m trainer.evaluate ckpt=... split=train out=/tmp/eval num_workers=0 device=cpu   # default: device=auto
    python -m trainer.evaluate ckpt=... limit_scenes=0     # the whole split, whatever data.limit_scenes was
    python -m trainer.evaluate ckpt=... tracker=greedy     # nuScenes: track with CenterPoint's greedy association
    python -m trainer.evaluate ckpt=... nms=circle         # a sparse detector decoded with a circle NMS per class
    python -m trainer.evaluate ckpt=<an AV2 run> roi=false n_jobs=2     # AV2: av2's evaluation, options

Which evaluation: the one the dataset adapter declares (``DriveDataset.evaluation``, see :func:`evaluation_of`):

- ``"nuscenes"`` (nuScenes and the synthetic world): the nuScenes devkit's ``DetectionEval``
  (:mod:`trainer.eval.nusc_detection`) and, with ``tracking=true`` (the default), its ``TrackingEval`` of the
  tracks of ``tracker=kalman|greedy|bank`` (``conf/tracker``) beside the oracle-id ceiling
  (:mod:`trainer.eval.nusc_tracking`);
- ``"av2"`` (Argoverse 2): av2's own detection evaluation (:mod:`trainer.eval.av2_detection`; ``roi``, ``n_jobs``)
  and its tracking evaluation of the same tracker's tracks, beside their oracle-id ceiling
  (:mod:`trainer.eval.av2_tracking`).

The data module and the model are rebuilt from the checkpoint's stored config alone
(:func:`trainer.lit_base.load_checkpoint`; a checkpoint whose weights do not fit its config is refused, naming the
missing and unexpected keys). The model predicts every keyframe of the split's scenes the config selects, without
augmentation, on ``device=auto|cpu|gpu|cuda`` at ``precision=auto|<a Lightning precision>``
(:mod:`trainer.eval.predict`); ``nms=auto|none|circle`` chooses how a sparse detector decodes
(:mod:`trainer.eval.decoding`).

Part of a split: a run trained with ``data.limit_scenes=n`` is evaluated on the first ``n`` scenes of the split
(``limit_scenes=0`` evaluates the whole split; ``limit_scenes=k`` the first ``k``). The scores cover exactly the
scenes predicted, each whole (:mod:`trainer.eval.coverage`); which scenes and how many keyframes, against the
whole split, is printed and written to ``metrics_summary.json`` under ``evaluated``.

A table is printed, and the evaluation folder, next to the checkpoint by default
(``<ckpt dir>/eval-<ckpt name>-<split>/``), receives the detections (``results_nusc.json`` or
``detections_av2.feather``), ``metrics_summary.json``, ``extra_metrics.json`` when the model has an
``extra_eval`` hook, and the benchmark's other files (see its module).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bevlabels.conf import CONF_DIR
from trainer.lit_base import LoadedCheckpoint, load_checkpoint

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


def default_out_dir(ckpt: Path, split: str) -> Path:
    """``<ckpt dir>/eval-<ckpt stem>-<split>``: the evaluation's files, next to the checkpoint."""
    return ckpt.parent / f"eval-{ckpt.stem}-{split}"


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
    :func:`evaluation_of`): the nuScenes devkit's ``DetectionEval``
    (:func:`trainer.eval.nusc_detection.evaluate_nuscenes`) or av2's detection evaluation
    (:func:`trainer.eval.av2_detection.evaluate_av2`).

    ``tracking``: also track the detections scene by scene with ``tracker`` (a name of ``conf/tracker``,
    ``kalman`` | ``greedy`` | ``bank``, or its config; ``bank``: the model's own ``track_ids``) and score
    them with ``TrackingEval``, beside the oracle-id ceiling of the same detections:
    ``tracking/metrics_summary.json`` under the output folder, its overall metrics in the returned
    summary's ``tracking`` and the printout; on AV2, av2's tracking evaluation. ``tracker=bank`` on a model
    without an instance bank is refused before anything is predicted.

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
    from trainer.eval import av2_detection, nusc_detection
    from trainer.eval.decoding import NMS_CHOICES, set_decoding_nms
    from trainer.eval.predict import build_datamodule
    from trainer.tracking import build_tracker

    try:  # before the checkpoint and the data are loaded
        tracker_name = build_tracker(tracker)[0].name
    except ValueError as e:
        raise ValueError(f"evaluate: tracker (conf/tracker, tracker=kalman|greedy|bank): {e}") from e
    if nms not in NMS_CHOICES:
        raise ValueError(f"evaluate: nms (conf/evaluate.yaml) must be one of {NMS_CHOICES}; got {nms!r}")
    t0 = time.perf_counter()
    loaded: LoadedCheckpoint = load_checkpoint(ckpt)
    if tracking and tracker_name == "bank" and getattr(getattr(loaded.model, "detector", None), "bank", None) is None:
        raise ValueError(
            f"evaluate: tracker=bank writes the model's own instance-bank ids, and {loaded.path} has no instance bank "
            "(a temporal experiment such as dvd_temporal has one): choose tracker=kalman or tracker=greedy"
        )
    decoding = set_decoding_nms(loaded, nms)
    datamodule = build_datamodule(
        loaded.config, num_workers=num_workers, batch_size=batch_size, limit_scenes=limit_scenes
    )
    datamodule.prepare_data()
    datamodule.setup("predict")
    kind = evaluation_of(datamodule.adapter)
    out_dir = Path(out) if out else default_out_dir(loaded.path, split)
    if kind == "av2":
        return av2_detection.evaluate_av2(
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
            tracker=tracker,
        )
    return nusc_detection.evaluate_nuscenes(
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
