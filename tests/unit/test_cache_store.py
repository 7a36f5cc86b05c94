"""The label store: template, per-keyframe writes, resume after a kill, lock, refusals, reader.

A tiny store throughout: a 8 m x 6 m grid of 1 m cells (H=6, W=8), C=3 channels, 6 keyframes in
3 scenes (a: 0-2, b: 3-4, c: 5).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bevlabels.cache import (
    LABELS,
    LOCK_NAME,
    SCHEMA_VERSION,
    TEACHER,
    KeyframeWriter,
    LabelStoreReader,
    LabelStoreWriter,
    StoreError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from bevlabels.cache._store import AtomicLocalStore
from bevlabels.grid import GridSpec

GRID = GridSpec((-4.0, 4.0, 1.0), (-3.0, 3.0, 1.0), name="tiny")  # H=6 rows (y), W=8 columns (x)
C = 3
TOKENS = [f"tok{i:02d}" for i in range(6)]
SCENES = ["scene-a"] * 3 + ["scene-b"] * 2 + ["scene-c"]
DATASET = {"name": "synthetic", "version": "v1.0-mini", "root": "/data/synth"}
FEATURES = {"name": "dinov2_vits14", "weights": "pretrained:facebook/dinov2-small"}
PARAMS = {"accumulate": "scene", "visibility": "depth-test"}
KILLED = 77  # exit code of a run killed on purpose


def make_store(path, **overrides) -> LabelStoreWriter:
    kwargs = dict(
        sample_tokens=TOKENS,
        scenes=SCENES,
        grid=GRID,
        dataset=DATASET,
        feature_model=FEATURES,
        channels=C,
        config={"out": str(path), "batch": 2},
        params=PARAMS,
    )
    kwargs.update(overrides)
    return LabelStoreWriter.create_or_open(path, **kwargs)


def keyframe(s: int) -> dict:
    """Deterministic labels of keyframe s; R = 2 * (s % 3) rows, so keyframes 0 and 3 have none."""
    rng = np.random.default_rng(s)
    count = rng.integers(0, 4, size=(6, 8)).astype(np.uint16)  # (H, W)
    feat = (rng.standard_normal((C, 6, 8)) * (count > 0)).astype(np.float16)  # (C, H, W), 0 where empty
    r = 2 * (s % 3)
    lidar = {
        "cam": rng.integers(0, 6, r).astype(np.uint8),
        "u": rng.uniform(0, 1600, r).astype(np.float32),
        "v": rng.uniform(0, 900, r).astype(np.float32),
        "depth": rng.uniform(1, 60, r).astype(np.float32),
        "obj": rng.integers(-1, 40, r).astype(np.int32),
    }
    return {"dino_feat": feat, "dino_count": count, "lidar_px": lidar}


def run_label_stage(path) -> None:
    """A whole (re)run as the label stage's driver does it: scene-c 'fails', the others are written."""
    with make_store(path) as store:
        kw = store.keyframe_writer()
        for s in store.todo_indices():
            if SCENES[s] != "scene-c":
                kw.write_keyframe(int(s), **keyframe(int(s)))
        store.record_failures({"scene-c": "missing image CAM_FRONT/n015.jpg"})


def store_files(path) -> dict[str, bytes]:
    """Every file of a store but the root metadata (its attrs hold timestamps) and the lock."""
    root = Path(path)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in ("zarr.json", LOCK_NAME)
    }


def attrs_without_times(path) -> dict:
    attrs = LabelStoreReader(path).attrs
    attrs.pop("created")
    attrs["config"].pop("out")
    for entry in attrs["stages"].values():
        entry.pop("created")
        entry.get("last_run", {}).pop("finished", None)
    return attrs


def assert_same_store(a, b) -> None:
    files_a, files_b = store_files(a), store_files(b)
    assert sorted(files_a) == sorted(files_b)
    for key in files_a:
        assert files_a[key] == files_b[key], f"{key} differs"
    assert attrs_without_times(a) == attrs_without_times(b)


