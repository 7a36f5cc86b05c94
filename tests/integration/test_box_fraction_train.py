"""Label-scarce training end to end on the tiny synthetic world (``data.box_fraction``): the withheld scenes'
keyframes come without boxes and with ``has_boxes`` False, a batch mixing them with labelled keyframes trains, and a
fast_dev_run of BEVDepth (with distillation) and of DualViewDistill trains and records its choice in
``<run_dir>/box_scenes.json``.
"""

from __future__ import annotations

import json
import math

import pytest
import test_bevdepth_train as bevdepth  # tests/integration/: the shared overrides of each model
import test_dvd_train as dvd
import torch


def test_withheld_scenes_have_no_boxes_and_a_mixed_batch_trains(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """The tiny world has one training scene (scene-0061) and one validation scene (scene-0103): box_fraction 0
    withholds the training scene's boxes. A batch of one keyframe of each (the validation scene's boxes kept) takes
    a step in which every parameter gets a gradient, and its detection loss is the labelled keyframe's alone."""
    from hydra.utils import instantiate

    cfg = compose_train(
        bevdepth.train_overrides("bevdepth_dino", synth_tiny, synth_tiny_store, tmp_path, "data.box_fraction=0.0")
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.box_scenes == [] and dm.withheld_scenes() == dm.scenes("train") == ["scene-0061"]
    frames = dm.frames("train") + dm.frames("val")
    data = dm.make_dataset(frames, train=False)  # no augmentation: the two passes below see the same inputs
    withheld, kept = data[0], data[len(dm.frames("train"))]
    assert not withheld["has_boxes"] and len(withheld["gt_boxes"]) == 0 and len(withheld["gt_labels"]) == 0
    assert (withheld["depth_map"] > 0).any() and (withheld["dino_count"] > 0).any()  # depth, distillation kept
    assert kept["has_boxes"] and len(kept["gt_boxes"]) > 0
    assert not dm.make_dataset(dm.frames("train"), train=True)[0]["has_boxes"]

    module = instantiate(cfg.model).eval()  # eval: BatchNorm's batch statistics would couple the two samples
    batch = dm.collate_fn([withheld, kept])
    assert batch["has_boxes"].tolist() == [False, True]
    losses = module.compute_loss(module(batch), batch)
    losses["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    alone = dm.collate_fn([kept])
    det_alone = module.compute_loss(module(alone), alone)["det"]
    torch.testing.assert_close(losses["det"], det_alone)


@pytest.mark.parametrize(
    ("suite", "experiment", "extra"),
    [(bevdepth, "bevdepth_dino", ["model.loss.distill_object_weight=0.5"]), (dvd, "dvd", [])],
    ids=["bevdepth_dino_object_weighted", "dvd"],
)
def test_fast_dev_run_records_the_box_scenes(
    suite, experiment, extra, compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    """Both heads train with every training box withheld (the tiny world's one training scene): the detection
    loss is an exact zero that keeps the graph, depth and distillation train (BEVDepth object-weighted too)."""
    from trainer.train import train

    cfg = compose_train(
        suite.train_overrides(
            experiment, synth_tiny, synth_tiny_store, tmp_path, "debug=fdr", "data.box_fraction=0.0", "seed=3", *extra
        )
    )
    result = train(cfg)
    assert result["global_step"] == 1
    record = json.loads((tmp_path / "box_scenes.json").read_text())
    assert record["box_fraction"] == 0.0 and record["box_fraction_seed"] == 3
    assert record["box_scenes"] == [] and record["train_scenes"] == 1
    assert result["metrics"]["train/det"] == 0.0  # the one training scene's boxes withheld: an exact zero
    for key in ("train/loss", "train/det", "train/depth", "val/loss"):
        assert math.isfinite(result["metrics"][key]), (key, result["metrics"])
    assert ("train/distill" in result["metrics"]) == (experiment == "bevdepth_dino")


def test_without_box_fraction_the_batch_is_todays(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """box_fraction 1.0 (the default): no ``has_boxes`` key, so every loss takes its unmasked path, as before."""
    from hydra.utils import instantiate

    dm = instantiate(compose_train(bevdepth.train_overrides("bevdepth", synth_tiny, synth_tiny_store, tmp_path)).data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.box_fraction == 1.0 and dm.box_scenes is None
    assert "has_boxes" not in dm.make_dataset(dm.frames("train"), train=True)[0]
