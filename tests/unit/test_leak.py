"""bevlabels.leak on grids whose answer is counted by hand: leak, own class, coverage, behind-a-box, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bevlabels.grid import GridSpec
from bevlabels.leak import (
    NotAnOracleStoreError,
    OracleDirections,
    behind_boxes,
    cell_box_index,
    keyframe_leak,
    oracle_directions,
    pooled,
)

CLASSES = ("sky", "ground", "scenery", "car", "pedestrian")
ORACLE = OracleDirections(CLASSES, np.eye(5, dtype=np.float32), n_stuff=3)
GRID = GridSpec((0.0, 20.0, 1.0), (-10.0, 10.0, 1.0), (-2.0, 4.0, 6.0))  # 20 x 20 cells of 1 m
CAR = np.array([[5.0, 0.0, 0.8, 4.0, 2.0, 1.6, 0.0]])  # x 3-7, y -1-1: cells x 3..6, y -1..0 (8 cells)


def cell(x: float, y: float) -> tuple[int, int]:
    """(row, column) of the cell holding metric point (x, y)."""
    return int(y - GRID.ybound[0]), int(x - GRID.xbound[0])


def grid_with(cells: dict[tuple[float, float], str]) -> tuple[np.ndarray, np.ndarray]:
    feat = np.zeros((5, 20, 20), np.float32)
    count = np.zeros((20, 20), np.int64)
    for (x, y), name in cells.items():
        r, c = cell(x, y)
        feat[CLASSES.index(name), r, c] = 1.0
        count[r, c] = 3
    return feat, count


def test_counts_by_hand():
    cells = {}
    for x in (3.5, 4.5, 5.5, 6.5):  # the car's 8 cells: 6 car, 2 ground
        for y in (-0.5, 0.5):
            cells[(x, y)] = "car"
    cells[(3.5, -0.5)] = cells[(6.5, 0.5)] = "ground"
    for y in (-0.5, 0.5):  # behind the car, on its bearing: 3 cells of car class (the leak), 1 ground
        cells[(12.5, y)] = "car"
    cells[(15.5, 0.5)] = "car"
    cells[(15.5, -0.5)] = "ground"
    cells[(2.5, 6.5)] = "pedestrian"  # off to the side, no box: a leak, but not behind the car
    for x in (1.5, 9.5, 17.5):
        cells[(x, -7.5)] = "ground"
    cells[(7.2, 0.5)] = "car"  # within 0.4 m of the box (cell centre 7.5 is 0.5 m out): outside, leaks
    feat, count = grid_with(cells)
    k = keyframe_leak(feat, count, CAR, ["car"], GRID, ORACLE, num_lidar_pts=np.array([10]))
    assert k.occupied == len(cells) == 17
    assert k.inside == 8 and k.own == 6 and k.own_class == 6 / 8
    assert k.outside == 9  # 4 behind, 1 pedestrian, 3 ground, the cell centred 0.5 m past the box's end (> 0.4)
    assert k.leaked == 5 and k.leak == 5 / 9  # 3 car cells behind, the pedestrian, the car cell past the end
    assert k.leaked_behind == 4  # on the car's bearing and farther than it: the 3 behind and the one past its end
    # Per-box coverage: the footprint grown by half a cell holds the 8 cells and the one past the end (boundary in).
    assert (k.boxes, k.boxes_covered) == (1, 1) and k.box_cells == 9
    assert k.coverage == k.occupied / 400


def test_the_leak_margin_keeps_a_box_s_edge_cells_out():
    feat, count = grid_with({(7.5, 0.5): "car", (8.5, 0.5): "car"})  # 0.5 m and 1.5 m past the car's end
    assert keyframe_leak(feat, count, CAR, ["car"], GRID, ORACLE, margin=0.6).leaked == 1
    assert keyframe_leak(feat, count, CAR, ["car"], GRID, ORACLE, margin=0.4).leaked == 2


def test_a_box_of_an_unknown_class_is_never_own_and_empty_keyframes_give_nan():
    feat, count = grid_with({(5.5, 0.5): "car"})
    k = keyframe_leak(feat, count, CAR, ["tram"], GRID, ORACLE)
    assert k.inside == 1 and k.own == 0
    empty = keyframe_leak(np.zeros((5, 20, 20), np.float32), np.zeros((20, 20)), CAR[:0], [], GRID, ORACLE)
    assert empty.occupied == 0 and math.isnan(empty.leak) and math.isnan(empty.own_class)


def test_pooled_weighs_every_cell_alike():
    feat_a, count_a = grid_with({(12.5, 0.5): "car", (1.5, -7.5): "ground"})  # 1 of 2 leaks
    feat_b, count_b = grid_with({(x + 0.5, -7.5): "ground" for x in range(8)})  # 0 of 8
    a = keyframe_leak(feat_a, count_a, CAR, ["car"], GRID, ORACLE)
    b = keyframe_leak(feat_b, count_b, CAR, ["car"], GRID, ORACLE)
    o = pooled([a, b])
    assert o["leak"] == 1 / 10 and o["leak_median_keyframe"] == 0.25 and o["leak_worst_keyframe"] == 0.5
    assert o["keyframes"] == 2 and o["coverage"] == 10 / 800


def test_behind_boxes_follows_the_bearing_and_the_range():
    xy = np.array([[12.0, 0.0], [4.0, 0.0], [12.0, 6.0], [-12.0, 0.0]])
    assert behind_boxes(xy, CAR).tolist() == [True, False, False, False]
    assert behind_boxes(xy, CAR[:0]).tolist() == [False] * 4


def test_cell_box_index_ignores_height_and_grows_by_the_margin():
    idx = cell_box_index(GRID, CAR)
    assert (idx >= 0).sum() == 8
    assert (cell_box_index(GRID, CAR, margin=0.6) >= 0).sum() == 6 * 4  # x 2.4-7.6, y -1.6-1.6: 6 x 4 centres


def test_oracle_directions_come_from_the_store_record_or_a_clear_error():
    from bevlabels.features.oracle import SyntheticOracle

    o = SyntheticOracle(noise=0.1, instance_scale=0.2, seed=3, out_channels=32)
    record = {"name": "synthetic_oracle", "noise": 0.1, "instance_scale": 0.2, "seed": 3, "channels": 32}
    d = oracle_directions(record)
    np.testing.assert_allclose(d.dirs, o.class_dirs.numpy())
    assert d.classes[d.n_stuff] == "car"
    with pytest.raises(NotAnOracleStoreError, match="feature_model.name.*dinov2.*features=synthetic_oracle"):
        oracle_directions({"name": "dinov2"}, where="x.zarr")
