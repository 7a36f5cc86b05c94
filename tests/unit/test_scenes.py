"""The per-scene task bookkeeping and driver that the label and teacher stages share (pipelines.scenes)."""

from __future__ import annotations

import time

import pytest

from pipelines.scenes import SceneResult, Timer, run_scene_tasks, scene_task, summary_lines, tally

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


def test_run_scene_tasks_runs_every_scene_and_polls_progress(tmp_path):
    job = {"a": 3, "b": 2, "c": 1, "fail": {"c"}, "store": tmp_path}
    submit = {"a": ([0, 1, 2], list("xyz")), "b": ([3, 4], list("uv")), "c": ([5, 6], list("pq"))}
    polls: list[int] = []

    def progress() -> int:
        polls.append(len(list(tmp_path.iterdir())))
        return polls[-1]

    results = run_scene_tasks(
        CLUSTER, _fake_scene, job, submit, total=7, initial=0, desc="t", progress=progress, poll_s=0.01
    )
    by_scene = {r.scene: r for r in results}
    assert set(by_scene) == {"a", "b", "c"}
    assert [by_scene[s].done for s in "abc"] == [3, 2, 1] and by_scene["c"].failed == 1
    assert polls and polls[-1] == 6  # the last poll sees every keyframe the tasks finished
    assert run_scene_tasks(CLUSTER, _fake_scene, job, {}, total=0, initial=0, desc="t") == []
