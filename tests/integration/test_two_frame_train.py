"""Two-frame camera models (issue 36): ``experiment=bevdepth4d`` and ``dvd4d`` on the tiny synthetic world.

The data: a sample's previous keyframe is seen through the same augmentation draw, ``cur_from_prev`` moves the
previous (augmented) ego frame onto the current one so that static boxes line up and moving ones are displaced by
velocity x dt, a scene's first keyframe is its own previous one, and ``dt`` is the real keyframe interval. The models:
``dt`` reaches the loss from the batch, every parameter gets a gradient, ``fast_dev_run`` trains both, and a two-step
run evaluates from its checkpoint alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import test_bevdepth_train as bevdepth  # tests/integration/: the shared overrides
import test_dvd_train as dvd
import torch

EXPERIMENTS = ("bevdepth4d", "dvd4d", "bevdepth4d_pre")


def _overrides(experiment, root, store, run_dir, *extra):
    if experiment.startswith("bevdepth"):
        return bevdepth.train_overrides(experiment, root, store, run_dir, *extra)
    return dvd.train_overrides(experiment, root, store, run_dir, *extra)


def _datamodule(compose_train, root, store, tmp_path, experiment="bevdepth4d"):
    from hydra.utils import instantiate

    cfg = compose_train(_overrides(experiment, root, store, tmp_path))
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def test_the_previous_keyframe_is_augmented_alike_and_lines_up(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.data.common import augment_boxes

    _, dm = _datamodule(compose_train, synth_tiny, synth_tiny_store, tmp_path)
    frames = dm.frames("train")
    ds = dm.make_dataset(frames, train=True)
    starts = [i for i, f in enumerate(frames) if f.index == 0]
    first = ds[(starts[0], 7)]
    torch.testing.assert_close(first["prev_images"], first["images"])
    torch.testing.assert_close(first["cur_from_prev"], torch.eye(4))
    torch.testing.assert_close(first["dt"], torch.tensor((frames[1].timestamp - frames[0].timestamp) * 1e-6))

    moving, static = [], []
    for i in range(1, len(frames)):
        cur, prev = frames[i], frames[i - 1]
        if cur.scene != prev.scene:
            continue
        s = ds[(i, 1234 + i)]  # a stream seed: the draw the previous keyframe's own sample would get too
        p = ds[(i - 1, 1234 + i)]
        A = s["aug_from_ego"]
        torch.testing.assert_close(s["aug_from_ego"], p["aug_from_ego"])
        assert not torch.allclose(A, torch.eye(4))  # the test means something only under an augmentation
        torch.testing.assert_close(s["prev_images"], p["images"])
        torch.testing.assert_close(s["prev_K"], p["K"])
        torch.testing.assert_close(s["prev_ego_from_cam"], p["ego_from_cam"])
        dt = float(s["dt"])
        assert math.isclose(dt, (cur.timestamp - prev.timestamp) * 1e-6, rel_tol=1e-6)
        # every box seen at both keyframes: the previous centre carried by cur_from_prev, against the current one
        ids_prev = {iid: k for k, iid in enumerate(prev.boxes.instance_id)}
        bp = augment_boxes(torch.as_tensor(prev.boxes.boxes, dtype=torch.float64), A.double())
        bc = augment_boxes(torch.as_tensor(cur.boxes.boxes, dtype=torch.float64), A.double())
        T = s["cur_from_prev"].double()
        for k, iid in enumerate(cur.boxes.instance_id):
            if iid not in ids_prev:
                continue
            c_prev = T[:3, :3] @ bp[ids_prev[iid], :3] + T[:3, 3]
            shift = (bc[k, :2] - c_prev[:2]).numpy()
            v = 0.5 * (bc[k, 7:9] + (T[:2, :2] @ bp[ids_prev[iid], 7:9])).numpy()  # the mean velocity over dt
            if not np.isfinite(v).all():
                continue
            (moving if np.linalg.norm(v) > 1.0 else static).append((shift, v * dt))
    assert len(static) > 5 and len(moving) > 5, (len(static), len(moving))
    assert max(np.linalg.norm(s) for s, _ in static) < 0.5  # static boxes line up (a slow one moves < 1 m/s x dt)
    errors = [np.linalg.norm(s - d) for s, d in moving]
    assert np.median(errors) < 0.1 and max(errors) < 0.5, errors  # moving ones are displaced by v x dt


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_dt_reaches_the_loss_and_every_parameter_gets_a_gradient(
    experiment, compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    from hydra.utils import instantiate

    cfg, dm = _datamodule(compose_train, synth_tiny, synth_tiny_store, tmp_path, experiment)
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    assert module.detector.camera_bev.frames == 2
    ds = dm.make_dataset(dm.frames("train"), train=True)
    batch = dm.collate_fn([ds[(i, 5)] for i in (1, 2)])
    assert batch["prev_images"].shape == batch["images"].shape and batch["dt"].shape == (2,)
    module.train()
    losses = module.compute_loss(module(batch), batch)
    losses["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient (DDP would refuse them): {missing}"

    module.eval()  # the same weights and batch norm statistics, so only dt differs
    with torch.no_grad():
        a = module.compute_loss(module(batch), batch)
        b = module.compute_loss(module({**batch, "dt": batch["dt"] * 2}), {**batch, "dt": batch["dt"] * 2})
    vel = [k for k in a if k.startswith("det.") and k.endswith(".vel")] or ["det"]
    assert any(not torch.allclose(a[k], b[k]) for k in vel), f"dt does not reach the velocity loss ({vel})"
    same = [k for k in a if k.startswith("det.") and k.endswith((".hm", ".reg", ".dim"))]
    assert all(torch.allclose(a[k], b[k]) for k in same)


def test_the_displacement_head_decodes_velocity_over_dt():
    from trainer.models.components.center_head import CenterHead

    head = CenterHead(8, class_names=("car",), tasks=[{"classes": ["car"]}], velocity="displacement")
    boxes = torch.tensor([[0.5, 0.5, 0.0, 4.0, 2.0, 1.5, 0.3, 6.0, -2.0]])
    from bevlabels.grid import GridSpec

    grid = GridSpec(xbound=(-8.0, 8.0, 1.0), ybound=(-8.0, 8.0, 1.0))
    tg = head.targets([boxes, boxes], [torch.zeros(1, dtype=torch.long)] * 2, grid, dt=torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(tg[0]["vel"][:, 0], torch.tensor([[3.0, -1.0], [0.6, -0.2]]))
    preds = [
        {"hm": torch.full((2, 1, 16, 16), -9.0), **{k: torch.zeros(2, c, 16, 16) for k, c in head.common_heads.items()}}
    ]
    preds[0]["hm"][:, 0, 8, 8] = 5.0
    preds[0]["vel"][:, :, 8, 8] = torch.tensor([[3.0, -1.0], [0.6, -0.2]])
    dets = head.decode(preds, grid, dt=torch.tensor([0.5, 0.1]))
    for d in dets:
        torch.testing.assert_close(d["boxes"][0, 7:9], torch.tensor([6.0, -2.0]))
    with pytest.raises(ValueError, match="velocity"):
        CenterHead(8, class_names=("car",), tasks=[{"classes": ["car"]}], velocity="knots")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run(experiment, compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.train import train

    result = train(compose_train(_overrides(experiment, synth_tiny, synth_tiny_store, tmp_path, "debug=fdr")))
    assert result["global_step"] == 1
    for key in ("train/loss", "train/det", "train/depth", "val/loss"):
        assert math.isfinite(result["metrics"][key]), (key, result["metrics"])


def test_a_short_run_evaluates_from_its_checkpoint_alone(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """Two steps of bevdepth4d, then the evaluator rebuilds model and data (previous keyframes too) from the
    checkpoint; velocities come out finite."""
    import json

    from trainer.evaluate import evaluate
    from trainer.train import train

    extra = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    result = train(compose_train(_overrides("bevdepth4d", synth_tiny, synth_tiny_store, tmp_path / "run", *extra)))
    summary = evaluate(result["last_ckpt"], split="val", out=tmp_path / "eval")
    assert 0.0 <= summary["nd_score"] <= 1.0
    results = json.loads(next((tmp_path / "eval").rglob("results*.json")).read_text())["results"]
    vels = [np.asarray(b["velocity"]) for boxes in results.values() for b in boxes]
    assert vels and all(np.isfinite(v).all() for v in vels)


def test_fast_dev_run_of_the_temporal_bank_on_dvd4d(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    """dvd4d_temporal: scene streams and previous keyframes together; the bank carries instances whose velocity the
    two-frame map lets the head learn."""
    from trainer.train import train

    extra = ("debug=fdr", "model.detector.bank.num_temp_instances=16")
    result = train(compose_train(_overrides("dvd4d_temporal", synth_tiny, synth_tiny_store, tmp_path, *extra)))
    assert result["global_step"] == 1 and math.isfinite(result["metrics"]["train/loss"])
