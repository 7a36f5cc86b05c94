"""The camera detectors on the AV2-format synthetic world (``dataset=av2_synthetic``): AV2's 26 categories, its
task groups, seven cameras of two sizes; fast_dev_run of the BEVDepth student and the DualViewDistill detector.

Tiny models as in tests/integration/test_bevdepth_train.py and test_dvd_train.py; the store is conftest's
``av2_tiny_store``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bevdepth_train import train_overrides as bevdepth_overrides  # tests/integration/
from test_dvd_train import train_overrides as dvd_overrides

pytest.importorskip("open3d")


def av2_overrides(experiment: str, root: Path, store: Path, run_dir: Path, *extra: str) -> list[str]:
    """The tiny-model overrides of the BEVDepth and DualViewDistill tests, on ``dataset=av2_synthetic``."""
    build = dvd_overrides if experiment.startswith("dvd") else bevdepth_overrides
    return build(experiment, root, store, run_dir, *extra, dataset="av2_synthetic")


@pytest.mark.parametrize("experiment", ["bevdepth", "dvd"])
def test_fast_dev_run_on_the_av2_world(experiment, compose_train, av2_tiny, av2_tiny_store, tmp_path):
    from hydra.utils import instantiate

    from bevlabels.datasets.av2 import AV2_CLASSES
    from trainer.train import train

    cfg = compose_train(av2_overrides(experiment, av2_tiny, av2_tiny_store, tmp_path, "debug=fdr"))
    assert list(cfg.class_names) == list(AV2_CLASSES)
    model = instantiate(cfg.model)
    if experiment == "bevdepth":  # the CenterHead's AV2 task groups cover all 26 categories once
        head = model.detector.head
        assert len(head.tasks) == 6 and sorted(c for t in head.tasks for c in t) == sorted(AV2_CLASSES)
    else:
        assert model.detector.head.num_classes == 26
    result = train(cfg)
    assert result["global_step"] == 1
    for key in ("train/loss", "train/det", "val/loss"):
        assert key in result["metrics"] and result["metrics"][key] == result["metrics"][key], key  # present, not NaN


def test_fast_dev_run_of_the_lidar_teacher_on_the_av2_world(compose_train, av2_tiny, tmp_path):
    """The CenterPoint teacher on AV2 sweeps (already in the ego frame; every sweep a keyframe) and 26 categories."""
    import numpy as np
    from test_teacher import TINY_TEACHER  # tests/integration/test_teacher.py

    from trainer.train import train

    cfg = compose_train([
        "experiment=teacher_centerpoint", "dataset=av2_synthetic", f"dataset.root={av2_tiny}", "grid=near",
        f"run_dir={tmp_path}", "trainer.enable_model_summary=false", *TINY_TEACHER, "debug=fdr",
    ])  # fmt: skip
    assert len(cfg.model.detector.head.tasks) == 6
    out = train(cfg)
    assert out["global_step"] == 1
    assert np.isfinite(out["metrics"]["train/loss_step"]) and np.isfinite(out["metrics"]["val/loss"])


def test_av2_scores_the_worlds_own_gt_perfectly_and_moved_boxes_lower(av2_tiny):
    """av2's evaluation of the AV2-format world's GT (val log), written as predictions through our conversion."""
    from test_av2_eval import gt_predictions  # tests/integration/test_av2_eval.py

    from bevlabels.datasets.av2 import AV2_CLASSES, AV2Dataset
    from bevlabels.geometry import X
    from trainer.eval.av2_detection import run_av2_eval

    ds = AV2Dataset(av2_tiny, split="val")
    frames = [f for s in ds.scenes("val") for f in ds.keyframes(s)]
    summary, _ = run_av2_eval(ds, "val", frames, gt_predictions(frames), AV2_CLASSES, n_jobs=1)
    assert summary["roi"]["on"] is False  # the synthetic logs have no map/
    present = summary["gt_categories"]
    assert len(present) >= 5 and summary["num_gt"] > 50, (present, summary["num_gt"])
    for cat in present:
        row = summary["per_category"][cat]
        assert row["AP"] >= 0.99 and row["CDS"] >= 0.95, (cat, row)

    def shift(boxes, frame):
        boxes[:, X] += 1.5
        return boxes

    moved, _ = run_av2_eval(ds, "val", frames, gt_predictions(frames, shift), AV2_CLASSES, n_jobs=1)
    assert moved["mean_over_gt_categories"]["AP"] <= 0.55, moved["mean_over_gt_categories"]
    assert summary["mean_over_gt_categories"]["CDS"] - moved["mean_over_gt_categories"]["CDS"] > 0.3


def test_short_training_then_trainer_evaluate_scores_with_av2(compose_train, av2_tiny, av2_tiny_store, tmp_path):
    """bevdepth trained a few steps on the AV2 world; its checkpoint alone is scored by av2's evaluation."""
    import json

    from trainer.evaluate import evaluate
    from trainer.train import train

    cfg = compose_train(av2_overrides("bevdepth", av2_tiny, av2_tiny_store, tmp_path / "run",
                                      "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_val_batches=0"))  # fmt: skip
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    summary = evaluate(str(ckpt), split="val", out=str(tmp_path / "eval"), num_workers=0, n_jobs=1)
    written = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert written["config"]["categories"] == 26 and written["roi"]["on"] is False
    assert written["evaluated"]["keyframes"] == 4 and not written["evaluated"]["partial"]
    assert (tmp_path / "eval" / "detections_av2.feather").is_file()
    for m in ("AP", "CDS", "ATE", "ASE", "AOE"):
        assert m in summary and 0.0 <= summary["AP"] <= 1.0


def test_the_av2_experiments_step_and_decode_under_bf16_autocast(av2_tiny, av2_tiny_store, tmp_path):
    """AV2's 26 classes and seven cameras under CPU bf16 autocast (a GPU's mixed precision): the camera detectors
    and the LiDAR teacher take a step and decode (tests/integration/test_mixed_precision_experiments.py, whose
    subprocess runner this shares, does every experiment on the nuScenes-format world)."""
    from test_mixed_precision_experiments import batch_one, run_bf16_steps
    from test_teacher import TINY_TEACHER

    teacher = [
        "experiment=teacher_centerpoint", "dataset=av2_synthetic", f"dataset.root={av2_tiny}", "grid=near",
        f"run_dir={tmp_path}", *TINY_TEACHER,
    ]  # fmt: skip
    runs = {f"av2_{e}": (av2_overrides(e, av2_tiny, av2_tiny_store, tmp_path), 1) for e in ("bevdepth", "dvd")}
    runs["av2_teacher_centerpoint"] = (teacher, 1)
    run_bf16_steps({name: (batch_one(over), steps) for name, (over, steps) in runs.items()})
