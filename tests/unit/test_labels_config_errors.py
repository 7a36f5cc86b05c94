"""The label stage's settings are checked on the driver, and a bad one is named in the error."""

import pytest
import torch

from pipelines.labels import check_geometry_device, resolve_geometry_device


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "numpy2", ""])
def test_bad_geometry_device_names_the_key(bad):
    with pytest.raises(ValueError, match=r"geometry_device="):
        check_geometry_device(bad)
    with pytest.raises(ValueError, match=r"geometry_device="):
        resolve_geometry_device(bad, "cpu")


def test_geometry_device_values():
    for ok in ("auto", "numpy", "cpu", "cuda", "cuda:1"):
        check_geometry_device(ok)  # a device string is accepted even without that device here
    assert resolve_geometry_device("numpy", "cuda") is None
    assert resolve_geometry_device("auto", "cpu") is None  # CPU features: the numpy reference
    assert resolve_geometry_device("auto", "cuda:0") == "cuda:0"
    assert resolve_geometry_device("cpu", "cpu") == torch.device("cpu")


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5", None])
def test_bad_keyframe_batch_names_the_key(bad):
    from pipelines.labels import resolve_keyframe_batch

    with pytest.raises(ValueError, match=r"keyframe_batch="):
        resolve_keyframe_batch(bad, "cpu")


def test_keyframe_batch_values():
    from pipelines.labels import GPU_KEYFRAME_BATCH, resolve_keyframe_batch

    assert resolve_keyframe_batch("auto", "cpu") == 1
    assert resolve_keyframe_batch("auto", "cuda:0") == GPU_KEYFRAME_BATCH
    assert resolve_keyframe_batch(4, "cpu") == resolve_keyframe_batch("4", "cuda") == 4


def test_a_bare_cuda_is_spread_over_the_gpus_by_worker_number(monkeypatch):
    """On a machine with several GPUs, LocalCluster worker n takes cuda:<n % GPUs> (faked: no GPU here)."""
    import types

    import distributed

    from pipelines.labels import worker_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name=3))
    assert worker_device("cuda") == "cuda:1"
    assert worker_device("cuda:0") == "cuda:0"  # an explicit index is kept
    assert worker_device("cpu") == "cpu"
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name="tcp://10.0.0.2:4242"))
    assert worker_device("cuda") == "cuda"  # a hand-started worker: CUDA_VISIBLE_DEVICES picks its GPU

    def not_in_a_worker():
        raise ValueError("No worker found")

    monkeypatch.setattr(distributed, "get_worker", not_in_a_worker)
    assert worker_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name=3))
    assert worker_device("cuda") == "cuda"  # one GPU: nothing to spread


def test_a_bad_cluster_resources_fails_before_the_store_is_touched(compose_labels, tmp_path):
    from pipelines.labels import run

    out = tmp_path / "never.zarr"
    cfg = compose_labels([f"out={out}", "cluster.resources=GPU"])
    with pytest.raises(ValueError, match=r"cluster.resources"):
        run(cfg)
    assert not out.exists()