# -- template -------------------------------------------------------------------------------------
def test_template_has_the_schema_shapes_dtypes_chunks_and_attrs(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        assert (path / LOCK_NAME).is_file()  # held while the writer is open
        assert store.todo_indices().tolist() == [0, 1, 2, 3, 4, 5]  # nothing done yet
    assert not (path / LOCK_NAME).exists()

    import zarr

    root = zarr.open_group(str(path), mode="r")
    expected = {  # name: (shape, dtype, chunks, fill)
        "done": ((6,), "bool", (1,), False),
        "dino/feat": ((6, C, 6, 8), "float16", (1, C, 6, 8), 0),
        "dino/count": ((6, 6, 8), "uint16", (1, 6, 8), 0),
    }
    for name, (shape, dtype, chunks, fill) in expected.items():
        a = root[name]
        assert (a.shape, str(a.dtype), a.chunks, a.fill_value) == (shape, dtype, chunks, fill), name
    assert root["sample_token"][:].tolist() == TOKENS
    assert root["scene"][:].tolist() == SCENES
    assert str(root["sample_token"].dtype) == "<U5"  # fixed width: the longest token, "tok00"

    attrs = dict(root.attrs)
    assert attrs["schema_version"] == SCHEMA_VERSION == 2
    assert attrs["grid"] == GRID.to_dict()
    assert attrs["dataset"] == DATASET
    assert attrs["feature_model"] == {**FEATURES, "channels": C}  # channels recorded
    assert attrs["params"] == PARAMS and attrs["config"]["batch"] == 2
    assert {"bevlabels", "numpy", "zarr", "torch"} <= set(attrs["versions"])
    assert attrs["failures"] == {} and "template" not in attrs
    assert attrs["stages"]["labels"]["done"] == "done"
    assert attrs["stages"]["labels"]["dims"] == {"C": C, "H": 6, "W": 8}
    assert attrs["stages"]["labels"]["tables"]["lidar_px"]["columns"][0] == ["cam", "uint8"]


def test_reading_a_store_raises_no_zarr_warnings(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        store.keyframe_writer().write_keyframe(1, **keyframe(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = LabelStoreReader(path)
        reader.sample_tokens, reader.scenes, reader.dino_feat(1), reader.lidar_px(1)  # noqa: B018
    assert [str(w.message) for w in caught if "zarr" in w.filename or "Zarr" in str(w.message)] == []


# -- round trip -----------------------------------------------------------------------------------
def test_write_then_read_returns_every_array_including_an_empty_lidar_px(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        kw = store.keyframe_writer()
        kw.write_keyframe(0, **keyframe(0))  # R = 0 rows
        kw.write_keyframe(2, **keyframe(2))  # R = 4 rows, given as a dict
        as_array = keyframe(4)
        cols = as_array["lidar_px"]
        as_array["lidar_px"] = np.stack([cols[c].astype(np.float64) for c in ("cam", "u", "v", "depth", "obj")], 1)
        kw.write_keyframe(4, **as_array)  # R = 2 rows, given as an (R, 5) array

    reader = LabelStoreReader(path)
    assert reader.done.tolist() == [True, False, True, False, True, False]
    for s in (0, 2, 4):
        want = keyframe(s)
        feat, count, px = reader.dino_feat(s), reader.dino_count(s), reader.lidar_px(s)
        assert feat.dtype == np.float16 and feat.shape == (C, 6, 8)
        np.testing.assert_array_equal(feat, want["dino_feat"])
        assert count.dtype == np.uint16
        np.testing.assert_array_equal(count, want["dino_count"])
        assert list(px) == ["cam", "u", "v", "depth", "obj"]
        for col, dtype in (
            ("cam", np.uint8),
            ("u", np.float32),
            ("v", np.float32),
            ("depth", np.float32),
            ("obj", np.int32),
        ):
            assert px[col].dtype == dtype and px[col].shape == (2 * (s % 3),)
            np.testing.assert_array_equal(px[col], want["lidar_px"][col])
    assert reader.index_of("tok04") == 4
    assert reader.grid == GRID
    assert reader.has("dino/feat") and reader.has("lidar_px") and not reader.has("teacher/bev")
    with pytest.raises(StoreIncompleteError, match="keyframe 1 .tok01, scene scene-a. is not written"):
        reader.dino_feat(1)


def test_reader_is_picklable_and_opens_lazily(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        store.keyframe_writer().write_keyframe(3, **keyframe(3))
    reader = LabelStoreReader(path)
    reader.dino_count(3)  # opened in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.__getstate__() == {"path": str(path)}  # no handles travel
    np.testing.assert_array_equal(clone.dino_count(3), keyframe(3)["dino_count"])


# -- resume ---------------------------------------------------------------------------------------
def test_resume_after_half_the_keyframes_leaves_the_other_half_todo(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        for s in (0, 2, 4):
            store.keyframe_writer().write_keyframe(s, **keyframe(s))
    with make_store(path) as store:  # same identity: reopened, not rebuilt
        assert store.todo_indices().tolist() == [1, 3, 5]
        assert store.summary(coverage=False)["done"] == 3


def test_a_run_killed_at_any_write_then_rerun_equals_an_uninterrupted_run(tmp_path, caplog):
    """Kill a forked run at its n-th file write, for every n; the rerun must give the same bytes."""
    ref = tmp_path / "ref.zarr"
    writes = []  # (key, exclusive) of every file write of an uninterrupted run, in order
    original = AtomicLocalStore._atomic_set

    async def logging_set(self, key, value, exclusive):
        writes.append((key, exclusive))
        await original(self, key, value, exclusive)

    AtomicLocalStore._atomic_set = logging_set
    try:
        run_label_stage(ref)
    finally:
        AtomicLocalStore._atomic_set = original
    # Die before each write of the template and of keyframes 0 (R = 0) and 1 (R = 2): every kind of
    # write there is; for the later keyframes, before their done flag; and before each attrs update.
    keys = [k for k, _ in writes]
    through_keyframe_1 = keys.index("done/c/1") + 1
    kill_points = [
        n
        for n, (key, exclusive) in enumerate(writes, 1)
        if n <= through_keyframe_1 or key.startswith("done/c/") or (key == "zarr.json" and not exclusive)
    ]
    assert len(kill_points) >= 30  # 18 template writes, 7 + 6 of keyframes 0-1, 3 done flags, 1 attrs update

    def killed_run(path, kill_at):
        calls = itertools.count(1)

        async def dying(self, key, value, exclusive):
            if next(calls) >= kill_at:
                os._exit(KILLED)  # no cleanup, no lock release: as a SIGKILL would leave it
            await original(self, key, value, exclusive)

        AtomicLocalStore._atomic_set = dying
        run_label_stage(path)
        os._exit(0)

    ctx = multiprocessing.get_context("fork")
    for kill_at in kill_points:
        path = tmp_path / f"killed{kill_at}.zarr"
        child = ctx.Process(target=killed_run, args=(path, kill_at))
        child.start()
        child.join()
        assert child.exitcode == KILLED
        with caplog.at_level(logging.WARNING, logger="bevlabels.cache"):
            run_label_stage(path)  # the rerun takes over the dead run's lock and finishes
        assert_same_store(path, ref)
    assert "took over the stale lock" in caplog.text


def test_a_keyframe_killed_between_data_and_done_is_redone(tmp_path, monkeypatch):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        kw = store.keyframe_writer()
        kw.write_keyframe(1, **keyframe(1))
        original = AtomicLocalStore._atomic_set

        async def die_on_done(self, key, value, exclusive):
            if key == "done/c/2":
                raise OSError("disk gone")
            await original(self, key, value, exclusive)

        monkeypatch.setattr(AtomicLocalStore, "_atomic_set", die_on_done)
        with pytest.raises(OSError, match="disk gone"):
            kw.write_keyframe(2, **keyframe(2))
        monkeypatch.setattr(AtomicLocalStore, "_atomic_set", original)
        assert (path / "dino/feat/c/2/0/0/0").is_file()  # the data landed ...
        assert store.todo_indices().tolist() == [0, 2, 3, 4, 5]  # ... but keyframe 2 is still to do


def test_an_overwrite_killed_half_way_is_rebuilt_by_the_rerun(tmp_path, monkeypatch):
    ref, path = tmp_path / "ref.zarr", tmp_path / "labels.zarr"
    run_label_stage(ref)
    run_label_stage(path)
    import bevlabels.cache._store as store_module

    def dies_after_one(target, *args, **kwargs):
        monkeypatch.setattr(store_module.shutil, "rmtree", crash)  # the next deletion never happens
        original_rmtree(target, *args, **kwargs)

    def crash(*args, **kwargs):
        raise OSError("killed while deleting")

    original_rmtree = store_module.shutil.rmtree
    monkeypatch.setattr(store_module.shutil, "rmtree", dies_after_one)
    with pytest.raises(OSError, match="killed while deleting"):
        make_store(path, overwrite=True)
    monkeypatch.setattr(store_module.shutil, "rmtree", original_rmtree)
    with pytest.raises(StoreError, match="half-written"):
        LabelStoreReader(path).done  # noqa: B018  (neither the old store nor a new one: refused)
    run_label_stage(path)  # no overwrite: the half-deleted store is a half-written template, rebuilt
    assert_same_store(path, ref)


def test_temporary_files_of_a_killed_writer_are_swept_on_reopen(tmp_path):
    path = tmp_path / "labels.zarr"
    make_store(path).close()
    leftover = path / "dino/feat/c/2/0/0/.0.bevlabels-tmp-4242-0123456789ab"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a chunk")
    with make_store(path) as store:
        assert not leftover.exists()
        assert store.todo_indices().size == 6


# -- processes ------------------------------------------------------------------------------------
def _write_scene(kw: KeyframeWriter, indices: list[int]) -> list[int]:
    for s in indices:
        kw.write_keyframe(s, **keyframe(s))
    return indices


def test_worker_processes_write_the_same_store_as_one_process(tmp_path):
    ref, path = tmp_path / "ref.zarr", tmp_path / "pool.zarr"
    with make_store(ref) as store:
        _write_scene(store.keyframe_writer(), list(range(6)))
    with make_store(path) as store:
        kw = LabelStoreWriter.open_for_task(path)  # what a task builds from the store path alone
        assert pickle.loads(pickle.dumps(kw)).__getstate__() == {"path": str(path), "stage": "labels"}
        per_scene = [[0, 1, 2], [3, 4], [5]]
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
            written = sorted(itertools.chain(*pool.map(_write_scene, [kw] * 3, per_scene)))
        assert written == list(range(6))
        assert store.todo_indices().tolist() == [] and kw.done_mask().all()
    assert store_files(path) == store_files(ref)


# -- lock -----------------------------------------------------------------------------------------
def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}") as err:
            make_store(path)
        assert err.value.holder["host"] == socket.gethostname()
        with pytest.raises(StoreLockedError):
            LabelStoreWriter.open(path)
        LabelStoreReader(path).todo_indices()  # readers take no lock
    writer = make_store(path)  # released on exit: a later run proceeds
    with writer.lock():  # the lock create_or_open took, released when the block ends
        assert json.loads((path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="boom"):
        with make_store(path):
            raise RuntimeError("boom")
    assert not (path / LOCK_NAME).exists()  # released on an exception too


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_not(tmp_path, caplog):
    path = tmp_path / "labels.zarr"
    make_store(path).close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is no longer alive
    lock = {"host": socket.gethostname(), "pid": dead.pid, "started": "2020-01-01T00:00:00+00:00", "token": "x"}
    (path / LOCK_NAME).write_text(json.dumps(lock))
    with caplog.at_level(logging.WARNING, logger="bevlabels.cache"):
        with make_store(path) as store:
            assert json.loads((path / LOCK_NAME).read_text())["pid"] == os.getpid()
            assert store.todo_indices().size == 6
    assert f"took over the stale lock of {path}: pid {dead.pid}" in caplog.text

    (path / LOCK_NAME).write_text(json.dumps({**lock, "host": "elsewhere-node-7"}))
    with pytest.raises(StoreLockedError, match=f"host elsewhere-node-7, pid {dead.pid}.*delete .*{LOCK_NAME}"):
        make_store(path)


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"grid": GridSpec((-4.0, 4.0, 0.5), (-3.0, 3.0, 1.0))}, "grid", "'xbound': \\[-4.0, 4.0, 1.0\\]"),
        ({"dataset": {**DATASET, "name": "nuscenes"}}, "dataset.name", "'synthetic'.*'nuscenes'"),
        ({"dataset": {**DATASET, "version": "v1.0-trainval"}}, "dataset.version", "v1.0-mini"),
        ({"feature_model": {**FEATURES, "weights": "random-init"}}, "feature_model", "weights: store"),
        ({"channels": 4}, "feature_model", "channels: store 3 vs run 4"),
        ({"params": {**PARAMS, "visibility": "none"}}, "params", "visibility"),
        ({"sample_tokens": TOKENS[:5], "scenes": SCENES[:5]}, "sample_tokens", "the store has 1 keyframes the dataset"),
        ({"sample_tokens": [*TOKENS, "tok06"], "scenes": [*SCENES, "scene-c"]}, "sample_tokens", "the dataset has 1"),
        ({"sample_tokens": [TOKENS[1], TOKENS[0], *TOKENS[2:]]}, "sample_tokens", "another order .index 0"),
        ({"scenes": ["scene-a"] * 3 + ["scene-b"] * 3}, "scenes", "keyframe 5"),
    ],
)
def test_a_store_made_from_something_else_is_refused_naming_the_field(tmp_path, overrides, field, says):
    path = tmp_path / "labels.zarr"
    make_store(path).close()
    with pytest.raises(StoreMismatchError, match=says) as err:
        make_store(path, **overrides)
    assert err.value.field == field
    assert "overwrite=true replaces the store" in str(err.value)
    assert not (path / LOCK_NAME).exists()  # a refused run leaves no lock behind


def test_overwrite_replaces_a_mismatched_store(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        store.keyframe_writer().write_keyframe(1, **keyframe(1))
    other = GridSpec((-2.0, 2.0, 1.0), (-2.0, 2.0, 1.0))
    with make_store(path, grid=other, overwrite=True) as store:
        assert store.grid == other
        assert store.todo_indices().tolist() == [0, 1, 2, 3, 4, 5]  # the old labels are gone
        assert not (path / "lidar_px/000001").exists()


def test_another_root_of_the_same_dataset_is_accepted_with_a_warning(tmp_path, caplog):
    path = tmp_path / "labels.zarr"
    make_store(path).close()
    with caplog.at_level(logging.WARNING, logger="bevlabels.cache"):
        make_store(path, dataset={**DATASET, "root": "/mnt/copy/synth"}).close()
    assert "made from the dataset at /data/synth, now read from /mnt/copy/synth" in caplog.text
    assert LabelStoreReader(path).attrs["dataset"]["root"] == "/data/synth"  # the template is not rewritten


def test_a_non_empty_directory_or_foreign_zarr_group_is_not_overwritten_silently(tmp_path):
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "todo.txt").write_text("mine")
    with pytest.raises(StoreError, match="non-empty directory, not a zarr store"):
        make_store(stray)
    with pytest.raises(StoreError, match="overwrite=true replaces stores only"):
        make_store(stray, overwrite=True)
    assert (stray / "todo.txt").read_text() == "mine"

    import zarr

    zarr.create_group(str(tmp_path / "other.zarr"), attributes={"owner": "someone"})
    with pytest.raises(StoreError, match="not a label store; overwrite=true replaces it"):
        make_store(tmp_path / "other.zarr")
    make_store(tmp_path / "other.zarr", overwrite=True).close()
    assert LabelStoreReader(tmp_path / "other.zarr").todo_indices().size == 6


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"dino_feat": np.zeros((C, 8, 6), np.float16)}, r"dino/feat: expected shape \(C, H, W\) = \(3, 6, 8\)"),
        ({"dino_feat": np.zeros((C, 6, 8), np.float32)}, "dino/feat: expected dtype float16, got float32"),
        ({"dino_feat": np.full((C, 6, 8), np.nan, np.float16)}, "dino/feat: 144 values are not finite"),
        ({"dino_count": np.zeros((6, 8), np.int64)}, "dino/count: expected dtype uint16, got int64"),
        ({"lidar_px": {"cam": [0], "u": [1.0], "v": [1.0], "depth": [1.0]}}, r"lidar_px: expected columns"),
        ({"lidar_px": np.zeros((3, 4), np.float32)}, r"lidar_px: expected a dict of columns .* \(R, 5\)"),
        ({"lidar_px": {"cam": [300], "u": [1], "v": [1], "depth": [1], "obj": [0]}}, r"lidar_px.cam: .*\[0, 255\]"),
        ({"lidar_px": {"cam": [0], "u": [1], "v": [1], "depth": [1], "obj": [0.5]}}, "lidar_px.obj: expected integers"),
        ({"lidar_px": {"cam": [0, 1], "u": [1], "v": [1], "depth": [1], "obj": [0]}}, "lidar_px: columns must be 1-D"),
        ({"lidar_px": {"cam": [0], "u": [np.inf], "v": [1], "depth": [1], "obj": [0]}}, "lidar_px.u: 1 values"),
    ],
)
def test_bad_shapes_and_dtypes_raise_naming_the_array_and_write_nothing(tmp_path, bad, says):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        kw = store.keyframe_writer()
        with pytest.raises(ValueError, match=says):
            kw.write_keyframe(2, **{**keyframe(2), **bad})
        assert store.todo_indices().tolist() == [0, 1, 2, 3, 4, 5]
    assert not (path / "dino/feat/c").exists() and not (path / "lidar_px/000002").exists()


