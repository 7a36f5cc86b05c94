"""The LiDAR teacher end to end on the tiny synthetic world: every config group, fast_dev_run, train -> evaluate -> resume, the cache stage, bad inputs.

The real configs are composed (``conf/train.yaml``, ``conf/teacher.yaml``) and shrunk: a CenterPoint
of 8/16 channels on ``grid=near`` (64 x 64 cells), two sweeps per keyframe, no DataLoader workers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import nuscenes_dataset  # tests/conftest.py

from trainer.tiny import TINY_TEACHER as _TINY_TEACHER

CONF = Path(__file__).resolve().parents[2] / "conf"

#: a CenterPoint of a few thousand parameters: the real experiment's structure in seconds
TINY_TEACHER = (
    *_TINY_TEACHER,  # trainer/tiny.py
    "data.batch_size=2",
    "data.num_workers=0",
    "threads=1",
)


def teacher_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=teacher_centerpoint",
        f"dataset.root={root}",
        "grid=near",
        f"run_dir={run_dir}",
        "trainer.enable_model_summary=false",
        *TINY_TEACHER,
        *extra,
    ]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: tiny convolutions only contend with threads
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Configs


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_model_data_and_experiment_config_builds(compose_train, synth_tiny, tmp_path):
    """Instantiate each conf/model/*, conf/data/* and the model and data of each conf/experiment/*."""
    from hydra.utils import instantiate

    from trainer.lit_base import DetectionModule

    base = [f"dataset.root={synth_tiny}", f"run_dir={tmp_path}"]
    built = []
    for model in _options("model"):
        m = instantiate(compose_train([*base, f"model={model}"]).model)
        assert isinstance(m, DetectionModule), model
        built.append(f"model={model}")
    for data in _options("data"):
        dm = instantiate(compose_train([*base, f"data={data}"]).data)
        assert dm.split_name("val") == "mini_val", data
        built.append(f"data={data}")
    for exp in _options("experiment"):
        cfg = compose_train([*base, f"experiment={exp}"])
        assert isinstance(instantiate(cfg.model), DetectionModule), exp
        instantiate(cfg.data)
        instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        built.append(f"experiment={exp}")
    assert {"model=centerpoint", "data=lidar", "experiment=teacher_centerpoint"} <= set(built)


def test_teacher_model_takes_the_grid_from_conf_grid(compose_train, synth_tiny, tmp_path):
    from hydra.utils import instantiate

    for grid, shape in (("default", (128, 128)), ("near", (64, 64))):
        cfg = compose_train(teacher_overrides(synth_tiny, tmp_path, f"grid={grid}"))
        assert instantiate(cfg.model).out_grid.shape == shape


# ---------------------------------------------------------------------------------------------
# Data


def test_lidar_samples_multi_sweep_in_key_ego_frame(synth_tiny):
    from bevlabels.conf import load_grid
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from trainer.data.lidar import LidarKeyframes, load_sweeps

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    frame = ds.keyframes(ds.scenes()[0])[2]  # has earlier sweeps
    assert len(frame.prev_sweeps) >= 2
    pts = load_sweeps(ds, frame, n_sweeps=3)
    dts = np.unique(pts[:, 4])
    assert len(dts) == 3 and dts[0] == 0.0 and 0.0 < dts[1] < dts[2] < 0.2  # 20 Hz sweeps: 0.05 s apart
    key = pts[pts[:, 4] == 0]
    np.testing.assert_allclose(key[:, :3], load_sweeps(ds, frame, n_sweeps=1)[:, :3])  # keyframe sweep alone
    adapter = {
        "_target_": "bevlabels.datasets.nuscenes.NuScenesDataset",
        "root": str(synth_tiny),
        "version": "v1.0-mini",
    }
    aug = {"rot_range": [0.5, 0.5], "scale_range": [1.0, 1.0], "flip_x_prob": 0.0, "flip_y_prob": 0.0}
    grid = load_grid("near")
    plain = LidarKeyframes([frame], adapter, grid, ds.classes, n_sweeps=1)[0]
    turned = LidarKeyframes([frame], adapter, grid, ds.classes, n_sweeps=1, augment=aug, train=True)[0]
    assert plain["gt_boxes"].shape[1] == 9 and len(plain["gt_labels"]) == len(plain["gt_boxes"]) > 0
    assert torch.equal(plain["aug_from_ego"], torch.eye(4)) and not torch.equal(turned["aug_from_ego"], torch.eye(4))
    r_plain, r_turned = plain["points"][:, :2].norm(dim=1), turned["points"][:, :2].norm(dim=1)
    # A rotation keeps ranges; the grid crop differs at the square's corners only.
    assert abs(len(r_plain) - len(r_turned)) < 0.2 * len(r_plain)
    assert r_turned.max() <= r_plain.max() + 1e-3 + 32 * (2**0.5 - 1) * 2


def test_points_with_nan_are_an_error_naming_the_sweep_file(synth_tiny):
    from bevlabels.datasets.base import DatasetError
    from bevlabels.datasets.nuscenes import NuScenesDataset
    from trainer.data.lidar import load_sweeps

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    frame = ds.keyframes(ds.scenes()[0])[1]

    class NaNPoints:
        def load_points(self, sweep):
            pts = ds.load_points(sweep)
            pts[::50, 1] = np.nan
            return pts

    with pytest.raises(DatasetError, match=rf"points of sweep .*{frame.lidar.path.name}.*non-finite"):
        load_sweeps(NaNPoints(), frame, n_sweeps=2)


def test_data_module_refuses_missing_or_mismatched_label_stores(synth_tiny, tmp_path):
    from bevlabels.cache import StoreError, StoreMismatchError
    from trainer.data.lidar import LidarDataModule

    dataset = nuscenes_dataset(synth_tiny)
    near = {"xbound": [-32.0, 32.0, 1.0], "ybound": [-32.0, 32.0, 1.0], "zbound": [-5.0, 3.0, 8.0]}
    kw = dict(dataset=dataset, grid=near, class_names=["car"], store_stages=["teacher"])
    with pytest.raises(FileNotFoundError, match="label store .*absent.zarr not found"):
        LidarDataModule(label_store=str(tmp_path / "absent.zarr"), **kw).check_inputs()
    store = make_store(synth_tiny, tmp_path / "default.zarr", "default")
    with pytest.raises(StoreMismatchError, match="grid"):
        LidarDataModule(label_store=str(store), **kw).check_inputs()
    kw["grid"] = {"xbound": [-51.2, 51.2, 0.8], "ybound": [-51.2, 51.2, 0.8], "zbound": [-5.0, 3.0, 8.0]}
    with pytest.raises(StoreError, match="no 'teacher' stage"):
        LidarDataModule(label_store=str(store), **kw).check_inputs()


# ---------------------------------------------------------------------------------------------
# Training, evaluation, resume


def test_fast_dev_run_of_the_teacher_experiment(compose_train, synth_tiny, tmp_path):
    from trainer.train import train

    out = train(compose_train(teacher_overrides(synth_tiny, tmp_path, "debug=fdr")))
    assert out["global_step"] == 1
    assert np.isfinite(out["metrics"]["train/loss_step"]) and np.isfinite(out["metrics"]["val/loss"])


@pytest.fixture(scope="module")
def trained(synth_tiny, compose_train, tmp_path_factory):
    """A teacher trained for 2 steps (one epoch of 2 batches) on the tiny world: ``(result, run_dir)``."""
    from trainer.train import train

    run_dir = tmp_path_factory.mktemp("teacher_run")
    overrides = teacher_overrides(
        synth_tiny, run_dir, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"
    )
    torch.set_num_threads(1)
    return train(compose_train(overrides)), run_dir


def test_checkpoints_carry_the_resolved_config(trained):
    from trainer.lit_base import CONFIG_KEY

    result, run_dir = trained
    assert result["global_step"] == 2 and Path(result["last_ckpt"]) == run_dir / "checkpoints" / "last.ckpt"
    config = torch.load(result["last_ckpt"], map_location="cpu", weights_only=False)[CONFIG_KEY]
    assert config["model"]["detector"]["voxelizer"]["xbound"] == [-32.0, 32.0, 1.0]  # ${grid.xbound}, resolved
    assert config["data"]["dataset"]["root"] == config["dataset"]["root"] and "${" not in json.dumps(config)
    assert (run_dir / "csv").is_dir()
    if not torch.cuda.is_available():  # trainer=auto (the default) on a CPU machine: what ran, and what train printed
        assert (result["device"], result["precision"]) == ("cpu", "32-true")
        assert result["ran"] == "device cpu, 1 process, precision 32-true"
        assert config["trainer"]["accelerator"] == "cpu" and config["trainer"]["precision"] == "32-true"


def test_evaluate_from_the_checkpoint_alone(trained, tmp_path, capsys):
    from trainer.evaluate import evaluate

    result, _ = trained
    summary = evaluate(result["last_ckpt"], out=tmp_path / "eval")
    if not torch.cuda.is_available():  # evaluate's device=auto on a CPU machine, said in the printout
        assert (summary["device"], summary["precision"]) == ("cpu", "32-true")
        assert "predicted on: device cpu, 1 process, precision 32-true" in capsys.readouterr().out
    assert summary["eval_set"] == "mini_val" and summary["keyframes"] == 4
    for key in ("nd_score", "mean_ap"):
        assert 0.0 <= summary[key] <= 1.0
    assert set(summary["mean_dist_aps"]) == {
        "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
        "traffic_cone", "barrier",
    }  # fmt: skip
    written = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert written["nd_score"] == pytest.approx(summary["nd_score"])
    results = json.loads((tmp_path / "eval" / "results_nusc.json").read_text())
    assert len(results["results"]) == 4 and results["meta"]["use_lidar"] and not results["meta"]["use_camera"]


def test_resume_from_last_ckpt_continues_the_step_count(trained, compose_train, synth_tiny, tmp_path):
    from trainer.train import train

    result, _ = trained
    overrides = teacher_overrides(
        synth_tiny,
        tmp_path,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        f"ckpt_path={result['last_ckpt']}",
    )
    resumed = train(compose_train(overrides))
    assert resumed["global_step"] == 4  # 2 steps before, 2 in the second epoch
    state = torch.load(resumed["last_ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    # PreciseBN recomputed the statistics from the 2 training batches there are, not from the 4 steps
    assert state["detector.backbone.blocks.0.0.1.num_batches_tracked"].item() == 2


def test_a_run_stopped_inside_an_epoch_leaves_last_ckpt_at_its_step(compose_train, synth_tiny, tmp_path):
    """max_steps (like max_time) can stop inside an epoch: last.ckpt still holds the final step and the config."""
    from trainer.lit_base import load_checkpoint
    from trainer.train import train

    overrides = teacher_overrides(
        synth_tiny,
        tmp_path,
        "trainer.max_steps=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "model.scheduler=null",
    )
    out = train(compose_train(overrides))
    assert out["global_step"] == 1 and load_checkpoint(out["last_ckpt"]).global_step == 1


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(trained, tmp_path):
    from trainer.lit_base import CONFIG_KEY, CheckpointError, load_checkpoint

    result, _ = trained
    ckpt = torch.load(result["last_ckpt"], map_location="cpu", weights_only=False)
    ckpt[CONFIG_KEY]["model"]["detector"]["head"]["share_conv_channels"] = 12  # another model than the weights
    ckpt[CONFIG_KEY]["model"]["detector"]["head"]["common_heads"].pop("vel")
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"unexpected keys .*vel.*shape mismatches .*shared_conv"):
        load_checkpoint(tmp_path / "bad.ckpt")
    del ckpt["bevlabels_config"]
    torch.save(ckpt, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="holds no resolved config"):
        load_checkpoint(tmp_path / "bare.ckpt")


# ---------------------------------------------------------------------------------------------
# The cache stage


def make_store(root: Path, out: Path, grid: str, keep=None) -> Path:
    """A label-stage template (no labels written) over the dataset's keyframes, as the teacher stage needs."""
    from bevlabels.cache import LabelStoreWriter
    from bevlabels.conf import load_grid
    from bevlabels.datasets.nuscenes import NuScenesDataset

    ds = NuScenesDataset(root, version="v1.0-mini")
    frames = [f for s in ds.scenes() for f in ds.keyframes(s)]
    frames = frames if keep is None else [f for f in frames if keep(f)]
    adapter = {"_target_": "bevlabels.datasets.nuscenes.NuScenesDataset", "root": str(root), "version": "v1.0-mini"}
    LabelStoreWriter.create_or_open(
        out,
        sample_tokens=[f.token for f in frames],
        scenes=[f.scene for f in frames],
        grid=load_grid(grid),
        dataset={"name": "synthetic", "version": "v1.0-mini", "root": str(root)},
        feature_model={"name": "none", "weights": "random-init"},
        channels=1,
        config={"dataset": {"adapter": adapter}},
    ).close()
    return out


def teacher_cfg(ckpt, store, *extra: str):
    from hydra import compose, initialize_config_dir

    overrides = [f"ckpt={ckpt}", f"store={store}", "cluster.processes=false", "cluster.n_workers=1", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="teacher", overrides=overrides)


def test_cache_stage_writes_teacher_bev_and_resumes(trained, synth_tiny_store, tmp_path):
    """On a real label store (labels stage done, grid=near): teacher/bev (S, 16, 64, 64) float16, then a rerun skips."""
    from bevlabels.cache import LabelStoreReader
    from pipelines.teacher import run
    from trainer.lit_base import load_checkpoint

    result, _ = trained
    store = shutil.copytree(synth_tiny_store, tmp_path / "store.zarr")
    first = run(teacher_cfg(result["last_ckpt"], store))
    assert first["keyframes_done_now"] == 8 and not first["failures"]
    reader = LabelStoreReader(store)
    assert reader.done_mask("teacher").all() and reader.done.all()  # the labels stage untouched
    bev = reader.teacher_bev(3)
    assert bev.shape == (16, 64, 64) and bev.dtype == np.float16 and np.abs(bev).sum() > 0
    identity = reader.stages["teacher"]["identity"]
    loaded = load_checkpoint(result["last_ckpt"])
    assert identity["checkpoint"] == str(Path(result["last_ckpt"]).resolve())
    assert identity["state_dict_sha256"] == loaded.state_dict_sha256 and identity["resample"] is None
    assert identity["teacher_grid"]["xbound"] == [-32.0, 32.0, 1.0]
    # the stored map is the teacher's neck output for that keyframe
    from trainer.data.common import get_adapter
    from trainer.data.lidar import crop_to_grid, load_sweeps

    adapter = get_adapter(reader.attrs["config"]["dataset"]["adapter"])
    frame = adapter.frame(str(reader.sample_tokens[3]))
    pts = torch.from_numpy(crop_to_grid(load_sweeps(adapter, frame, n_sweeps=2), loaded.model.out_grid))
    with torch.no_grad():
        ref = loaded.model({"points": torch.cat([pts.new_zeros(len(pts), 1), pts], 1), "sample_token": ["x"]})["bev"]
    np.testing.assert_allclose(bev.astype(np.float32), ref[0].numpy(), rtol=2e-3, atol=2e-3)

    again = run(teacher_cfg(result["last_ckpt"], store))
    assert again["keyframes_done_now"] == 0 and again["keyframes_skipped"] == 8


def test_cache_stage_refuses_a_grid_mismatch_or_resamples_and_records_it(trained, synth_tiny, tmp_path):
    from bevlabels.cache import LabelStoreReader
    from pipelines.teacher import GridMismatchError, run

    result, _ = trained
    store = make_store(synth_tiny, tmp_path / "default.zarr", "default")
    with pytest.raises(
        GridMismatchError, match=r"store .* grid default \(.*0.8 m cells, 128x128\).*grid near \(.*64x64\)"
    ):
        run(teacher_cfg(result["last_ckpt"], store))
    summary = run(teacher_cfg(result["last_ckpt"], store, "resample=true"))
    assert summary["keyframes_done_now"] == 8
    reader = LabelStoreReader(store)
    assert reader.teacher_bev(0).shape == (16, 128, 128)
    resample = reader.stages["teacher"]["identity"]["resample"]
    assert resample["mode"] == "bilinear" and resample["from_grid"]["xbound"] == [-32.0, 32.0, 1.0]
    assert resample["to_grid"]["xbound"] == [-51.2, 51.2, 0.8]


def test_cache_stage_refuses_a_store_without_the_dataset_keyframes(trained, synth_tiny, tmp_path):
    from pipelines.teacher import run

    result, _ = trained
    from bevlabels.datasets.nuscenes import NuScenesDataset

    ds = NuScenesDataset(synth_tiny, version="v1.0-mini")
    dropped = ds.keyframes(ds.scenes()[0])[-1].token
    store = make_store(synth_tiny, tmp_path / "partial.zarr", "near", keep=lambda f: f.token != dropped)
    with pytest.raises(ValueError, match=rf"scene {ds.scenes()[0]}: the store lacks 1 of its 4 keyframes .*{dropped}"):
        run(teacher_cfg(result["last_ckpt"], store))
    with pytest.raises(FileNotFoundError, match="no label store"):
        run(teacher_cfg(result["last_ckpt"], tmp_path / "none.zarr"))


def test_a_stripped_checkpoint_caches_the_same_teacher_maps(trained, synth_tiny_store, tmp_path):
    """scripts/strip_checkpoint.py drops the training-only state: smaller, same weights, the same teacher/bev."""
    import os
    import subprocess
    import sys

    from bevlabels.cache import LabelStoreReader
    from pipelines.teacher import run

    repo = Path(__file__).resolve().parents[2]

    def strip_checkpoint(*args: str) -> subprocess.CompletedProcess:  # the command, as a user runs it
        cmd = [sys.executable, "scripts/strip_checkpoint.py", *args]
        env = dict(os.environ, PYTHONPATH=str(repo))
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)

    result, _ = trained
    stripped = tmp_path / "teacher.ckpt"
    done = strip_checkpoint(result["last_ckpt"], str(stripped))
    assert done.returncode == 0, done.stdout + done.stderr
    full = torch.load(result["last_ckpt"], map_location="cpu", weights_only=False)
    small = torch.load(stripped, map_location="cpu", weights_only=False)
    assert "optimizer_states" in full and "optimizer_states" not in small
    assert stripped.stat().st_size < Path(result["last_ckpt"]).stat().st_size
    maps = []
    for name, ckpt in (("a", result["last_ckpt"]), ("b", stripped)):
        store = shutil.copytree(synth_tiny_store, tmp_path / f"{name}.zarr")
        assert not run(teacher_cfg(ckpt, store))["failures"]
        maps.append(LabelStoreReader(store).teacher_bev(2))
    np.testing.assert_array_equal(maps[0], maps[1])
    refused = strip_checkpoint(str(stripped), str(stripped))
    assert refused.returncode == 2 and "dst must differ from src" in refused.stderr
