"""``python -m trainer.view``: a scene's recording, read back with rerun's own reader (``rerun.dataframe``).

On the `tiny` world's val scene (scene-0103: 4 keyframes, six 352x128 cameras) and its tiny label store: the
recording holds the entities the viewer promises, one row per keyframe on both timelines (``keyframe`` and the
keyframe's ``time``), as many GT boxes as the devkit annotates at each keyframe, a GT centre where the devkit puts
the annotation, a track's positions equal to the tracking JSON's translations, the detections a JSON holds above
``min_score``, a checkpoint's detections predicted on the scene, a teacher map beside the target when the store has
one, and the refusals of files, stores and scenes that do not fit, each naming the fault.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import nuscenes_dataset  # tests/conftest.py

rr = pytest.importorskip("rerun", reason='rerun is the viz extra: pip install -e ".[viz]" (make setup installs it)')

REPO = Path(__file__).resolve().parents[2]
SCENE = "scene-0103"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


#: rerun's native code (its Rust core) writes and reads a recording, in a process of its own
NATIVE_PROBE = """
import sys, rerun as rr
rec = rr.RecordingStream("bevlabels-probe")
rec.save(sys.argv[1])
rec.set_time_sequence("keyframe", 0)
rec.log("/probe", rr.Points3D([[0.0, 1.0, 2.0]]))
rec.flush(blocking=True)
del rec
table = rr.dataframe.load_recording(sys.argv[1]).view(index="keyframe", contents="/**").select().read_all()
assert table.num_rows == 1, table
"""


def _native_probe(tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NATIVE_PROBE, str(tmp / "probe.rrd")], capture_output=True, text=True, timeout=120
    )


def test_rerun_writes_and_reads_a_recording_on_this_processor(rerun_probe):
    """rerun's native core, in a subprocess: on a processor it cannot run on, this test fails (not the suite)."""
    assert rerun_probe.returncode == 0, (rerun_probe.returncode, rerun_probe.stderr[-3000:])


@pytest.fixture(scope="module")
def rerun_probe(tmp_path_factory) -> subprocess.CompletedProcess:
    return _native_probe(tmp_path_factory.mktemp("rerun_probe"))


@pytest.fixture(autouse=True)
def rerun_runs_here(request, rerun_probe):
    """The other tests run rerun in this process: they are skipped where the probe's subprocess did not survive, so
    a native crash fails the probe test above instead of taking the whole suite down."""
    if request.function is not test_rerun_writes_and_reads_a_recording_on_this_processor and rerun_probe.returncode:
        pytest.skip(f"rerun's native code failed in a subprocess (exit {rerun_probe.returncode}): see the probe test")


@pytest.fixture(scope="module")
def nusc(synth_tiny):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_tiny), verbose=False)


@pytest.fixture(scope="module")
def frames(synth_tiny):
    from bevlabels.datasets.factory import build_adapter

    return build_adapter(nuscenes_dataset(synth_tiny)["adapter"]).keyframes(SCENE)


class Recording:
    """A ``.rrd`` read back: its entities and its rows on the ``keyframe`` timeline."""

    def __init__(self, path: Path):
        rec = rr.dataframe.load_recording(str(path))
        self.entities = {c.entity_path for c in rec.schema().component_columns()}
        self.table = rec.view(index="keyframe", contents="/**").select().read_all()
        self.times = rec.view(index="time", contents="/**").select().read_all().column("time").to_pylist()

    @property
    def keyframes(self) -> list[int]:
        return self.table.column("keyframe").to_pylist()

    def column(self, entity: str, component: str) -> list:
        """One value (a list of instances, or None where nothing was logged) per keyframe row."""
        name = f"{entity}:{component}"
        assert name in self.table.column_names, (name, [c for c in self.table.column_names if entity in c])
        return self.table.column(name).to_pylist()

    def counts(self, entity: str, component: str) -> list[int | None]:
        return [None if v is None else len(v) for v in self.column(entity, component)]