def test_generic_writes_check_names_and_indices(tmp_path):
    path = tmp_path / "labels.zarr"
    with make_store(path) as store:
        kw = store.keyframe_writer()
        data = keyframe(0)
        with pytest.raises(ValueError, match=r"missing \['dino/count'\], unknown \['dino/cnt'\]"):
            kw.write_keyframe_arrays(
                0, {"dino/feat": data["dino_feat"], "dino/cnt": data["dino_count"]}, {"lidar_px": {}}
            )
        with pytest.raises(IndexError, match=r"keyframe index 6 out of range \[0, 6\)"):
            kw.write_keyframe(6, **data)


# -- failures, summary, later stages, the trainer's check -----------------------------------------
def test_failures_are_recorded_in_the_attrs_and_reported_by_summary(tmp_path, caplog):
    path = tmp_path / "labels.zarr"
    with caplog.at_level(logging.WARNING, logger="bevlabels.cache"):
        run_label_stage(path)
    assert "scene scene-c failed: missing image CAM_FRONT/n015.jpg" in caplog.text
    reader = LabelStoreReader(path)
    assert reader.attrs["failures"] == {"labels": {"scene-c": "missing image CAM_FRONT/n015.jpg"}}
    summary = reader.summary()
    assert (summary["total"], summary["done"], summary["todo"]) == (6, 5, 1)
    assert summary["incomplete_scenes"] == ["scene-c"]
    assert summary["failures"] == {"scene-c": "missing image CAM_FRONT/n015.jpg"}
    filled = sum(int(np.count_nonzero(keyframe(s)["dino_count"])) for s in range(5))
    assert summary["coverage"] == pytest.approx(filled / (5 * 6 * 8))  # share of cells with points
    assert reader.attrs["stages"]["labels"]["last_run"]["done"] == 5

    with make_store(path) as store:  # the image is back: the rerun completes scene-c
        store.keyframe_writer().write_keyframe(5, **keyframe(5))
        assert store.record_failures({}) == {}  # a scene now complete is no longer failed
        with pytest.raises(ValueError, match="scenes the store does not have: scene-z"):
            store.record_failures({"scene-z": "typo"})


