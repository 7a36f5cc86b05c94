"""trainer.analysis.motion_oracle: the two-frame oracle maps show motion as the camera maps should, and the test runs.

The previous keyframe's painted map, warped by the dataset's ``cur_from_prev``, carries a static box's paint on the
box's current cells and a moving box's elsewhere; the control (``--no-motion``) has two identical halves; a few
steps train and report the moving cars' speeds.
"""

from __future__ import annotations

import numpy as np
import torch


def test_the_warped_previous_map_shows_motion_and_only_motion(synth_tiny, synth_tiny_store):
    from trainer.analysis.motion_oracle import Painter, build

    _, detector, train, _ = build(str(synth_tiny), str(synth_tiny_store), [], grid="near")
    C = detector.camera_bev.bev_encoder.in_channels // 2
    motion, still = Painter(train, C, True, 0.0, 0), Painter(train, C, False, 0.0, 0)
    grid = train.grid
    cos = torch.nn.functional.cosine_similarity
    static, moving = [], []
    idx = [i for i, f in enumerate(train.frames) if f.token in train._prev]
    assert idx, "the tiny world's training scene has keyframes with a previous one"
    for i in idx:
        maps, boxes, _, dt = motion.sample(i, train=True, generator=torch.Generator().manual_seed(i))
        still_maps, *_ = still.sample(i, train=True, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(still_maps[:C], still_maps[C:])  # the control: no motion at all
        torch.testing.assert_close(maps[:C], still_maps[:C])  # the same draw: the current halves agree
        cur, old = maps[:C], maps[C:]
        for b in boxes:
            # vehicles only: a 0.4 m cone covers at most one 0.8 m cell, which bilinear resampling smears
            if b[3] < 3.5 or b[4] < 1.5 or not torch.isfinite(b[7:9]).all():
                continue
            ix, iy = torch.floor(grid.metric_to_cell(b[None, :2]))[0].long().tolist()
            was = torch.floor(grid.metric_to_cell((b[:2] - b[7:9] * dt)[None]))[0].long().tolist()
            if not all(0 <= v < n for v, n in zip((ix, was[0]), (grid.shape[1],) * 2)) or not all(
                0 <= v < n for v, n in zip((iy, was[1]), (grid.shape[0],) * 2)
            ):
                continue
            if old[:, iy, ix].norm() == 0 and old[:, was[1], was[0]].norm() == 0:
                continue  # not in the previous keyframe's GT (no LiDAR point on it there): nothing painted
            here = float(cos(old[:, iy, ix], cur[:, iy, ix], 0))
            there = float(cos(old[:, was[1], was[0]], cur[:, iy, ix], 0))
            shift = float((b[7:9] * dt).norm()) / max(grid.cell_size)
            if float(b[7:9].norm()) < 0.05:
                static.append(here)
            elif shift > 3:  # moved more than 3 cells: its paint is where it was, v dt behind
                moving.append((here, there))
    assert len(static) >= 3 and len(moving) >= 3, (len(static), len(moving))
    assert np.mean(np.array(static) > 0.8) >= 0.9, static  # a static vehicle's paint lines up after the warp
    here, there = np.array(moving).T
    assert np.mean(there > 0.8) >= 0.8 and np.mean(there > here) >= 0.8, moving  # a moving one's lies v dt behind


def test_a_few_steps_train_and_report(synth_tiny, synth_tiny_store, tmp_path):
    from trainer.analysis.motion_oracle import main

    out = tmp_path / "r.json"
    got = main(
        ["--root", str(synth_tiny), "--store", str(synth_tiny_store), "--grid", "near", "--steps", "2", "--every", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert got["cars"] > 0 and got["steps"] == 2 and got["motion"] is True
    assert np.isfinite(got["static_velocity_error_median"])
    assert out.is_file()


def test_block_matching_finds_where_painted_vehicles_were(synth_tiny, synth_tiny_store):
    """trainer.analysis.motion_in_maps' matching on maps that show motion perfectly (the oracle's): a static vehicle's
    best offset is 0 and a moving one's is -v dt, to 1.5 cells; the camera maps are then measured by the same code."""
    from trainer.analysis.motion_in_maps import MIN_LENGTH, MOVING, best_offsets, summarise
    from trainer.analysis.motion_oracle import Painter, build

    _, detector, train, _ = build(str(synth_tiny), str(synth_tiny_store), [], grid="near")
    C = detector.camera_bev.bev_encoder.in_channels // 2
    painter = Painter(train, C, True, 0.0, 0)
    grid = train.grid
    H, W = grid.shape
    radius, half = 8, 2
    rows = {"static": [], "moving": []}
    for i in [i for i, f in enumerate(train.frames) if f.token in train._prev]:
        maps, boxes, _, dt = painter.sample(i, train=False)
        for b in boxes:
            if b[3] < MIN_LENGTH or not torch.isfinite(b[7:9]).all():
                continue
            c = grid.metric_to_cell(b[None, :2])[0]
            cell = torch.floor(c).long()
            if not (radius + half <= cell[0] < W - radius - half and radius + half <= cell[1] < H - radius - half):
                continue
            if maps[C:, cell[1], cell[0]].norm() == 0 and float(b[7:9].norm()) < MOVING:
                continue  # not in the previous keyframe's GT
            found = best_offsets(maps[:C], maps[C:], cell[None], radius, half)[0].numpy()
            was = (grid.metric_to_cell((b[:2] - b[7:9] * dt)[None])[0] - c).numpy()
            if np.hypot(*was) > radius - 1:
                continue  # beyond the search
            rows["moving" if float(b[7:9].norm()) > MOVING else "static"].append((found, was, np.zeros(2)))
    got = {k: summarise(*(np.array([x[j] for x in r]).reshape(-1, 2) for j in range(3))) for k, r in rows.items()}
    assert got["static"]["n"] >= 3 and got["moving"]["n"] >= 3, got
    assert got["static"]["at_where_it_was"] >= 0.9, got
    assert got["moving"]["at_where_it_was"] >= 0.8, got