def _gt_tracking_json(nusc, frames, path: Path, every_other: str | None = None) -> tuple[Path, dict[str, str]]:
    """The scene's GT as a tracking results file (one track per instance of a tracking class, ids 0, 1, ..., boxes
    at the devkit's annotation translations) and ``{instance token: track id}``; ``every_other``: that instance only
    at keyframes 0 and 2."""
    from nuscenes.eval.tracking.utils import category_to_tracking_name

    ids: dict[str, str] = {}
    results = {}
    for f in frames:
        boxes = []
        for ann_token in nusc.get("sample", f.token)["anns"]:
            a = nusc.get("sample_annotation", ann_token)
            name = category_to_tracking_name(a["category_name"])
            if name is None or (a["instance_token"] == every_other and f.index % 2):
                continue
            tid = ids.setdefault(a["instance_token"], str(len(ids)))
            boxes.append(
                {"sample_token": f.token, "translation": a["translation"], "size": a["size"], "rotation": a["rotation"],
                 "velocity": [0.0, 0.0], "tracking_id": tid, "tracking_name": name, "tracking_score": 0.9}
            )  # fmt: skip
        results[f.token] = boxes
    path.write_text(json.dumps({"meta": {"use_camera": True}, "results": results}))
    return path, ids


def _gt_detection_json(nusc, frames, path: Path) -> Path:
    """The scene's GT annotations as detections: every box twice, at score 0.9 and, 5 m higher, at 0.05."""
    results = {}
    for f in frames:
        boxes = []
        for ann_token in nusc.get("sample", f.token)["anns"]:
            a = nusc.get("sample_annotation", ann_token)
            for score, dz in ((0.9, 0.0), (0.05, 5.0)):
                t = [a["translation"][0], a["translation"][1], a["translation"][2] + dz]
                boxes.append(
                    {"sample_token": f.token, "translation": t, "size": a["size"], "rotation": a["rotation"],
                     "velocity": [0.0, 0.0], "detection_name": "car", "detection_score": score, "attribute_name": ""}
                )  # fmt: skip
        results[f.token] = boxes
    path.write_text(json.dumps({"meta": {"use_camera": True}, "results": results}))
    return path


@pytest.fixture(scope="module")
def gt_only(synth_tiny, synth_tiny_store, tmp_path_factory):
    """The labels-and-GT recording of scene-0103 (no checkpoint, no results file)."""
    from trainer.view import view

    out = tmp_path_factory.mktemp("view") / "gt.rrd"
    summary = view(nuscenes_dataset(synth_tiny), scene=SCENE, store=synth_tiny_store, out=out, progress=False)
    return summary, Recording(out)


def test_labels_and_gt_recording_holds_every_part_at_every_keyframe(gt_only, frames, synth_tiny_store):
    from bevlabels.cache import LabelStoreReader

    summary, rec = gt_only
    n = len(frames)
    assert n == 4 and summary["keyframes"] == n and summary["scene"] == SCENE
    expected = {"/world/ego", "/world/ego_path", "/world/gt", "/world/lidar/static", "/world/lidar/dynamic",
                "/world/lidar/sweep", "/bev/target", "/bev/target/gt", "/log", "/description"}  # fmt: skip
    expected |= {f"/world/ego/cam/{c}" for c in CAMERAS} | {f"/world/ego/cam/{c}/image" for c in CAMERAS}
    expected |= {f"/world/ego/cam/{c}/image/gt" for c in CAMERAS}
    assert expected <= rec.entities, sorted(expected - rec.entities)
    assert not {e for e in rec.entities if e.startswith(("/world/pred", "/world/tracks", "/bev/teacher"))}
    # one row per keyframe on both timelines: the index, and the keyframe's own timestamp
    assert rec.keyframes == list(range(n))
    assert [np.datetime64(t, "us").astype(np.int64) for t in rec.times] == [f.timestamp for f in frames]
    # as many GT boxes as the keyframe has, six images, a pose per keyframe
    assert rec.counts("/world/gt", "HalfSize3D") == [len(f.boxes) for f in frames]
    for c in CAMERAS:
        assert rec.counts(f"/world/ego/cam/{c}/image", "Blob") == [1] * n
    np.testing.assert_allclose(
        [v[0] for v in rec.column("/world/ego", "Translation3D")], [f.global_from_ego[:3, 3] for f in frames], atol=1e-3
    )
    # the scene-wide static map once (it stays on screen), object points and the sweep at every keyframe
    static = rec.counts("/world/lidar/static", "Position3D")
    assert static[0] > 1000 and static[1:] == [None] * (n - 1)
    assert all(c and c > 0 for c in rec.counts("/world/lidar/dynamic", "Position3D"))
    assert all(c and c > 1000 for c in rec.counts("/world/lidar/sweep", "Position3D"))
    # the BEV target is the store's grid, +y up; the store has no teacher map, and the log says so
    H, W = LabelStoreReader(synth_tiny_store).grid.shape
    fmt = rec.column("/bev/target", "ImageFormat")
    assert all(f and (f[0]["height"], f[0]["width"]) == (H, W) for f in fmt), fmt[0]
    logs = [t for row in rec.column("/log", "Text") if row for t in row]
    assert any("teacher/bev" in t for t in logs), logs
    assert summary["counts"]["world/gt"] == n


