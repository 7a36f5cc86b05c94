"""TiG-BEV's experiments end to end on the tiny synthetic world: configs build, fast_dev_run of each, the
data module's refusals, and the teacher map following the BEV augmentation.

The label store is a copy of conftest's ``synth_tiny_store`` (``grid=near``) with a teacher stage of random
16-channel maps written through the store's own writer, as ``pipelines.teacher`` does (training a teacher
here would test the teacher, which tests/integration/test_teacher.py does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import nuscenes_dataset  # tests/conftest.py

C_T = 16
EXPERIMENTS = ("bevdepth_tig", "bevdepth_tig_depth", "bevdepth_tig_bev", "dvd_tig")


@pytest.fixture(scope="module")
def teacher_store(synth_tiny_store, tmp_path_factory) -> Path:
    """synth_tiny_store plus teacher/bev: random (16, H, W) maps, every keyframe done."""
    from bevlabels.cache import LabelStoreReader, LabelStoreWriter
    from bevlabels.cache.schema import TEACHER

    store = Path(shutil.copytree(synth_tiny_store, tmp_path_factory.mktemp("tig") / "store.zarr"))
    H, W = LabelStoreReader(store).grid.shape
    gen = np.random.default_rng(0)
    with LabelStoreWriter.open(store) as writer:
        writer.add_stage(TEACHER, dims={"C_t": C_T, "H_t": H, "W_t": W}, identity={"checkpoint": "random maps (test)"})
        kw = writer.keyframe_writer("teacher")
        for s in range(len(LabelStoreReader(store).sample_tokens)):
            kw.write_keyframe_arrays(s, {"teacher/bev": np.abs(gen.normal(size=(C_T, H, W))).astype(np.float16)})
    assert LabelStoreReader(store).done_mask("teacher").all()
    return store


def overrides(experiment: str, root: Path, store: Path, run_dir: Path, *extra: str, tiny: bool = True) -> list[str]:
    """test_bevdepth_train's / test_dvd_train's overrides (tiny models), plus the test store's channels."""
    from test_bevdepth_train import train_overrides as bevdepth_overrides
    from test_dvd_train import train_overrides as dvd_overrides

    own = []
    if experiment != "bevdepth_tig_depth":
        own.append(f"model.tig.teacher_channels={C_T}")
    if experiment == "dvd_tig":
        own.append("model.detector.distill_channels=32")  # the test store's tiny features
    base = dvd_overrides if experiment.startswith("dvd") else bevdepth_overrides
    return base(experiment, root, store, run_dir, *own, *extra, tiny=tiny)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_config_group_of_the_experiment_builds(experiment, compose_train, synth_tiny, teacher_store, tmp_path):
    from hydra.utils import instantiate

    from trainer.lit_bevdepth import BEVDepthModule

    cfg = compose_train(overrides(experiment, synth_tiny, teacher_store, tmp_path, tiny=False))
    model = instantiate(cfg.model)
    assert isinstance(model, BEVDepthModule)
    tig = model.tig
    assert (tig.inner_depth_weight > 0) == (experiment != "bevdepth_tig_bev")
    assert tig.uses_teacher == (experiment != "bevdepth_tig_depth")
    assert (tig.adapter is not None) == tig.uses_teacher  # 64 student channels vs the test's 16
    dm = instantiate(cfg.data)
    assert dm.load_teacher == tig.uses_teacher


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run(experiment, compose_train, synth_tiny, teacher_store, tmp_path):
    from trainer.train import train

    result = train(compose_train(overrides(experiment, synth_tiny, teacher_store, tmp_path, "debug=fdr")))
    metrics = result["metrics"]
    assert result["global_step"] == 1
    expect = {
        "bevdepth_tig": ("tig_depth", "tig_ic", "tig_ik"),
        "bevdepth_tig_depth": ("tig_depth",),
        "bevdepth_tig_bev": ("tig_ic", "tig_ik"),
        "dvd_tig": ("tig_depth", "tig_ic", "tig_ik", "distill"),
    }[experiment]
    for part in ("loss", *expect):
        key = f"train/{part}"
        assert key in metrics and np.isfinite(metrics[key]), (key, sorted(metrics))
    for part in {"tig_depth", "tig_ic", "tig_ik"} - set(expect):
        assert f"train/{part}" not in metrics


def test_a_store_without_teacher_maps_or_with_other_channels_is_refused(
    compose_train, synth_tiny, synth_tiny_store, teacher_store, tmp_path
):
    from trainer.train import train

    with pytest.raises(FileNotFoundError, match="make teacher"):
        train(compose_train(overrides("bevdepth_tig", synth_tiny, synth_tiny_store, tmp_path, "debug=fdr")))
    with pytest.raises(ValueError, match="model.tig.teacher_channels is 8: set it to 16"):
        train(
            compose_train(
                overrides(
                    "bevdepth_tig_bev", synth_tiny, teacher_store, tmp_path, "debug=fdr", "model.tig.teacher_channels=8"
                )
            )
        )


def test_teacher_maps_follow_the_bev_augmentation(teacher_store, synth_tiny):
    """The sample's teacher_bev is the stored map resampled into the augmented frame (the same path as the
    DINOv2 grid): at the augmented cell of a stored cell's centre it reads that cell's value."""
    from bevlabels.grid import GridSpec
    from trainer.data.camera import CameraDataModule

    ds_cfg = nuscenes_dataset(synth_tiny)
    grid = GridSpec.from_yaml(Path(__file__).resolve().parents[2] / "conf" / "grid" / "near.yaml")
    dm = CameraDataModule(
        dataset=ds_cfg,
        grid=grid,
        class_names=["car", "pedestrian"],
        label_store=str(teacher_store),
        image_aug={"final_hw": [64, 176]},
        bev_aug={
            "rot_range": [np.pi / 2, np.pi / 2],
            "scale_range": [1.0, 1.0],
            "flip_x_prob": 1.0,
            "flip_y_prob": 0.0,
        },
        load_teacher=True,
        teacher_interp="nearest",
    )
    dm.setup("fit")
    dm.check_inputs()
    data = dm.make_dataset(dm.frames("train"), train=True)
    sample = data[0]
    stored = torch.from_numpy(np.asarray(data.reader.teacher_bev(data.reader.index_of(data.frames[0].token))))
    assert sample["teacher_bev"].shape == stored.shape == (C_T, *grid.shape)
    # a quarter turn then an x flip maps cells onto cells: nearest resampling is an exact permutation
    aug = sample["aug_from_ego"].double()
    centres = torch.as_tensor(grid.cell_centres(), dtype=torch.float64)  # (H, W, 2) ego x, y
    for iy, ix in ((3, 5), (20, 40), (63, 0)):
        p = aug @ torch.tensor([*centres[iy, ix].tolist(), 0.0, 1.0], dtype=torch.float64)
        jx, jy = (int(v) for v in np.floor(grid.metric_to_cell(p[:2].numpy())))
        torch.testing.assert_close(sample["teacher_bev"][:, jy, jx], stored[:, iy, ix])
