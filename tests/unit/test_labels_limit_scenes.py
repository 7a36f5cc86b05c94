"""``python -m pipelines.labels limit_scenes=n`` on a synthetic world not yet rendered renders only the scenes it
labels; a later run that needs the others renders those, and only those (the `tiny` preset, two scenes: seconds)."""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf

from bevlabels.datasets.nuscenes import NuScenesDataset
from bevlabels.synthetic.generate import has_world, read_meta
from pipelines.labels import ensure_dataset, plan

generate_module = importlib.import_module("bevlabels.synthetic.generate")  # the package exports a function so named


def test_limit_scenes_renders_only_the_scenes_it_labels_and_a_full_run_the_rest(tmp_path, monkeypatch, compose_labels):
    root = tmp_path / "tiny-seed0"
    cfg = compose_labels(
        ["dataset.generate.preset=tiny", "dataset.generate.workers=1", f"dataset.root={root}", "limit_scenes=1"]
    )
    ds_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    rendered = []
    render_one = generate_module._generate_job
    monkeypatch.setattr(generate_module, "_generate_job", lambda job: rendered.append(job[1]) or render_one(job))

    ensure_dataset(ds_cfg, cfg.scenes, cfg.limit_scenes)  # what prepare() does before labelling
    assert rendered == ["scene-0061"]  # tiny: scene-0061 (mini_train), then scene-0103 (mini_val)
    assert not has_world(root, ds_cfg)  # a partial world is never the whole one
    tokens, scene_of, _ = plan(NuScenesDataset(root, "v1.0-mini"), None, None, cfg.limit_scenes)
    assert set(scene_of) == {"scene-0061"} and len(tokens) == 4  # the run labels what was rendered

    ensure_dataset(ds_cfg, cfg.scenes, cfg.limit_scenes)  # the same quick look again: nothing to render
    assert rendered == ["scene-0061"]

    ensure_dataset(ds_cfg)  # a full run: the scene it lacks, and only that one
    assert rendered == ["scene-0061", "scene-0103"] and has_world(root, ds_cfg)
    assert [s["name"] for s in read_meta(root)["scenes"]] == ["scene-0061", "scene-0103"]
    assert NuScenesDataset(root, "v1.0-mini").scenes() == ["scene-0061", "scene-0103"]
