"""The oracle-input upper bound (``experiment=bevdepth_oracle_input``): the store's grid handed to the CenterHead.

A fast_dev_run trains it on the tiny synthetic world's store (32-channel random features stand in for the oracle's:
the mechanism is what is tested, not the map's knowledge); every parameter gets a gradient; the map reaches the
head (zeroing it changes the head's output); the resampling to a coarser BEV map is the occupied cells' mean.
"""

from __future__ import annotations

import json
import math

import pytest
import test_bevdepth_train as bevdepth  # tests/integration/: the shared overrides
import torch

from trainer.models.components.map_input import MapInput, resample_map

ORACLE = ("model.detector.map_input.map_channels=32",)  # the test store's tiny features


def _overrides(root, store, run_dir, *extra):
    return bevdepth.train_overrides("bevdepth_oracle_input", root, store, run_dir, *ORACLE, *extra)


def test_config_builds_without_distillation(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(_overrides(synth_tiny, synth_tiny_store, tmp_path))
    model = instantiate(cfg.model)
    assert isinstance(model.detector.map_input, MapInput) and model.detector.distill is None
    assert model.loss_weights["distill_weight"] == 0.0 and cfg.data.load_dino
    with pytest.raises(Exception, match="distill_weight=0"):
        instantiate(
            compose_train(
                _overrides(
                    synth_tiny,
                    synth_tiny_store,
                    tmp_path,
                    "model.detector.distill_channels=32",
                    "model.loss.distill_weight=7.0",
                )
            ).model
        )


@pytest.mark.parametrize("mode", ["concat", "replace"])
def test_every_parameter_gets_a_gradient_and_the_map_reaches_the_head(
    mode, compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    from hydra.utils import instantiate

    cfg = compose_train(_overrides(synth_tiny, synth_tiny_store, tmp_path, f"model.detector.map_input.mode={mode}"))
    module = instantiate(cfg.model)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.collate_fn([dm.make_dataset(dm.frames("train"), train=True)[i] for i in range(2)])
    module.train()
    losses = module.compute_loss(module(batch), batch)
    losses["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient (DDP would refuse them): {missing}"
    assert module.detector.map_input.adapter.weight.grad.abs().sum() > 0

    module.eval()
    with torch.no_grad():
        out = module(batch)
        zeroed = module({**batch, "dino_feat": torch.zeros_like(batch["dino_feat"])})
    assert "camera_bev" in out
    hm, hm0 = out["preds"][0]["hm"], zeroed["preds"][0]["hm"]
    assert (hm - hm0).abs().max() > 1e-6, "the given map does not reach the head"


def test_fast_dev_run(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.train import train

    result = train(compose_train(_overrides(synth_tiny, synth_tiny_store, tmp_path, "debug=fdr")))
    assert result["global_step"] == 1
    for key in ("train/loss", "train/det", "train/depth", "val/loss"):
        assert math.isfinite(result["metrics"][key]), (key, result["metrics"])
    assert "train/distill" not in result["metrics"]


def test_resample_map_is_the_occupied_cells_mean_on_a_coarser_grid():
    feat = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    count = torch.zeros(1, 4, 4, dtype=torch.int32)
    count[0, 0, 0] = count[0, 0, 1] = 1  # two occupied cells in the top-left 2x2 block, none in the others
    out, occ = resample_map(feat, count, (2, 2))
    assert out.shape == (1, 1, 2, 2) and occ.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(0.5))  # mean of cells 0 and 1 only
    torch.testing.assert_close(occ[0, 0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert out[0, 0, 1, 1] == 0  # no occupied cell: nothing
    same, occ_same = resample_map(feat, count, (4, 4))
    assert same[0, 0, 0, 1] == 1 and same[0, 0, 3, 3] == 0 and occ_same.sum() == 2  # empty cells read as empty
    with pytest.raises(ValueError, match="map_channels"):
        MapInput(8, 3)(torch.zeros(1, 8, 4, 4), torch.zeros(1, 2, 4, 4), count)


def test_the_sparse_head_takes_the_map_too(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """The same component on DualViewDistill (config only): it trains, every parameter gets a gradient, and the
    map reaches the head's queries."""
    import test_dvd_train as dvd
    from hydra.utils import instantiate

    cfg = compose_train(
        dvd.train_overrides(
            "dvd",
            synth_tiny,
            synth_tiny_store,
            tmp_path,
            "data.load_dino=true",
            "+model.detector.map_input._target_=trainer.models.components.map_input.MapInput",
            "+model.detector.map_input.bev_channels=${model.detector.camera_bev.bev_encoder.out_channels}",
            "+model.detector.map_input.map_channels=32",
        )
    )
    module = instantiate(cfg.model)
    assert isinstance(module.detector.map_input, MapInput)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.collate_fn([dm.make_dataset(dm.frames("train"), train=True)[i] for i in range(2)])
    module.train()
    module.compute_loss(module(batch), batch)["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    module.eval()
    with torch.no_grad():
        cls = module(batch)["layers"][-1]["cls"]
        cls0 = module({**batch, "dino_feat": torch.zeros_like(batch["dino_feat"])})["layers"][-1]["cls"]
    assert (cls - cls0).abs().max() > 1e-6


def test_a_short_run_evaluates_from_its_checkpoint_alone(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """Two steps (label-scarce too), then the evaluator rebuilds the model and its data from the checkpoint: the
    prediction pass hands the store's grid to the head as training did; the CSV logger holds the box scenes."""
    from trainer.evaluate import evaluate
    from trainer.train import train

    extra = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "logger=csv"]
    run = tmp_path / "run"
    result = train(compose_train(_overrides(synth_tiny, synth_tiny_store, run, *extra, "data.box_fraction=0.5")))
    assert result["last_ckpt"] is not None
    summary = evaluate(result["last_ckpt"], split="val", out=tmp_path / "eval")
    assert 0.0 <= summary["nd_score"] <= 1.0
    hparams = "\n".join(p.read_text() for p in run.rglob("hparams.yaml"))
    chosen = json.loads((run / "box_scenes.json").read_text())["box_scenes"]
    assert "data/box_scenes" in hparams and all(s in hparams for s in chosen)
