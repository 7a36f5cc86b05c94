"""Label-scarce training end to end on the tiny synthetic world (``data.box_fraction``): the withheld scenes'
keyframes come without boxes and with ``has_boxes`` False, validation keeps every box, and a fast_dev_run of
BEVDepth (with distillation) and of DualViewDistill trains and records its choice in ``<run_dir>/box_scenes.json``.
"""

from __future__ import annotations

import json
import math

import pytest
import test_bevdepth_train as bevdepth  # tests/integration/: the shared overrides of each model
import test_dvd_train as dvd


def test_withheld_scenes_have_no_boxes_and_validation_keeps_them(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(
        bevdepth.train_overrides("bevdepth", synth_tiny, synth_tiny_store, tmp_path, "data.box_fraction=0.5")
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    scenes = dm.scenes("train")
    chosen = dm.box_scenes
    assert 1 <= len(chosen) < len(scenes) or len(scenes) == 1
    train = dm.make_dataset(dm.frames("train"), train=True)
    seen = {True: 0, False: 0}
    for i, frame in enumerate(train.frames):
        if seen[frame.scene in chosen] >= 2:
            continue
        sample = train[i]
        assert bool(sample["has_boxes"]) == (frame.scene in chosen)
        if frame.scene not in chosen:
            assert len(sample["gt_boxes"]) == 0 and len(sample["gt_labels"]) == 0
            assert (sample["depth_map"] > 0).any()  # depth targets kept
        seen[frame.scene in chosen] += 1
    assert seen[False] > 0 or len(scenes) == 1
    val = dm.make_dataset(dm.frames("val"), train=False)
    assert bool(val[0]["has_boxes"])


@pytest.mark.parametrize(
    ("suite", "experiment", "extra"),
    [(bevdepth, "bevdepth_dino", ["model.loss.distill_object_weight=0.5"]), (dvd, "dvd", [])],
    ids=["bevdepth_dino_object_weighted", "dvd"],
)
def test_fast_dev_run_records_the_box_scenes(
    suite, experiment, extra, compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    """Both heads train with withheld boxes (BEVDepth with the object-weighted distillation too)."""
    from trainer.train import train

    cfg = compose_train(
        suite.train_overrides(
            experiment, synth_tiny, synth_tiny_store, tmp_path, "debug=fdr", "data.box_fraction=0.5", "seed=3", *extra
        )
    )
    result = train(cfg)
    assert result["global_step"] == 1
    record = json.loads((tmp_path / "box_scenes.json").read_text())
    assert record["box_fraction"] == 0.5 and record["box_fraction_seed"] == 3
    assert 1 <= len(record["box_scenes"]) <= record["train_scenes"]
    for key in ("train/loss", "train/det", "train/depth", "val/loss"):
        assert math.isfinite(result["metrics"][key]), (key, result["metrics"])
    assert ("train/distill" in result["metrics"]) == (experiment == "bevdepth_dino")
