"""Evaluating part of a split: a run trained with ``data.limit_scenes`` scores with the devkit on exactly its keyframes.

The world here has two val scenes (``mini_val``: scene-0103, scene-0916) of 3 keyframes each, so
``limit_scenes=1`` predicts half of the split. The devkit's ``DetectionEval`` asserts that the results
hold every sample of the split; :func:`trainer.eval.nusc_detection.run_detection_eval` restricts its GT to the
scenes the results cover instead, refuses results that miss a keyframe of a scene they cover, and
says in the summary (``evaluated``) which scenes and how many keyframes it scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_teacher import TINY_TEACHER as _TEACHER  # the same tiny model as the teacher tests

#: test_teacher.py's tiny CenterPoint (a few thousand parameters), LiDAR only: no label store needed
TINY_TEACHER = ("experiment=teacher_centerpoint", "grid=near", "trainer.enable_model_summary=false", *_TEACHER)


@pytest.fixture(scope="module")
def synth_two_val(tmp_path_factory) -> Path:
    """The `tiny` world with two val scenes (and one train scene) of 3 keyframes, small images, 10 Hz sweeps (~8 s)."""
    from bevlabels.synthetic import SynthConfig, generate

    cfg = SynthConfig.from_preset(
        "tiny", val_scenes=2, keyframes=3, image_width=96, image_height=32, sweeps_per_keyframe=2
    )
    return generate(cfg, tmp_path_factory.mktemp("synth") / "two_val", log=lambda msg: None)


@pytest.fixture(scope="module")
def dataset(synth_two_val):
    from bevlabels.datasets.nuscenes import NuScenesDataset

    return NuScenesDataset(synth_two_val, version="v1.0-mini")


def _gt_results(ds, scenes, tmp_path: Path, drop: int = 0) -> Path:
    """GT boxes of every keyframe of ``scenes`` (less the last ``drop``) as a result file, through our chain."""
    from bevlabels.datasets.nuscenes import NUSCENES_CLASSES
    from bevlabels.grid import GridSpec
    from trainer.data.common import gt_for_frame
    from trainer.nusc_results import make_results, write_results

    grid = GridSpec.from_dict({"xbound": [-60.0, 60.0, 0.8], "ybound": [-60.0, 60.0, 0.8], "zbound": [-5, 3, 8]})
    frames = [f for s in scenes for f in ds.keyframes(s)]
    frames = frames[: len(frames) - drop]
    preds = []
    for f in frames:
        b, lab = gt_for_frame(f, NUSCENES_CLASSES, grid)
        preds.append({"sample_token": f.token, "boxes": b, "scores": torch.ones(len(b)), "labels": lab})
    results = make_results(
        preds, {f.token: f.global_from_ego for f in frames}, NUSCENES_CLASSES, use_lidar=True,
        all_tokens=[f.token for f in frames],
    )  # fmt: skip
    return write_results(tmp_path / "results.json", results)


def test_gt_of_one_scene_scores_perfectly_on_that_scene(dataset, tmp_path):
    """The GT is restricted to the predicted keyframes: the other scene's objects are not counted as misses."""
    from trainer.eval.nusc_detection import run_detection_eval

    scenes = dataset.scenes("mini_val")
    assert len(scenes) == 2
    summary, _ = run_detection_eval(dataset.nusc, _gt_results(dataset, scenes[:1], tmp_path), "mini_val", tmp_path)
    assert summary["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    assert summary["evaluated"] == {
        "eval_set": "mini_val",
        "partial": True,
        "scenes": [scenes[0]],
        "keyframes": 3,
        "split_scenes": 2,
        "split_keyframes": 6,
    }


def test_results_missing_a_keyframe_of_an_evaluated_scene_are_refused(dataset, tmp_path):
    from trainer.eval.nusc_detection import run_detection_eval

    scenes = dataset.scenes("mini_val")
    path = _gt_results(dataset, scenes, tmp_path, drop=1)  # the last keyframe of the second scene
    with pytest.raises(ValueError, match=rf"miss 1 of the 3 keyframes of scene {scenes[1]}"):
        run_detection_eval(dataset.nusc, path, "mini_val", tmp_path)


def test_results_outside_the_split_are_refused(dataset, tmp_path):
    from trainer.eval.nusc_detection import run_detection_eval

    path = _gt_results(dataset, dataset.scenes("mini_train"), tmp_path)
    with pytest.raises(ValueError, match="3 samples that are not in split mini_val"):
        run_detection_eval(dataset.nusc, path, "mini_val", tmp_path)


@pytest.fixture(scope="module")
def partial_run(synth_two_val, compose_train, tmp_path_factory) -> Path:
    """A tiny teacher trained for one step with ``data.limit_scenes=1``: its last checkpoint."""
    from trainer.train import train

    run_dir = tmp_path_factory.mktemp("partial_run")
    overrides = [
        *TINY_TEACHER, f"dataset.root={synth_two_val}", f"run_dir={run_dir}", "data.limit_scenes=1",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
    ]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Path(train(compose_train(overrides))["last_ckpt"])
    finally:
        torch.set_num_threads(before)


def test_evaluate_a_run_trained_on_part_of_the_split(partial_run, dataset, tmp_path, capsys):
    from trainer.evaluate import evaluate

    first, second = dataset.scenes("mini_val")
    summary = evaluate(partial_run, out=tmp_path / "eval")
    assert summary["keyframes"] == 3 and 0.0 <= summary["nd_score"] <= 1.0
    evaluated = summary["evaluated"]
    assert evaluated["partial"] and evaluated["scenes"] == [first]
    assert (evaluated["keyframes"], evaluated["split_keyframes"], evaluated["split_scenes"]) == (3, 6, 2)
    written = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert written["evaluated"] == evaluated
    out = capsys.readouterr().out
    assert f"3 of 6 keyframes, 1 of 2 scenes ({first})" in out and "partial" in out

    # the same checkpoint on the whole split: limit_scenes=0 overrides the stored limit
    full = evaluate(partial_run, out=tmp_path / "full", limit_scenes=0)
    assert full["keyframes"] == 6 and not full["evaluated"]["partial"]
    assert full["evaluated"]["scenes"] == [first, second]
