"""Every dataset config composes with every experiment: its label space (classes, CenterPoint tasks, NMS radii), camera
count, crop band and grid reach the models and the data module (conf/dataset, conf/labelspace, conf/grid)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import trainer  # noqa: F401  (registers the ${len:...} resolver)
from bevlabels.datasets.av2 import AV2_CLASSES
from bevlabels.datasets.nuscenes import NUSCENES_CLASSES

CONF = Path(__file__).resolve().parents[2] / "conf"
DATASETS = {  # dataset -> (classes, cameras, grid chosen by the dataset)
    "synthetic": (NUSCENES_CLASSES, 6, "default"),
    "nuscenes": (NUSCENES_CLASSES, 6, "default"),
    "av2": (AV2_CLASSES, 7, "av2"),
    "av2_synthetic": (AV2_CLASSES, 7, "av2"),
}
EXPERIMENTS = ("bevdepth", "dvd", "dvd_temporal", "teacher_centerpoint_cpu", "bevdepth_tig")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_dataset_label_space_reaches_every_model(dataset, experiment):
    classes, cams, grid = DATASETS[dataset]
    cfg = compose([f"experiment={experiment}", f"dataset={dataset}", "dataset.root=/nowhere", "run_dir=/tmp/unused"])
    assert cfg.hydra.runtime.choices["grid"] == grid
    del cfg.hydra  # its sweep paths resolve only inside a run
    r = OmegaConf.to_container(cfg, resolve=True)
    assert tuple(r["class_names"]) == tuple(classes) == tuple(r["model"]["class_names"])
    assert tuple(r["data"]["class_names"]) == tuple(classes)
    head = r["model"]["detector"]["head"]
    if "tasks" in head:  # CenterHead: every class in exactly one task, each with an NMS radius
        grouped = [c for t in head["tasks"] for c in t["classes"]]
        assert sorted(grouped) == sorted(classes) and len(grouped) == len(set(grouped))
        assert set(head["nms_radius"]) == set(classes)
    else:  # the sparse head: one logit per class, per-camera weights for the dataset's rig
        assert head["num_classes"] == len(classes)
        if "pv_agg" in head and head["pv_agg"]:
            assert head["pv_agg"]["num_cams"] == cams
    if "image_aug" in r["data"]:
        assert r["data"]["image_aug"]["bottom_crop_range"] == r["dataset"]["image_bottom_crop"]


def test_a_grid_on_the_command_line_wins_over_the_datasets():
    cfg = compose(["experiment=dvd", "dataset=av2", "dataset.root=/nowhere", "grid=near", "run_dir=/tmp/unused"])
    assert cfg.hydra.runtime.choices["grid"] == "near" and list(cfg.grid.xbound) == [-32.0, 32.0, 1.0]


def test_an_experiment_may_narrow_the_label_space():
    cfg = compose(["experiment=bevdepth", "class_names=[car,pedestrian]", "run_dir=/tmp/unused",
                   "model.detector.head.tasks=[{classes:[car]},{classes:[pedestrian]}]"])  # fmt: skip
    del cfg.hydra
    r = OmegaConf.to_container(cfg, resolve=True)
    assert r["model"]["class_names"] == ["car", "pedestrian"] == r["data"]["class_names"]