def test_a_gt_box_sits_where_the_devkit_puts_its_annotation(gt_only, frames, nusc):
    """The recording is in the global frame: the adapter's ego-frame boxes go back through the keyframe's pose to the
    devkit's ``sample_annotation.translation`` (float32 in the recording: well within a millimetre here)."""
    _, rec = gt_only
    centres = rec.column("/world/gt", "PoseTranslation3D")
    for k in (0, len(frames) - 1):
        f = frames[k]
        m = len(f.boxes) // 2
        ann = nusc.get("sample_annotation", f.boxes.token[m])
        np.testing.assert_allclose(centres[k][m], ann["translation"], atol=1e-3)


def test_one_tracks_positions_equal_the_tracking_json(synth_tiny, frames, nusc, tmp_path):
    """Every track of a tracking JSON is an entity whose box centre at each keyframe is the file's translation; a
    track absent at a keyframe is cleared there; its trail holds its centres so far."""
    from trainer.view import view

    first = frames[0].boxes
    car = next(inst for inst, c in zip(first.instance_id, first.detection_class) if c == "car")
    path, id_of = _gt_tracking_json(nusc, frames, tmp_path / "tracks.json", every_other=car)
    data = json.loads(path.read_text())["results"]
    out = tmp_path / "tracks.rrd"
    summary = view(
        nuscenes_dataset(synth_tiny), scene=SCENE, tracks=path, store=None, lidar=False, out=out, progress=False
    )
    rec = Recording(out)
    ids = sorted(id_of.values(), key=int)
    assert summary["tracks"] == len(ids) > 3
    assert {f"/world/tracks/{i}" for i in ids} <= rec.entities
    assert not {e for e in rec.entities if e.startswith("/bev")}  # store=None: no BEV grids
    for tid in (ids[0], ids[-1], id_of[car]):
        want = [next((b["translation"] for b in data[f.token] if b["tracking_id"] == tid), None) for f in frames]
        got = rec.column(f"/world/tracks/{tid}", "PoseTranslation3D")
        for w, g in zip(want, got):
            assert (w is None) == (g is None or len(g) == 0), (tid, want, got)
            if w is not None:
                np.testing.assert_allclose(g[0], w, atol=1e-3)
    # the car seen every other keyframe: its box at 0 and 2, cleared at 1 and 3 (a Clear, not a box)
    got = rec.column(f"/world/tracks/{id_of[car]}", "PoseTranslation3D")
    assert [g is not None and len(g) == 1 for g in got] == [True, False, True, False]
    # a track at every keyframe has a trail of its centres so far
    everywhere = next(t for t in ids if all(any(b["tracking_id"] == t for b in data[f.token]) for f in frames))
    trail = rec.column(f"/world/tracks/{everywhere}/trail", "LineStrip3D")
    assert [len(t[0]) for t in trail] == [1, 2, 3, 4]
    assert rec.counts("/world/ego/cam/CAM_FRONT/image/tracks", "LineStrip2D")[0] % 12 == 0  # 12 edges a box


