"""The trainer's DataLoader settings (trainer/data/common.py): ``num_workers`` and ``pin_memory`` ``auto`` resolved for
the device the batches go to, persistent workers on every loader with workers (validation streams too), and the
JPEG reduce-on-load that keeps the image geometry."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer.data.common import (
    CPU_AUTO_WORKERS,
    MAX_AUTO_WORKERS,
    FrameDataModule,
    resolve_num_workers,
    resolve_pin_memory,
)


@pytest.fixture
def cpus(monkeypatch):
    """Fake the CPUs this process may use."""

    def set_cpus(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cpus


def test_num_workers_auto(cpus):
    cpus(16)
    assert resolve_num_workers("auto", "cuda") == MAX_AUTO_WORKERS == 8
    assert resolve_num_workers("auto", "cuda", processes=4) == 4  # DDP: the machine's CPUs shared by its ranks
    assert resolve_num_workers("auto", "cuda", processes=32) == 1
    assert resolve_num_workers("auto", "cpu") == CPU_AUTO_WORKERS == 2  # what the CPU runs had before auto
    cpus(4)
    assert resolve_num_workers("auto", "cuda") == 4
    cpus(1)
    assert resolve_num_workers("auto", "cpu") == 1
    assert resolve_num_workers(0, "cuda") == 0 and resolve_num_workers("3", "cpu") == 3  # an int as given


@pytest.mark.parametrize("bad", [-1, "many", 1.5, True])
def test_a_bad_num_workers_names_the_key(bad):
    with pytest.raises(ValueError, match="data.num_workers"):
        resolve_num_workers(bad)


def test_pin_memory_auto():
    assert resolve_pin_memory("auto", "cuda") is True
    assert resolve_pin_memory("auto", "cpu") is False
    assert resolve_pin_memory(True, "cpu") is True and resolve_pin_memory(False, "cuda") is False
    with pytest.raises(ValueError, match="data.pin_memory"):
        resolve_pin_memory("yes")


def _module(cls=FrameDataModule, **kw) -> FrameDataModule:
    ds = {"name": "synthetic", "root": "/nowhere", "version": "v1.0-mini", "adapter": {"_target_": "x.Y"}}
    grid = {"xbound": [-32.0, 32.0, 1.0], "ybound": [-32.0, 32.0, 1.0], "zbound": [-5.0, 3.0, 8.0]}
    return cls(dataset=ds, grid=grid, class_names=["car"], **kw)


def _cuda_trainer(devices=1):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), num_devices=devices)


def test_the_data_module_resolves_for_the_attached_trainers_device(cpus):
    cpus(16)
    dm = _module(num_workers="auto", pin_memory="auto")
    assert dm.loader_kwargs() == {"num_workers": 2, "pin_memory": False, "persistent_workers": True}  # no trainer
    dm.trainer = _cuda_trainer(devices=2)  # what Lightning attaches in fit (DDP over 2 GPUs)
    assert dm.loader_kwargs() == {"num_workers": 8, "pin_memory": True, "persistent_workers": True}
    dm.trainer = None
    dm.device_type = "cuda"  # what the evaluator says before it predicts
    assert dm.num_workers == 8 and dm.pin_memory
    assert _module(num_workers=0, pin_memory="auto").loader_kwargs()["persistent_workers"] is False


def test_the_data_configs_say_auto(compose_train, tmp_path):
    for data in ("camera", "lidar"):
        cfg = compose_train([f"run_dir={tmp_path}", f"data={data}"]).data
        assert cfg.num_workers == "auto" and cfg.pin_memory == "auto", data


def test_the_validation_stream_loader_keeps_its_workers():
    """Every loader with workers persists them, the scene streams of validation too (its sampler, and the epoch it
    reads, live in the main process)."""
    from trainer.data.camera import CameraDataModule

    dm = _module(
        CameraDataModule,
        label_store=None,
        image_aug={"final_hw": [64, 176]},
        sequential_scenes=True,
        num_workers=2,
        pin_memory="auto",
        batch_size=1,
    )
    frames = [SimpleNamespace(scene=s) for s in ("a", "a", "b", "b")]
    dm.frames = lambda split: frames
    dm.make_dataset = lambda frames, train: list(range(len(frames)))
    dm.device_type = "cuda"
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.predict_dataloader("val")):
        assert loader.num_workers == 2 and loader.persistent_workers and loader.pin_memory


# -- JPEG reduce-on-load --------------------------------------------------------------------------------


def test_jpeg_draft_scale_divides_exactly():
    from trainer.data.camera import jpeg_draft_scale

    assert jpeg_draft_scale((1600, 900), (704, 396)) == 2  # nuScenes for 256x704: decoded at 800x450
    assert jpeg_draft_scale((1600, 900), (380, 214)) == 4  # 900 / 8 is not whole: not 8
    assert jpeg_draft_scale((1600, 900), (810, 456)) == 1  # larger than half: whole
    assert jpeg_draft_scale((352, 128), (704, 256)) == 1  # an upscale


def test_a_jpeg_decoded_reduced_keeps_its_geometry(tmp_path):
    """A bright square decoded at half size and resized lands where the whole decode puts it."""
    from PIL import Image

    from trainer.data.camera import apply_image_aug, load_image, realise_image_aug

    img = np.full((900, 1600, 3), 30, np.uint8)
    img[400:500, 1000:1120] = 230
    path = tmp_path / "cam.jpg"
    Image.fromarray(img).save(path, quality=95)
    aug = realise_image_aug((1600, 900), (256, 704), {"resize": 1.0, "bottom": 0.0, "crop_x": None, "flip": False})
    whole = apply_image_aug(load_image(path), aug, (256, 704)).astype(np.float32)
    reduced_im = load_image(path, aug["resize_wh"])
    assert reduced_im.size == (800, 450)
    reduced = apply_image_aug(reduced_im, aug, (256, 704)).astype(np.float32)
    assert whole.shape == reduced.shape == (256, 704, 3)

    def centre(a):
        ys, xs = np.nonzero(a[..., 0] > 130)
        return ys.mean(), xs.mean()

    assert np.allclose(centre(whole), centre(reduced), atol=0.25)  # pixels
    assert np.abs(whole - reduced).mean() < 1.5  # grey levels of 255
