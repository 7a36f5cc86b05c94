"""Shared pytest fixtures. Keep each one small and self-contained; add new fixtures below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.tiny import TINY_CAMERA, TINY_CENTER_HEAD


def realdata_root() -> Path:
    """The shared real-data folder: ``$BEVLABELS_REALDATA``, else ``../shared/realdata`` beside the repo."""
    env = os.environ.get("BEVLABELS_REALDATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real-data folder (see ``realdata_root``); skips the test when it is absent."""
    root = realdata_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set BEVLABELS_REALDATA to its folder)")
    return root


@pytest.fixture(scope="session")
def nuscenes_demo(realdata: Path) -> Path:
    """The real nuScenes demo root (one v1.0-mini keyframe of scene-0061); skips when absent."""
    root = realdata / "nuscenes-demo"
    if not (root / "v1.0-mini").is_dir():
        pytest.skip(f"nuScenes demo tables not found at {root / 'v1.0-mini'}")
    return root


@pytest.fixture(scope="session")
def av2_sensor_log(realdata: Path) -> Path:
    """The real AV2 sensor-dataset log folder (``av2-sensor/val/<log_id>``, no images); skips when absent."""
    logs = sorted((realdata / "av2-sensor" / "val").glob("*/city_SE3_egovehicle.feather"))
    if not logs:
        pytest.skip(f"AV2 sensor log not found under {realdata / 'av2-sensor' / 'val'}")
    return logs[0].parent


# --- the synthetic world (bevlabels.synthetic) -------------------------------------------------


def nuscenes_dataset(root: Path, name: str = "synthetic") -> dict:
    """A ``conf/dataset`` config (the keys the commands read: name, root, version, adapter) of the nuScenes-format
    dataset at ``root`` (a synthetic world or the real keyframe), version ``v1.0-mini``."""
    adapter = {"_target_": "bevlabels.datasets.nuscenes.NuScenesDataset", "root": str(root), "version": "v1.0-mini"}
    return {"name": name, "root": str(root), "version": "v1.0-mini", "adapter": adapter}


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """A `tiny` synthetic nuScenes dataset (seed 0), generated once per session (~15 s).

    Version ``v1.0-mini``: scene-0061 (mini_train) and scene-0103 (mini_val), 4 keyframes each,
    six 352x128 cameras; every one of the ten classes has LiDAR points in range in each scene.
    """
    from bevlabels.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(SynthConfig.from_preset("tiny", seed=0), out, log=lambda msg: None)
    return out


@pytest.fixture(scope="session")
def av2_tiny(tmp_path_factory) -> Path:
    """The `tiny` preset (seed 0) as AV2 sensor logs (``pipelines.synth format=av2``): one train and one val log
    of 4 sweeps at 10 Hz, 7 ring cameras (352x266 landscape, ``ring_front_center`` 266x352 portrait)."""
    from bevlabels.synthetic import SynthConfig
    from bevlabels.synthetic.av2_generate import generate_av2

    out = tmp_path_factory.mktemp("synth_av2") / "av2-tiny"
    generate_av2(SynthConfig.from_preset("tiny", seed=0), out, log=lambda msg: None)
    return out


# --- Hydra configs of the stages --------------------------------------------------------------


@pytest.fixture(scope="session")
def compose_labels():
    """Compose ``conf/labels.yaml`` with overrides, as ``python -m pipelines.labels`` would."""
    from hydra import compose, initialize_config_dir

    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")

    def _compose(overrides: list[str], config_name: str = "labels"):
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)

    return _compose


# --- label stores -------------------------------------------------------------------------------

#: a one-layer, 32-channel random ViT: the label stage's features in seconds (tests only)
TINY_FEATURE_OVERRIDES = (
    "features.weights=random",
    "features.image_height=56",
    "+features.config_overrides={num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64}",
)


def build_tiny_store(compose_labels, dataset: str, root: Path, out: Path) -> Path:
    """Run the label stage on ``root`` (``dataset=<dataset>``) into ``out`` on ``grid=near`` with tiny random features."""
    pytest.importorskip("open3d")
    from pipelines.labels import run

    overrides = [
        f"dataset={dataset}",
        f"dataset.root={root}",
        f"out={out}",
        "grid=near",
        "cluster.processes=false",
        "cluster.n_workers=1",
        *TINY_FEATURE_OVERRIDES,
    ]
    summary = run(compose_labels(overrides))
    assert not summary["failures"], summary["failures"]
    return out


@pytest.fixture(scope="session")
def synth_tiny_store(synth_tiny, compose_labels, tmp_path_factory) -> Path:
    """The label store of ``synth_tiny`` on ``grid=near`` with tiny random features (C=32), built once (~20 s)."""
    return build_tiny_store(
        compose_labels, "synthetic", synth_tiny, tmp_path_factory.mktemp("labels") / "synthetic.zarr"
    )


@pytest.fixture(scope="session")
def av2_tiny_store(av2_tiny, compose_labels, tmp_path_factory) -> Path:
    """The label store of ``av2_tiny`` (``dataset=av2_synthetic``) on ``grid=near`` with tiny random features (C=32)."""
    out = tmp_path_factory.mktemp("labels_av2") / "av2_synthetic.zarr"
    return build_tiny_store(compose_labels, "av2_synthetic", av2_tiny, out)


#: the camera student at a few thousand parameters on 64x176 images (overrides of experiment=bevdepth, grid=near):
#: seconds per step on a CPU (trainer/tiny.py, which the smoke run uses too)
TINY_CAMERA_MODEL = [*TINY_CAMERA, *TINY_CENTER_HEAD]


@pytest.fixture(scope="session")
def compose_train():
    """Compose ``conf/train.yaml`` with overrides, as ``python -m trainer.train`` would.

    Give ``run_dir=...`` (a tmp folder): outside a Hydra run its default, Hydra's output dir, is unset.
    """
    from hydra import compose, initialize_config_dir

    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            return compose(config_name="train", overrides=overrides)

    return _compose