def test_a_later_stage_adds_its_arrays_and_done_flags_without_touching_the_labels(tmp_path):
    path = tmp_path / "labels.zarr"
    run_label_stage(path)
    before = store_files(path)
    dims = {"C_t": 4, "H_t": 3, "W_t": 4}
    with LabelStoreWriter.open(path) as store:
        store.add_stage(TEACHER, dims=dims, identity={"checkpoint": "centerpoint-e20"})
        kw = store.keyframe_writer("teacher")
        bev = np.arange(48, dtype=np.float16).reshape(4, 3, 4)  # (C_t, H_t, W_t)
        kw.write_keyframe_arrays(3, {"teacher/bev": bev})
        with pytest.raises(ValueError, match="writes the labels stage"):
            kw.write_keyframe(3, **keyframe(3))
        assert store.todo_indices("teacher").tolist() == [0, 1, 2, 4, 5]
        assert store.todo_indices("labels").tolist() == [5]
        store.add_stage(TEACHER, dims=dims, identity={"checkpoint": "centerpoint-e20"})  # same: a no-op
        with pytest.raises(StoreMismatchError, match="stages.teacher.identity") as err:
            store.add_stage(TEACHER, dims=dims, identity={"checkpoint": "centerpoint-e40"})
        assert err.value.field == "stages.teacher.identity"
    reader = LabelStoreReader(path)
    assert reader.has("teacher/bev") and reader.has("teacher/done")
    np.testing.assert_array_equal(reader.teacher_bev(3), bev)
    after = store_files(path)
    assert {k: v for k, v in after.items() if not k.startswith("teacher")} == before

    with LabelStoreWriter.open(path) as store:
        store.add_stage(TEACHER, dims={"C_t": 2, "H_t": 3, "W_t": 4}, identity={"checkpoint": "e40"}, overwrite=True)
        assert store.todo_indices("teacher").size == 6 and store.todo_indices("labels").tolist() == [5]
        assert store.stages["teacher"]["identity"] == {"checkpoint": "e40"}


