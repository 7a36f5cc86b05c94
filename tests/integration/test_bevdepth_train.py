"""The camera student end to end on the tiny synthetic world: configs build, fast_dev_run of both experiments,
a short run whose checkpoint alone rebuilds and evaluates the model (DetectionEval + foreground depth metrics),
and the prediction PNGs.

The real configs (``experiment=bevdepth`` / ``bevdepth_dino``) are composed (tests/conftest.py's
``compose_train``) and shrunk, as lightning-hydra-template's tests do; the label store is conftest's
``synth_tiny_store`` (``grid=near``, 32-channel random features).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("bevdepth", "bevdepth_dino")

from conftest import TINY_CAMERA_MODEL as TINY_MODEL  # noqa: E402  (tests/conftest.py)


def train_overrides(
    experiment: str, root: Path, store: Path, run_dir: Path, *extra: str, tiny: bool = True, dataset: str = "synthetic"
) -> list[str]:
    out = [
        f"experiment={experiment}",
        f"dataset={dataset}",
        f"dataset.root={root}",
        "grid=near",
        f"data.label_store={store}",
        "data.batch_size=2",
        "data.num_workers=0",
        f"run_dir={run_dir}",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        *(TINY_MODEL if tiny else []),
    ]
    if experiment == "bevdepth_dino":
        out.append("model.detector.distill_channels=32")  # the test store's tiny features
    return out + list(extra)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_config_group_of_the_experiment_builds(experiment, compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """The unshrunk default model and the data module instantiate from the composed config."""
    from hydra.utils import instantiate

    from trainer.data.camera import CameraDataModule
    from trainer.lit_bevdepth import BEVDepthModule

    cfg = compose_train(train_overrides(experiment, synth_tiny, synth_tiny_store, tmp_path, tiny=False))
    model = instantiate(cfg.model)
    assert isinstance(model, BEVDepthModule) and model.detector.bins.num == 112
    assert (model.detector.distill is not None) == (experiment == "bevdepth_dino")
    dm = instantiate(cfg.data)
    assert isinstance(dm, CameraDataModule) and dm.depth_stride == 16 and dm.load_dino == (experiment != "bevdepth")
    for name in ("trainer", "callbacks", "logger"):
        assert cfg.get(name) is not None


def test_distillation_refuses_a_store_of_other_channels(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.train import train

    cfg = compose_train(
        train_overrides("bevdepth_dino", synth_tiny, synth_tiny_store, tmp_path, "debug=fdr")
        + ["model.detector.distill_channels=384"]
    )
    with pytest.raises(ValueError, match="distill_channels=32"):
        train(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run(experiment, compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.train import train

    cfg = compose_train(train_overrides(experiment, synth_tiny, synth_tiny_store, tmp_path, "debug=fdr"))
    result = train(cfg)
    metrics = result["metrics"]
    assert result["global_step"] == 1
    for key in ("train/loss", "train/det", "train/depth", "val/loss"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), (key, metrics)
    assert ("train/distill" in metrics) == (experiment == "bevdepth_dino")


@pytest.fixture(scope="module")
def short_run(compose_train, synth_tiny, synth_tiny_store, tmp_path_factory):
    """One epoch of two steps of bevdepth_dino (and one validation batch), checkpoints written."""
    from trainer.train import train

    run_dir = tmp_path_factory.mktemp("bevdepth_run")
    extra = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "logger=csv"]
    cfg = compose_train(train_overrides("bevdepth_dino", synth_tiny, synth_tiny_store, run_dir, *extra))
    result = train(cfg)
    assert result["last_ckpt"] is not None
    return Path(result["last_ckpt"])


def test_checkpoint_alone_rebuilds_and_evaluates_the_model(short_run, tmp_path):
    from trainer.evaluate import evaluate
    from trainer.lit_base import load_checkpoint
    from trainer.lit_bevdepth import BEVDepthModule

    loaded = load_checkpoint(short_run)
    assert isinstance(loaded.model, BEVDepthModule) and loaded.global_step == 2
    summary = evaluate(short_run, split="val", out=tmp_path / "eval")
    assert 0.0 <= summary["nd_score"] <= 1.0 and summary["eval_set"] == "mini_val"
    extra = summary["extra"]
    assert extra["fg_depth/pixels"] > 1000  # foreground LiDAR pixels of the 4 val keyframes
    for k in ("silog", "abs_rel", "sq_rel", "log10", "rmse"):
        assert extra[f"fg_depth/{k}"] >= 0.0
    assert (tmp_path / "eval" / "extra_metrics.json").is_file()


def test_render_predictions_writes_bev_and_camera_pngs(short_run, tmp_path):
    """scripts/render_predictions.py as a user runs it: it prints the PNGs it wrote."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "scripts/render_predictions.py", f"ckpt={short_run}", "split=val", "n=2"]
    cmd += [f"out={tmp_path / 'png'}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    paths = [Path(line) for line in r.stdout.splitlines() if line.endswith(".png")]
    assert len(paths) == 2 and all(p.stat().st_size > 10_000 for p in paths), paths
    assert all(p.parent == tmp_path / "png" for p in paths)
