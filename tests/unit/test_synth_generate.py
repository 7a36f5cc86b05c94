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


def two_scenes() -> SynthConfig:
    """:func:`micro` with a train scene before its val scene: a world that can be written in parts."""
    return SynthConfig.from_dict({**micro().to_dict(), "train_scenes": 1})


def test_a_world_written_in_parts_is_the_world_written_at_once(tmp_path, monkeypatch):
    """``generate(..., scenes=...)`` renders only those scenes, into a world never taken for the whole one; a later
    ``generate`` renders only the scenes it lacks, and the result is byte for byte the world generated at once."""
    import filecmp
    import importlib

    from bevlabels.synthetic.generate import has_world, is_partial, missing_scenes, scene_order

    generate_module = importlib.import_module("bevlabels.synthetic.generate")  # the package exports a function so named

    cfg = two_scenes()
    first, second = scene_order(cfg)  # the train scene, then the val scene
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    generate(cfg, whole, log=lambda m: None)
    rendered = []
    render_one = generate_module._generate_job
    monkeypatch.setattr(generate_module, "_generate_job", lambda job: rendered.append(job[1]) or render_one(job))

    generate(cfg, parts, scenes=[second], log=lambda m: None)  # the later scene first: tables come out in order
    assert rendered == [second] and is_partial(parts) and not has_world(parts, {"version": cfg.version})
    assert [s["name"] for s in read_meta(parts)["scenes"]] == [second]
    assert missing_scenes(parts, cfg) == [first] and missing_scenes(parts, cfg, [second]) == []
    with pytest.raises(OutputDirError, match="part of a synthetic world of another config"):
        generate(SynthConfig.from_dict({**cfg.to_dict(), "seed": 1}), parts, log=lambda m: None)

    generate(cfg, parts, log=lambda m: None)  # a partial world is completed, not refused
    assert rendered == [second, first] and not is_partial(parts) and has_world(parts, {"version": cfg.version})
    assert missing_scenes(parts, cfg) == [] and not staging_dir(parts).exists()
    cmp = filecmp.dircmp(whole, parts)

    def differences(d) -> list[str]:
        return d.left_only + d.right_only + d.diff_files + [f for s in d.subdirs.values() for f in differences(s)]

    assert differences(cmp) == []
    for name in ("synth.json", *(f"v1.0-mini/{t}.json" for t in ("sample", "sample_data", "ego_pose", "instance"))):
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name  # dircmp compares shallowly
