"""The per-scene task bookkeeping and driver that the label and teacher stages share (pipelines.scenes)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from bevlabels.cache import LabelStoreWriter
from bevlabels.grid import GridSpec
from pipelines.scenes import SceneResult, Timer, run_scene_tasks, run_stage, scene_task, summary_lines, tally

CLUSTER = {"n_workers": 1, "threads_per_worker": 1, "processes": False}


def _fake_scene(job: dict, scene: str, rows: list[int], tokens: list[str]) -> SceneResult:
    """Finishes ``job[scene]`` keyframes of the scene, then raises if the scene is in ``job['fail']``."""
    res = SceneResult(scene)
    with scene_task(res, len(rows)):
        for _ in range(job[scene]):
            with Timer(res.seconds, "work"):
                time.sleep(0.01)
            res.done += 1
            (job["store"] / f"{scene}-{res.done}").touch()  # as a stage sets a keyframe's done flag
        if scene in job["fail"]:
            raise OSError(f"disk gone under {scene}")
    return res


def test_scene_task_turns_an_exception_into_the_scenes_failure(tmp_path):
    job = {"a": 2, "b": 1, "fail": {"b"}, "store": tmp_path}
    ok = _fake_scene(job, "a", [0, 1], ["t0", "t1"])
    bad = _fake_scene(job, "b", [2, 3, 4], ["t2", "t3", "t4"])
    assert (ok.done, ok.failed, ok.error) == (2, 0, None)
    assert (bad.done, bad.failed) == (1, 2) and bad.error == "OSError: disk gone under b"
    assert isinstance(bad.seconds, dict) and bad.seconds["work"] > 0 and bad.peak_rss_mb > 0
    s = tally([ok, bad], wall=2.0, skipped_scenes=4)
    assert (s["keyframes_done_now"], s["keyframes_failed"], s["keyframes_skipped"]) == (3, 2, 4)
    assert s["failures"] == {"b": "OSError: disk gone under b"} and s["keyframes_per_s"] == pytest.approx(1.5)
    lines = summary_lines({**s, "keyframes_done_total": 3, "keyframes_total": 9})
    assert "3 done now, 4 skipped (already done), 2 failed; 3/9 done in the store" in lines[0]
    assert lines[-1] == "  FAILED       b: OSError: disk gone under b"


def _done_scene(job: dict, scene: str, rows: list[int], tokens: list[str]) -> SceneResult:
    """Marks ``rows`` done one by one as files ``done-<row>`` (as a stage sets its done flags), then fails if asked."""
    res = SceneResult(scene)
    with scene_task(res, len(rows)):
        for r in rows[: job[scene]]:
            time.sleep(0.02)
            (job["store"] / f"done-{r}").touch()
            res.done += 1
        if scene in job["fail"]:
            raise OSError(f"disk gone under {scene}")
    return res


def test_run_scene_tasks_polls_only_the_running_scenes_rows(tmp_path, capsys):
    """The bar reads one done flag per running scene per poll (never the store), and reaches every keyframe."""
    job = {"a": 12, "b": 6, "c": 1, "fail": {"c"}, "store": tmp_path}
    submit = {"a": (list(range(12)), ["x"] * 12), "b": (list(range(12, 18)), ["y"] * 6), "c": ([18, 19], ["z"] * 2)}
    polls: list[list[int]] = []
    seen_done: set[int] = set()

    def done_rows(rows: list[int]) -> np.ndarray:
        polls.append([int(r) for r in rows])
        flags = np.array([(tmp_path / f"done-{r}").exists() for r in rows], dtype=bool)
        assert not seen_done.intersection(polls[-1]), "a row seen done is polled again"
        seen_done.update(r for r, f in zip(polls[-1], flags) if f)
        return flags

    todo = set(range(1, 20))  # row 0 was done before the run: never polled
    results = run_scene_tasks(
        CLUSTER, _done_scene, job, submit, total=20, initial=1, desc="t", done_rows=done_rows, todo=todo, poll_s=0.01
    )
    by_scene = {r.scene: r for r in results}
    assert [by_scene[s].done for s in "abc"] == [12, 6, 1] and by_scene["c"].failed == 1
    assert polls and max(len(p) for p in polls) == 1  # one thread: one running scene, one flag per read
    assert 0 not in {r for p in polls for r in p} and {r for p in polls for r in p} <= todo
    assert len(seen_done) >= 5  # the bar moved a keyframe at a time inside the scenes, not a scene at a time
    assert "20/20" in capsys.readouterr().err  # 1 initial + 19 done or failed
    assert run_scene_tasks(CLUSTER, _fake_scene, job, {}, total=0, initial=0, desc="t") == []


def _unguarded_scene(job: dict, scene: str, rows: list[int], tokens: list[str]) -> SceneResult:
    """Marks its first row done, then raises outside ``scene_task`` (a broken stage, not a broken scene)."""
    (job["store"] / f"done-{rows[0]}").touch()
    raise RuntimeError(f"stage bug in {scene}")


def test_a_task_that_raises_is_its_scenes_failure_with_its_done_keyframes_counted(tmp_path):
    def done_rows(rows: list[int]) -> np.ndarray:
        return np.array([(tmp_path / f"done-{r}").exists() for r in rows], dtype=bool)

    job = {"store": tmp_path}
    (tmp_path / "done-0").touch()  # done before the run: skipped, not counted as done now
    submit = {"a": ([0, 1, 2, 3], list("wxyz"))}
    [r] = run_scene_tasks(
        CLUSTER, _unguarded_scene, job, submit, total=4, initial=1, desc="t", done_rows=done_rows, todo=[1, 2, 3]
    )
    assert r.error.startswith("task raised (RuntimeError: stage bug in a)"), r.error
    assert (r.skipped, r.done, r.failed) == (1, 0, 3)  # rows[0] was already done; 1, 2, 3 are not
    [r] = run_scene_tasks(
        CLUSTER, _unguarded_scene, job, {"b": ([4, 5], list("uv"))}, total=2, initial=0, desc="t", done_rows=done_rows
    )
    assert (r.skipped, r.done, r.failed) == (0, 1, 1)  # it marked row 4 done before raising


# -- a worker killed mid-scene (a real LocalCluster of processes) ---------------------------------

GRID = GridSpec((-4.0, 4.0, 1.0), (-3.0, 3.0, 1.0), name="tiny")  # H=6, W=8
PER_SCENE = {"scene-a": [0, 1, 2], "scene-b": [3, 4], "scene-c": [5]}


def _store_scene(job: dict, scene: str, rows: list[int], tokens: list[str]) -> SceneResult:
    """Writes the scene's keyframes not yet done; a scene in ``job['kill']`` SIGKILLs its own worker process
    before writing its last keyframe (as the OOM killer would, mid-scene)."""
    res = SceneResult(scene)
    with scene_task(res, len(rows)):
        kw = LabelStoreWriter.open_for_task(job["store"])
        for s, done in zip(rows, kw.done_rows(rows)):
            if done:
                res.skipped += 1
                continue
            if scene in job["kill"] and s == rows[-1]:
                os.kill(os.getpid(), signal.SIGKILL)
            empty = np.zeros((0, 5), dtype=np.float32)  # (R=0, 5) lidar_px
            kw.write_keyframe(
                s, dino_feat=np.zeros((3, 6, 8), np.float16), dino_count=np.zeros((6, 8), np.uint16), lidar_px=empty
            )
            res.done += 1
    return res


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_scene_fails_that_scene_only_and_reruns_do_not_abort(tmp_path):
    path = tmp_path / "store.zarr"
    per_scene = {sc: (rows, [f"tok{r}" for r in rows]) for sc, rows in PER_SCENE.items()}
    writer = LabelStoreWriter.create_or_open(
        path,
        sample_tokens=[t for _, toks in per_scene.values() for t in toks],
        scenes=[sc for sc, (rows, _) in per_scene.items() for _ in rows],
        grid=GRID,
        dataset={"name": "synthetic", "version": "v1.0-mini"},
        feature_model={"name": "tiny", "weights": "random-init"},
        channels=3,
    )
    job = {"store": str(path), "kill": {"scene-b"}}
    procs = {"n_workers": 2, "threads_per_worker": 1, "processes": True}
    with writer:
        for attempt in range(2):  # the same scene kills its worker again on the rerun: still no abort
            results, _ = run_stage(writer, "labels", procs, _store_scene, job, per_scene, "kill")
            by_scene = {r.scene: r for r in results}
            b = by_scene["scene-b"]
            assert b.error.startswith("worker died (KilledWorker") and "OOM killer" in b.error, b.error
            assert (b.done, b.failed, b.skipped) == ((1, 1, 0) if attempt == 0 else (0, 1, 1))
            assert writer.failures()["scene-b"] == b.error
            assert writer.done_rows([3, 4]).tolist() == [True, False]  # its first keyframe stayed written
            others = [(r.scene, r.done, r.error) for r in results if r.scene != "scene-b"]
            assert sorted(others) == ([] if attempt else [("scene-a", 3, None), ("scene-c", 1, None)])
        assert writer.done_rows([0, 1, 2, 5]).all()  # the other scenes finished
        # Without the killer, a rerun finishes the scene and clears its failure.
        results, skipped = run_stage(writer, "labels", CLUSTER, _store_scene, {**job, "kill": set()}, per_scene, "k")
        assert [(r.scene, r.done, r.skipped, r.error) for r in results] == [("scene-b", 1, 1, None)] and skipped == 4
        assert writer.done_mask().all() and writer.failures() == {}