def test_check_compatible_refuses_another_grid_missing_or_unfinished_keyframes(tmp_path):
    path = tmp_path / "labels.zarr"
    run_label_stage(path)  # keyframe 5 (scene-c) failed
    reader = LabelStoreReader(path)
    assert reader.check_compatible(grid=GRID, sample_tokens=["tok03", "tok01"]).tolist() == [3, 1]  # a split
    with pytest.raises(StoreMismatchError, match="the config asks for") as err:
        reader.check_compatible(grid=GridSpec((-4.0, 4.0, 1.0), (-4.0, 4.0, 1.0)))
    assert err.value.field == "grid"
    with pytest.raises(StoreMismatchError, match="lacks 1 of the 2 keyframes .*other-token"):
        reader.check_compatible(sample_tokens=["tok00", "other-token"])
    with pytest.raises(StoreIncompleteError, match="1 of the 6 keyframes .*tok05.*missing image") as err:
        reader.check_compatible(grid=GRID)
    assert err.value.indices.tolist() == [5]
    with pytest.raises(StoreError, match="no 'teacher' stage"):
        reader.check_compatible(stage="teacher")


def test_labels_stage_spec_matches_the_written_store(tmp_path):
    path = tmp_path / "labels.zarr"
    make_store(path).close()
    entry = LabelStoreReader(path).stages["labels"]
    assert sorted(entry["arrays"]) == sorted(a.name for a in LABELS.arrays)
    assert entry["done"] == LABELS.done and list(entry["tables"]) == ["lidar_px"]


def test_a_schema_1_store_is_refused_naming_make_labels(tmp_path):
    """Stores made before the occlusion-correct visibility (issue 32) leak: the reader refuses them, saying how to remake."""
    import zarr

    from bevlabels.cache import LabelStoreReader

    path = tmp_path / "old.zarr"
    make_store(path)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["schema_version"] = 1
    with pytest.raises(StoreMismatchError, match=r"schema version 1.*z-buffer.*make labels") as err:
        _ = LabelStoreReader(path).sample_tokens
    assert err.value.field == "schema_version"
