"""The BEV grid: metric <-> cell mapping, its axis convention, and its single source in conf/grid (bevlabels.conf)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevlabels.conf import grid_names, load_grid
from bevlabels.grid import GridSpec


def test_default_grid_from_conf():
    grid = load_grid("default")
    assert grid.name == "default"
    assert grid.shape == (128, 128)  # 102.4 m / 0.8 m
    assert grid.cell_size == (0.8, 0.8)
    assert GridSpec.from_dict(grid.to_dict()) == grid


def test_every_conf_grid_loads():
    names = grid_names()
    assert "default" in names
    for name in names:
        grid = load_grid(name)
        assert grid.nx > 0 and grid.ny > 0


def test_axis_convention_rows_are_y_columns_are_x():
    grid = GridSpec((-4.0, 4.0, 1.0), (-2.0, 2.0, 0.5))
    assert grid.shape == (8, 8)
    # A point 3.5 m ahead (x) and 1.9 m to the left (y): column 7, row 7.
    ix, iy, inside = grid.cell_index(np.array([[3.5, 1.9], [-4.0, -2.0], [4.0, 0.0]]))
    assert ix.tolist()[:2] == [7, 0] and iy.tolist()[:2] == [7, 0]
    assert inside.tolist() == [True, True, False]  # the max bound is excluded
    centres = grid.cell_centres()
    assert centres.shape == (8, 8, 2)
    np.testing.assert_allclose(centres[0, 0], [-3.5, -1.75])
    np.testing.assert_allclose(centres[7, 0], [-3.5, 1.75])  # row index moves along y
    flat, _ = grid.flat_index(np.array([[3.5, 1.9]]))
    assert flat.tolist() == [7 * 8 + 7]


def test_metric_cell_roundtrip_numpy_and_torch():
    grid = load_grid("default")
    xy = np.random.default_rng(0).uniform(-51, 51, size=(100, 2))
    np.testing.assert_allclose(grid.cell_to_metric(grid.metric_to_cell(xy)), xy, atol=1e-9)
    xy_t = torch.as_tensor(xy)
    np.testing.assert_allclose(grid.metric_to_cell(xy_t).numpy(), grid.metric_to_cell(xy), atol=1e-9)
    ix_t, iy_t, inside_t = grid.cell_index(xy_t)
    ix, iy, inside = grid.cell_index(xy)
    assert ix_t.tolist() == ix.tolist() and iy_t.tolist() == iy.tolist() and inside_t.all()
    # Cell centres map back into their own cell.
    c = grid.cell_centres().reshape(-1, 2)
    flat, inside = grid.flat_index(c)
    assert inside.all() and flat.tolist() == list(range(grid.nx * grid.ny))


def test_bad_grids_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="xbound"):
        GridSpec((1.0, -1.0, 0.5), (-1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="ybound.*whole number"):
        GridSpec((-1.0, 1.0, 0.5), (-1.0, 1.0, 0.3))
    with pytest.raises(KeyError, match="ybound"):
        GridSpec.from_dict({"xbound": [-1, 1, 0.5]})
    with pytest.raises(FileNotFoundError, match="known grids"):
        load_grid("no_such_grid")
    # the library does not read conf/: a bare name is bevlabels.conf's to resolve
    with pytest.raises(FileNotFoundError, match="bevlabels.conf.load_grid"):
        GridSpec.from_yaml("default")


def test_same_geometry_ignores_name():
    a = load_grid("default")
    b = GridSpec(a.xbound, a.ybound, a.zbound, name="other")
    assert a.same_geometry(b) and a != b
    assert not a.same_geometry(load_grid("near"))
