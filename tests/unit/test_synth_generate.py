"""Writing the synthetic dataset: staging, overwrite, and what it never touches (a micro world, seconds)."""

from __future__ import annotations

import pytest

from bevlabels.synthetic import OutputDirError, SynthConfig, generate, read_meta
from bevlabels.synthetic.generate import staging_dir


def micro() -> SynthConfig:
    """One val scene of 2 keyframes, a coarse LiDAR and thumbnail images: about two seconds."""
    return SynthConfig.from_preset(
        "tiny", train_scenes=0, val_scenes=1, keyframes=2, sweeps_per_keyframe=2, image_width=48, image_height=16,
        cameras=("CAM_FRONT",), lidar={"azimuth_steps": 180}, traffic_density=0.0,
    )  # fmt: skip


def test_overwrite_replaces_only_what_a_previous_run_wrote(tmp_path):
    out = tmp_path / "world"
    generate(micro(), out, log=lambda m: None)
    assert (out / "v1.0-mini" / "sample.json").is_file() and not staging_dir(out).exists()
    stale = out / "samples" / "CAM_FRONT" / "stale.jpg"
    stale.write_bytes(b"old")
    mine = out / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(OutputDirError):
        generate(micro(), out, log=lambda m: None)
    assert stale.exists()
    generate(micro(), out, overwrite=True, log=lambda m: None)
    assert not stale.exists() and mine.read_text() == "keep me"
    assert read_meta(out)["config"]["keyframes"] == 2


def test_an_interrupted_run_leaves_out_absent_and_is_redone(tmp_path):
    out = tmp_path / "world"
    leftover = staging_dir(out)
    (leftover / "samples").mkdir(parents=True)
    (leftover / "samples" / "half.bin").write_bytes(b"x")  # what a killed run leaves behind
    assert not out.exists()
    generate(micro(), out, log=lambda m: None)
    assert not leftover.exists() and not (out / "samples" / "half.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["maps", "oracle", "samples", "sweeps", "synth.json", "v1.0-mini"]
