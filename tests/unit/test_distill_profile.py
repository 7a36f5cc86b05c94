"""The distilled map's profiles along and across the viewing ray (trainer.analysis.distill_profile) on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevlabels.grid import GridSpec
from trainer.analysis.distill_profile import object_targets, offsets, profiles, summarise_profile

GRID = GridSpec((-40.0, 40.0, 0.5), (-40.0, 40.0, 0.5), name="profile")


def blob_map(centre: np.ndarray, radial_sigma: float, lateral_sigma: float) -> torch.Tensor:
    """``(2, H, W)``: channel 0 a constant background, channel 1 an anisotropic Gaussian at ``centre``, elongated
    along the ray from the origin through it."""
    xy = GRID.cell_centres()  # (H, W, 2)
    u = centre / np.linalg.norm(centre)
    v = np.array([-u[1], u[0]])
    d = xy - centre
    g = np.exp(-0.5 * ((d @ u) / radial_sigma) ** 2 - 0.5 * ((d @ v) / lateral_sigma) ** 2)
    return torch.from_numpy(np.stack([np.ones_like(g) * 0.2, g])).float()


def test_profiles_find_a_blob_shifted_along_the_ray_and_spread_along_it():
    box_centre = np.array([[12.0, 16.0]])  # 20 m from the ego, bearing 53 degrees
    u = box_centre[0] / 20.0
    feat = blob_map(box_centre[0] + 3.0 * u, radial_sigma=3.0, lateral_sigma=1.0)  # 3 m behind the box, smeared
    t = torch.tensor([[0.0, 1.0]])
    s = offsets(10.0, 0.25)
    radial, lateral = profiles(feat, t, box_centre, GRID, s)
    r, la = summarise_profile(radial[0], s), summarise_profile(lateral[0], s)
    assert r["peak m"] == pytest.approx(3.0, abs=0.5)  # the features sit 3 m further than the box
    assert la["peak m"] == pytest.approx(0.0, abs=0.5)
    assert r["width m"] > 2.0 * la["width m"]  # spread along the ray, not across it
    # the far ends read the background: cos([0.2, 0], [0, 1]) = 0
    assert radial[0, 0] == pytest.approx(0.0, abs=0.05) and lateral[0, -1] == pytest.approx(0.0, abs=0.05)


def test_profiles_of_a_mirrored_blob_peak_nearer_the_ego():
    box_centre = np.array([[-15.0, 0.0]])  # behind the ego: the ray points to -x
    feat = blob_map(np.array([-13.0, 0.0]), radial_sigma=1.0, lateral_sigma=1.0)  # 2 m nearer the ego
    s = offsets(6.0, 0.25)
    radial, _ = profiles(feat, torch.tensor([[0.0, 1.0]]), box_centre, GRID, s)
    assert summarise_profile(radial[0], s)["peak m"] == pytest.approx(-2.0, abs=0.3)


def test_invalid_and_outside_cells_read_nan():
    feat = blob_map(np.array([30.0, 0.0]), 1.0, 1.0)
    valid = torch.ones(GRID.shape, dtype=torch.bool)
    valid[:, GRID.cell_index(np.array([31.0, 0.0]))[0]] = False  # the column of x = 31 m
    s = offsets(14.0, 0.5)
    radial, lateral = profiles(feat, torch.tensor([[0.0, 1.0]]), np.array([[30.0, 0.0]]), GRID, s, valid=valid)
    assert np.isnan(radial[0, s > 10.0]).all()  # beyond the grid's 40 m edge
    assert np.isnan(radial[0, np.isclose(s, 1.0)]).all()  # the invalid column
    assert np.isfinite(lateral[0]).all()


def test_summarise_profile_of_a_triangle():
    s = offsets(5.0, 1.0)  # -5 .. 5
    p = np.clip(1.0 - np.abs(s - 1.0) / 2.0, 0, None) + 0.5  # peak 1.5 at +1, ends 0.5, half 1.0 at |s - 1| <= 1
    sm = summarise_profile(p, s)
    assert sm["peak m"] == 1.0 and sm["contrast"] == pytest.approx(1.0) and sm["width m"] == pytest.approx(3.0)
    assert np.isnan(summarise_profile(np.full(5, np.nan), s[:5])["contrast"])


def test_object_targets_average_the_unit_vectors_of_occupied_footprint_cells():
    H, W = GRID.shape
    target = torch.zeros(2, H, W)
    count = torch.zeros(H, W)
    ix, iy, _ = GRID.cell_index(np.array([[10.1, 5.1], [10.6, 5.1]]))
    target[:, iy[0], ix[0]] = torch.tensor([3.0, 0.0])  # unit (1, 0)
    target[:, iy[1], ix[1]] = torch.tensor([0.0, 0.5])  # unit (0, 1)
    count[iy, ix] = 1
    boxes = torch.tensor(
        [
            [10.5, 5.25, 0.0, 2.0, 1.0, 1.5, 0.0],  # covers both cells
            [-20.0, -20.0, 0.0, 2.0, 1.0, 1.5, 0.0],  # no occupied cell: skipped
        ]
    )
    t, keep = object_targets(target, count, boxes, GRID)
    assert keep.tolist() == [0]
    assert torch.allclose(t[0], torch.tensor([0.5, 0.5]))


# -- trainer.analysis.lifted_oracle: its pure parts ---------------------------------------------------------------


def test_cell_features_average_the_patch_features_over_each_cell_through_the_augmentation():
    from trainer.analysis.lifted_oracle import cell_features

    W, H, p = 56, 28, 14  # the original image, 4 x 2 patches of 14 px
    u = (torch.arange(W // p, dtype=torch.float32) + 0.5) * p  # patch centres
    patch = torch.stack([u[None, :].expand(H // p, -1), torch.ones(H // p, W // p)])  # (2, 2, 4): channel 0 = u
    # augmented image: the original scaled by 0.5 (28 x 14 px), feature cells of 7 px: 4 x 2 cells
    aug_from_img = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    f = cell_features(patch, (W, H), torch.linalg.inv(aug_from_img), (2, 4), stride=7, samples=4)
    assert f.shape == (2, 2, 4)
    # each cell covers 14 original px in u; a linear feature averages to its value at the cell's centre (u = 7, 21, ..)
    # except where the border clamps (the first and last half patch read the border patch's 7 and 49)
    centres = torch.tensor([7.0, 21.0, 35.0, 49.0])
    assert torch.allclose(f[0, 0, [0, 3]], torch.tensor([8.75, 47.25]))  # samples at 1.75 .. 12.25 px, < 7 read 7
    assert torch.allclose(f[0, 0, 1:3], centres[1:3], atol=1e-4)  # away from the border: exact
    assert torch.allclose(f[1], torch.ones(2, 4))


def test_lidar_depth_is_one_hot_in_the_return_bin_and_empty_without_one():
    from trainer.analysis.lifted_oracle import lidar_depth
    from trainer.models.components.lift_splat import DepthBins

    bins = DepthBins([2.0, 10.0, 1.0])  # 8 bins
    depth_map = torch.tensor([[[[0.0, 2.5, 9.99, 12.0]]]])  # (1, 1, 1, 4): none, bin 0, bin 7, beyond the bins
    one = lidar_depth(depth_map, bins)
    assert one.shape == (1, 1, 8, 1, 4)
    assert one[0, 0, :, 0, 0].sum() == 0 and one[0, 0, :, 0, 3].sum() == 0
    assert one[0, 0, 0, 0, 1] == 1 and one[0, 0, :, 0, 1].sum() == 1
    assert one[0, 0, 7, 0, 2] == 1 and one[0, 0, :, 0, 2].sum() == 1


def test_by_row_averages_the_seeds_of_a_row():
    from trainer.analysis.distill_profile import by_row

    def prof(v):
        band = {"objects": 3, **{k: [v, 2 * v] for k in ("model_r", "model_l", "target_r", "target_l")}}
        return {"offsets": [0.0, 0.4], "bands": {"all": band}}

    rows = by_row({"w7-s1": prof(1.0), "w7-s2": prof(3.0), "w0-s1": prof(5.0)})
    assert set(rows) == {"w7 (2 seeds)", "w0 (1 seed)"}
    assert rows["w7 (2 seeds)"]["bands"]["all"]["model_r"] == [2.0, 4.0]