def test_detections_json_drawn_above_min_score_and_tracked(synth_tiny, frames, nusc, tmp_path):
    from trainer.view import view

    path = _gt_detection_json(nusc, frames, tmp_path / "det.json")
    out = tmp_path / "det.rrd"
    summary = view(
        nuscenes_dataset(synth_tiny), scene=SCENE, detections=path, store=None, lidar=False, out=out, min_score=0.5,
        tracker="kalman", progress=False,
    )  # fmt: skip
    rec = Recording(out)
    assert rec.counts("/world/pred", "HalfSize3D") == [len(f.boxes) for f in frames]  # the 0.05 copies are not drawn
    assert summary["detections"] == sum(len(f.boxes) for f in frames)
    labels = rec.column("/world/pred", "Text")[0]
    assert labels[0] == "car 0.90"
    assert summary["tracks"] > 0 and any(e.startswith("/world/tracks/") for e in rec.entities)
    assert "kalman" in summary["sources"]["tracks"]


@pytest.fixture(scope="module")
def tiny_ckpt(synth_tiny, compose_train, tmp_path_factory) -> Path:
    """A tiny LiDAR teacher (trainer/tiny.py) trained for one step on the tiny world: a checkpoint without a store."""
    import torch

    from trainer.tiny import TINY_TEACHER
    from trainer.train import train

    run_dir = tmp_path_factory.mktemp("view_ckpt")
    overrides = [
        "experiment=teacher_centerpoint", f"dataset.root={synth_tiny}", "grid=near", f"run_dir={run_dir}",
        "trainer.enable_model_summary=false", *TINY_TEACHER, "data.batch_size=2", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
    ]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Path(train(compose_train(overrides))["last_ckpt"])
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_predicts_the_scene_and_its_detections_are_tracked(tiny_ckpt, synth_tiny, tmp_path):
    from trainer.view import ViewError, view

    out = tmp_path / "ckpt.rrd"
    summary = view(
        nuscenes_dataset(synth_tiny), scene=SCENE, ckpt=tiny_ckpt, store=None, lidar=False, out=out, min_score=0.0,
        device="cpu", progress=False,
    )  # fmt: skip
    rec = Recording(out)
    counts = rec.counts("/world/pred", "HalfSize3D")
    assert len(counts) == 4 and None not in counts and summary["detections"] == sum(counts) > 0
    assert "predicted here" in summary["sources"]["detections"] and "kalman" in summary["sources"]["tracks"]
    other = {**nuscenes_dataset(synth_tiny), "version": "v1.0-trainval"}
    with pytest.raises(ViewError, match=r"was trained on dataset 'synthetic' 'v1.0-mini'"):
        view(other, scene=SCENE, ckpt=tiny_ckpt, store=None, lidar=False, out=tmp_path / "x.rrd", progress=False)


