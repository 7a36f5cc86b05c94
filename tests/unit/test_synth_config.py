"""The synthetic world's configuration: presets, the rig, and bad input refused before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bevlabels.synthetic import OutputDirError, SynthConfig, SynthConfigError, generate, preset_names
from bevlabels.synthetic.rig import CAMERA_NAMES, RIG, LidarSpec, camera_intrinsics

REPO = Path(__file__).resolve().parents[2]


def test_presets_are_what_the_issue_asks_for():
    assert preset_names() == ["fullsize", "medium", "small", "tiny"]
    tiny, small, medium = (SynthConfig.from_preset(n) for n in ("tiny", "small", "medium"))
    assert tiny.keyframes <= 5 and tiny.image_width * tiny.image_height <= 352 * 128
    # small: ~10 scenes of 20 keyframes, 6 cameras at 256x704, named from v1.0-mini's split
    assert (small.train_scenes + small.val_scenes, small.keyframes) == (10, 20)
    assert (small.image_height, small.image_width, small.cameras) == (256, 704, CAMERA_NAMES)
    assert small.version == "v1.0-mini" and small.val_split == "mini_val"
    # medium: >= 60 scenes of 40 keyframes, needs v1.0-trainval names
    assert medium.train_scenes + medium.val_scenes >= 60 and medium.keyframes == 40
    assert medium.version == "v1.0-trainval" and medium.val_split == "val"
    # fullsize (the label-stage benchmark at nuScenes size): 6 cameras at 1600x900, a few scenes of 40 keyframes,
    # the 32-beam LiDAR at nuScenes' density (~34k rays per sweep)
    full = SynthConfig.from_preset("fullsize")
    assert (full.image_width, full.image_height, full.cameras, full.keyframes) == (1600, 900, CAMERA_NAMES, 40)
    assert full.lidar.beams == 32 and 30_000 <= full.lidar.beams * full.lidar.azimuth_steps <= 40_000


def test_scene_names_come_from_the_devkit_splits():
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    small = SynthConfig.from_preset("small")
    names = small.scene_names()
    assert sorted(n for n, s in names if s == "mini_train") == sorted(splits["mini_train"])  # all 8
    assert sorted(n for n, s in names if s == "mini_val") == sorted(splits["mini_val"])  # both
    medium = SynthConfig.from_preset("medium").scene_names()
    assert all(n in splits[s] for n, s in medium) and len({n for n, _ in medium}) == len(medium)
    assert sum(s == "val" for _, s in medium) == 12


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"cameras": ()}, "at least one camera"),
        ({"cameras": ("CAM_FRONT", "CAM_TOP")}, "unknown channel"),
        ({"image_width": -704}, "width and height must be >= 16"),
        ({"image_height": 0}, "width and height must be >= 16"),
        ({"train_scenes": -1}, "cannot be negative"),
        ({"train_scenes": 0, "val_scenes": 0}, "at least 1"),
        ({"val_scenes": 3}, "has 2 scene names in split 'mini_val'"),
        ({"keyframes": 1}, "at least 2 keyframes"),
        ({"sweeps_per_keyframe": 0}, "sweeps_per_keyframe=0"),
        ({"version": "v1.0-test"}, "version='v1.0-test'"),
        ({"seed": -3}, "seed=-3"),
        ({"seed": "abc"}, "seed='abc': must be an integer"),
        ({"traffic_density": -1.0}, "traffic_density"),
        ({"lidar": {"beams": 0}}, "lidar beams=0"),
        ({"lidar": {"fov_deg": [10.0, -30.0]}}, "fov_deg"),
        ({"lidar": {"max_range": -70.0}}, "min_range"),
        ({"colour": "red"}, "unknown parameter(s) ['colour']"),
    ],
)
def test_impossible_parameters_name_the_field(override, message):
    with pytest.raises(SynthConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SynthConfig.from_preset("tiny", **override)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        SynthConfigError,
        match=r"unknown synthetic-world preset 'huge'; known presets: \['fullsize', 'medium', 'small', 'tiny'\]",
    ):
        SynthConfig.from_preset("huge")


def test_non_empty_output_folder_is_refused_and_left_untouched(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(OutputDirError, match="not empty; pass overwrite=true"):
        generate(SynthConfig.from_preset("tiny"), tmp_path, log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and keep.read_text() == "mine"
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(OutputDirError, match="is not a folder"):
        generate(SynthConfig.from_preset("tiny"), afile, overwrite=True, log=lambda m: None)


def test_cli_refuses_bad_input_before_any_work(tmp_path, compose_labels):
    from pipelines.synth import run_synth

    # through the real command line: an unknown preset (Hydra lists the known ones), a non-empty folder
    cmd = [sys.executable, "-m", "pipelines.synth"]
    r = subprocess.run(
        [*cmd, "preset=huge", f"out={tmp_path / 'a'}"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "Could not find 'preset/huge'" in r.stderr and "tiny" in r.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    r = subprocess.run(
        [*cmd, "preset=tiny", f"out={tmp_path / 'c'}"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "not empty; pass overwrite=true" in r.stderr
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["x"]
    # the same checks in-process, for the other bad values
    for overrides, message in (
        (["preset.image_width=-4"], "width and height must be >= 16"),
        (["workers=0"], "workers=0"),
        (["seed=-1"], "seed=-1"),
        (["overwrite=maybe"], "overwrite='maybe'"),
    ):
        with pytest.raises(SystemExit, match=message):
            run_synth(compose_labels(["preset=tiny", f"out={tmp_path / 'b'}", *overrides], config_name="synth"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_default_output_folder_is_where_the_label_stage_looks(monkeypatch, compose_labels):
    monkeypatch.delenv("BEVLABELS_DATA", raising=False)
    cfg = compose_labels(["preset=tiny", "seed=7"], config_name="synth")
    assert cfg.out == "data/synthetic/tiny-seed7" and cfg.preset.name == "tiny" and not cfg.overwrite
    # with no arguments, both stages mean the small world of seed 0
    assert compose_labels([]).dataset.root == compose_labels([], config_name="synth").out


def test_intrinsics_follow_the_bevdet_resize_and_crop():
    # 1600x900 -> x0.44 -> 704x396 -> crop 140 rows off the top -> 704x256
    K = camera_intrinsics("CAM_FRONT", 704, 256)
    K0 = np.asarray(RIG["CAM_FRONT"].K)
    np.testing.assert_allclose(K[0, 0], K0[0, 0] * 0.44)
    np.testing.assert_allclose(K[1, 2], K0[1, 2] * 0.44 - 140.0)
    np.testing.assert_allclose(K[0, 2], K0[0, 2] * 0.44)
    # full resolution is the real calibration
    np.testing.assert_allclose(camera_intrinsics("CAM_BACK", 1600, 900), RIG["CAM_BACK"].K)


def test_lidar_is_a_32_beam_spinning_sensor():
    dirs, ring = LidarSpec().ray_directions()
    assert dirs.shape == (32 * 1084, 3) and ring.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    elev = np.rad2deg(np.arcsin(dirs[:, 2]))
    assert elev.min() == pytest.approx(-30.67) and elev.max() == pytest.approx(10.67)
    # ring 0 is the lowest beam, and a ring keeps one elevation all the way round
    assert np.ptp(elev[ring == 0]) < 1e-9 and elev[ring == 0][0] == pytest.approx(-30.67)
