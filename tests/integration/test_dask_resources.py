"""Issue 15: on a cluster of GPU and CPU workers the label tasks run on the GPU ones (dask worker resources).

CI has no GPU, so the workers here only *say* they have one (``resources={"GPU": 1}``): what is tested is the
scheduling, not the device. The cluster is attached by address, the path of a real many-machine cluster.
"""

from __future__ import annotations

import pytest

from pipelines.scenes import SceneResult, check_resources, run_scene_tasks, task_resources, task_slots


def _where(job, scene, rows, tokens) -> SceneResult:
    import time

    from distributed import get_worker

    time.sleep(0.2)  # tasks overlap, so an idle worker is there to be chosen
    r = SceneResult(scene, done=len(rows))
    r.seconds[f"worker={get_worker().name}"] = 0.0  # results come back pickled: the worker's name travels here
    return r


def _workers(results) -> set[str]:
    return {k.removeprefix("worker=") for r in results for k in r.seconds}


@pytest.fixture()
def mixed_cluster():
    """A scheduler with a CPU worker and a worker offering one GPU, in this process, on its own event loop."""
    from distributed import Scheduler, SpecCluster, Worker

    spec = {
        "cpu": {"cls": Worker, "options": {"nthreads": 1}},
        "gpu": {"cls": Worker, "options": {"nthreads": 2, "resources": {"GPU": 1}}},
    }
    cluster = SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})
    yield cluster
    cluster.close()


def test_label_tasks_go_to_the_workers_that_offer_the_resources(mixed_cluster):
    scenes = {f"scene-{i}": ([i], [f"tok{i}"]) for i in range(6)}
    cfg = {"address": mixed_cluster.scheduler_address, "resources": {"GPU": 1}}
    results = run_scene_tasks(cfg, _where, None, scenes, total=6, initial=0, desc="test")
    assert sorted(r.scene for r in results) == sorted(scenes) and not any(r.error for r in results)
    assert _workers(results) == {"gpu"}  # never the CPU worker
    # the control: without resources the CPU worker takes tasks too (3 slots, 6 tasks, submitted as slots free)
    cfg = {"address": mixed_cluster.scheduler_address, "resources": None}
    results = run_scene_tasks(cfg, _where, None, scenes, total=6, initial=0, desc="test")
    assert _workers(results) == {"cpu", "gpu"}


def test_a_cluster_without_the_resources_is_refused_not_waited_on(mixed_cluster):
    from distributed import Client

    with Client(mixed_cluster.scheduler_address) as client:
        assert task_slots(client, {"GPU": 1}) == 1  # the GPU worker's 2 threads, one GPU: one task at a time
        assert task_slots(client, None) == 3
        check_resources(client, {"GPU": 1})
        with pytest.raises(ValueError, match=r"cluster.resources=.*TPU.*--resources"):
            check_resources(client, {"TPU": 1})


def test_resources_setting():
    from pipelines.labels import resolve_resources

    assert task_resources({"resources": None}) is None
    assert task_resources({}) is None
    assert task_resources({"resources": {"GPU": 1}}) == {"GPU": 1.0}
    with pytest.raises(ValueError, match="cluster.resources"):
        task_resources({"resources": "GPU"})
    assert resolve_resources("auto", {"device": "cpu"}) is None
    assert resolve_resources("auto", {"device": "cuda:0"}) == {"GPU": 1}
    assert resolve_resources({"GPU": 2}, {"device": "cpu"}) == {"GPU": 2}


def test_the_label_stage_runs_on_a_local_cluster_that_offers_the_resources(
    synth_tiny, tmp_path, compose_labels, monkeypatch
):
    """cluster.resources={GPU: 1} on a LocalCluster: its workers offer the resource (else check_resources would refuse
    the cluster), the scene tasks ask for it, and the stage completes (the CPU features need no real GPU)."""
    from test_labels_synth import label_overrides  # tests/integration/

    import pipelines.scenes
    from pipelines.labels import run

    asked = []
    check = pipelines.scenes.check_resources
    monkeypatch.setattr(
        pipelines.scenes, "check_resources", lambda client, res: (asked.append(res), check(client, res))
    )
    out = tmp_path / "labels.zarr"
    summary = run(compose_labels(label_overrides(synth_tiny, out, "limit_scenes=1", "cluster.resources={GPU:1}")))
    assert asked == [{"GPU": 1.0}]
    assert summary["keyframes_done_total"] == summary["keyframes_total"] == 4 and not summary["failures"]