def test_files_and_scenes_that_do_not_fit_are_refused_naming_them(synth_tiny, frames, nusc, tmp_path):
    from trainer.track import TrackingFileError
    from trainer.view import ResultsFileError, ViewError, view

    ds = nuscenes_dataset(synth_tiny)
    with pytest.raises(ViewError, match=r"scene=scene-9999: no such scene .*scene-0061, scene-0103"):
        view(ds, scene="scene-9999", out=tmp_path / "x.rrd", progress=False)
    tracks, _ = _gt_tracking_json(nusc, frames, tmp_path / "tracks.json")
    with pytest.raises(ResultsFileError, match=rf"no keyframe of scene scene-0061 .*first sample .* of scene {SCENE}"):
        view(ds, scene="scene-0061", tracks=tracks, store=None, out=tmp_path / "x.rrd", progress=False)
    bad = json.loads(tracks.read_text())
    del bad["results"][frames[0].token][0]["tracking_id"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(TrackingFileError, match=r"bad.json: results\[.*\]\[0\] lacks \['tracking_id'\]"):
        view(ds, scene=SCENE, tracks=tmp_path / "bad.json", out=tmp_path / "x.rrd", progress=False)
    with pytest.raises(ViewError, match="ckpt=... or detections=..., not both"):
        view(ds, scene=SCENE, ckpt="a.ckpt", detections=tracks, out=tmp_path / "x.rrd", progress=False)


def test_a_store_of_another_dataset_is_refused_or_left_out_when_optional(synth_tiny, synth_tiny_store, tmp_path):
    """An explicit store that does not fit is refused; the default one (``store=auto``: optional) is left out, and the
    recording has no BEV grids."""
    from trainer.view import ViewError, view

    other = {**nuscenes_dataset(synth_tiny), "version": "v1.0-trainval"}
    with pytest.raises(ViewError, match=r"store=.* was made from dataset 'synthetic' 'v1.0-mini'"):
        view(other, scene=SCENE, store=synth_tiny_store, lidar=False, out=tmp_path / "x.rrd", progress=False)
    out = tmp_path / "optional.rrd"
    view(other, scene=SCENE, store=synth_tiny_store, store_optional=True, lidar=False, out=out, progress=False)
    assert not {e for e in Recording(out).entities if e.startswith("/bev")}


def test_a_teacher_map_in_the_store_is_shown_beside_the_target(synth_tiny, synth_tiny_store, frames, tmp_path):
    """A copy of the tiny store given a teacher stage (random maps at half the grid's resolution): ``bev/teacher`` at
    every keyframe, at the teacher's size, with the GT footprints scaled onto it."""
    import shutil

    from bevlabels.cache import TEACHER, LabelStoreReader, LabelStoreWriter
    from trainer.view import view

    store = tmp_path / "with_teacher.zarr"
    shutil.copytree(synth_tiny_store, store)
    H, W = LabelStoreReader(store).grid.shape
    dims = {"C_t": 8, "H_t": H // 2, "W_t": W // 2}
    rng = np.random.default_rng(0)
    with LabelStoreWriter.open(store) as writer:
        writer.add_stage(TEACHER, dims=dims, identity={"checkpoint": "test"})
        keyframes = writer.keyframe_writer("teacher")
        for f in frames:
            bev = rng.normal(size=(8, H // 2, W // 2)).astype(np.float16)
            keyframes.write_keyframe_arrays(writer.index_of(f.token), {"teacher/bev": bev})
    out = tmp_path / "teacher.rrd"
    view(nuscenes_dataset(synth_tiny), scene=SCENE, store=store, lidar=False, out=out, progress=False)
    rec = Recording(out)
    fmt = rec.column("/bev/teacher", "ImageFormat")
    assert [(f[0]["height"], f[0]["width"]) for f in fmt] == [(H // 2, W // 2)] * len(frames)
    assert rec.counts("/bev/teacher/gt", "LineStrip2D") == rec.counts("/bev/target/gt", "LineStrip2D")
    on_target, on_teacher = (
        rec.column("/bev/target/gt", "LineStrip2D")[0],
        rec.column("/bev/teacher/gt", "LineStrip2D")[0],
    )
    np.testing.assert_allclose(np.array(on_teacher[0]), np.array(on_target[0]) / 2, atol=1e-4)  # half the pixels
    logs = [t for row in rec.column("/log", "Text") if row for t in row] if "/log" in rec.entities else []
    assert not any("teacher/bev" in t for t in logs), logs


def test_without_rerun_the_command_says_how_to_get_it(synth_tiny, tmp_path):
    """rerun hidden from the import system: the entry point stops with the install command, before loading anything."""
    code = (
        "import sys; sys.modules['rerun'] = None; sys.argv = ['trainer.view', "
        f"'dataset.root={synth_tiny}', 'scene={SCENE}', 'hydra.run.dir={tmp_path}']; "
        "from trainer.view import main; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert 'trainer.view: the scene viewer needs rerun, which is not installed: pip install -e ".[viz]"' in r.stderr


def test_the_command_line_writes_the_recording_and_says_how_to_open_it(
    synth_tiny, synth_tiny_store, frames, nusc, tmp_path
):
    tracks, _ = _gt_tracking_json(nusc, frames, tmp_path / "tracks.json")
    out = tmp_path / "cli.rrd"
    r = subprocess.run(
        [sys.executable, "-m", "trainer.view", f"dataset.root={synth_tiny}", f"scene={SCENE}", f"tracks={tracks}",
         f"store={synth_tiny_store}", "lidar=false", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"open it: rerun {out}" in r.stdout, r.stdout[-2000:]
    assert Recording(out).keyframes == [0, 1, 2, 3]
