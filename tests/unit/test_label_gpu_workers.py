"""The label stage's GPU side without a GPU: the store records the dtype its GPU workers compute in, dask-cuda's
cluster when it is there (one GPU per worker, a bare ``cuda`` kept), and part timings that wait for CUDA."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from pipelines import scenes
from pipelines.labels import (
    FeatureModelMismatchError,
    check_feature_model,
    store_feature_model,
    tasks_feature_device,
    worker_device,
)

TINY_DINO = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
FEATURES = {
    "weights": "random",
    "image_height": 56,
    "config_overrides": TINY_DINO,
    "device": "auto",
    "dtype": "bfloat16",
}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _extractor(**kw):
    from bevlabels.features import HFBackbone

    return HFBackbone(**{**FEATURES, "device": "cpu", **kw})


def test_a_cpu_driver_records_the_dtype_its_gpu_workers_compute_in(no_gpu):
    """features.dtype=bfloat16, a CPU driver, tasks asking for a GPU: the store must say bfloat16 (what each GPU worker
    describes), not the driver's own float32, or every worker's check refuses the store."""
    from bevlabels.cache.writer import feature_model_record

    driver = _extractor()  # on the CPU: computes and describes float32
    assert driver.describe()["dtype"] == "float32"
    gpu_worker = _extractor()
    gpu_worker.compute_dtype = torch.bfloat16  # what the same config computes in on a CUDA worker (autocast)

    record = store_feature_model(driver, FEATURES, {"GPU": 1.0})
    assert record["dtype"] == "bfloat16" and {k: v for k, v in record.items() if k != "dtype"} == {
        k: v for k, v in driver.describe().items() if k != "dtype"
    }
    stored = feature_model_record(record, driver.out_channels)
    check_feature_model(stored, gpu_worker, "store.zarr")  # the GPU worker accepts it
    with pytest.raises(FeatureModelMismatchError, match="dtype"):  # what recording the driver's own dtype did
        check_feature_model(feature_model_record(driver.describe(), driver.out_channels), gpu_worker, "store.zarr")

    # CPU tasks (no GPU asked): float32, as the CPU workers compute
    record = store_feature_model(driver, FEATURES, None)
    assert record["dtype"] == "float32"
    check_feature_model(feature_model_record(record, driver.out_channels), driver, "store.zarr")


def test_which_device_the_tasks_feature_model_runs_on(no_gpu):
    assert tasks_feature_device({"device": "auto"}, None) == "cpu"
    assert tasks_feature_device({"device": "auto"}, {"GPU": 1.0}) == "cuda"
    assert tasks_feature_device({"device": "cpu"}, {"GPU": 1.0}) == "cpu"  # a device named wins
    assert tasks_feature_device({"device": "cuda:1"}, None) == "cuda"


# -- dask-cuda ---------------------------------------------------------------------------------------


def test_cluster_kind(monkeypatch):
    gpu = {"resources": {"GPU": 1}}
    monkeypatch.setattr(scenes, "dask_cuda_available", lambda: False)
    assert scenes.cluster_kind(gpu) == "local"  # dask-cuda is optional
    with pytest.raises(ValueError, match="cluster.kind=cuda needs dask-cuda"):
        scenes.cluster_kind({**gpu, "kind": "cuda"})
    with pytest.raises(ValueError, match="cluster.kind must be one of"):
        scenes.cluster_kind({"kind": "slurm"})

    monkeypatch.setattr(scenes, "dask_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scenes.cluster_kind(gpu) == "cuda"
    assert scenes.cluster_kind({"resources": None}) == "local"  # CPU tasks
    assert scenes.cluster_kind({**gpu, "processes": False}) == "local"  # a threaded cluster on purpose
    assert scenes.cluster_kind({**gpu, "kind": "local"}) == "local"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scenes.cluster_kind(gpu) == "local"  # GPU resources asked of a machine without one


def test_make_client_starts_one_dask_cuda_worker_per_gpu(monkeypatch):
    made = {}

    class Started(Exception):
        pass

    class LocalCUDACluster:
        def __init__(self, **kw):
            made.update(kw)
            raise Started  # no cluster here: what it was asked for is the test

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=LocalCUDACluster))
    monkeypatch.setattr(scenes, "dask_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(Started):
        scenes.make_client({"n_workers": 4, "resources": {"GPU": 1}, "threads_per_worker": 1})
    assert made["n_workers"] == 2 and made["resources"] == {"GPU": 1.0}


def test_a_dask_cuda_worker_keeps_a_bare_cuda(monkeypatch):
    """Under dask-cuda each worker sees only its own GPU (as cuda:0): spreading by worker number would pick another."""
    import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name=1))
    assert worker_device("cuda") == "cuda:1"  # dask's LocalCluster: all GPUs visible, spread by number
    assert worker_device("cuda", own_gpu=True) == "cuda"


# -- Timer and CUDA ------------------------------------------------------------------------------------


def test_timer_waits_for_cuda_only_where_cuda_is_in_use(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    seconds: dict = {"features": 0.0, "decode": 0.0}
    with scenes.Timer(seconds, "features"):
        pass
    assert calls == []  # a process that never used CUDA: nothing to wait for, and CUDA is never started
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with scenes.Timer(seconds, "features"):
        pass
    assert calls == ["sync", "sync"]  # on entry and on exit
    with scenes.Timer(seconds, "decode", sync=False):
        pass
    assert calls == ["sync", "sync"] and seconds["decode"] >= 0
