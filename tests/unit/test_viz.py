"""PCA colours of BEV feature grids (:mod:`bevlabels.viz`): fitted on one grid or on many at once."""

from __future__ import annotations

import numpy as np

from bevlabels.viz import PcaColours, pca_rgb


def _grid(rng, C=16, H=12, W=10, empty=0.3) -> np.ndarray:
    feat = rng.normal(size=(C, H, W)).astype(np.float16)
    feat[:, rng.random((H, W)) < empty] = 0
    return feat


def test_pca_rgb_is_pca_colours_fitted_on_the_grid_itself():
    rng = np.random.default_rng(0)
    feat = _grid(rng)
    occupied = np.abs(feat).sum(0) > 0
    colours = PcaColours.fit(feat.reshape(16, -1).T[occupied.reshape(-1)])
    np.testing.assert_array_equal(pca_rgb(feat), colours.rgb(feat))
    rgb = pca_rgb(feat)
    assert rgb.shape == (12, 10, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert not rgb[~occupied].any()  # empty cells are black


def test_colours_fitted_on_a_scene_give_one_feature_one_colour_in_every_grid():
    """The same feature vector placed in two grids gets the same colour from a joint fit (each grid's own fit would
    stretch its components differently)."""
    rng = np.random.default_rng(1)
    a, b = _grid(rng), _grid(rng)
    a[:, 0, 0] = b[:, 5, 5] = rng.normal(size=16).astype(np.float16)
    cells = np.concatenate([f.reshape(16, -1).T for f in (a, b)])
    colours = PcaColours.fit(cells[np.abs(cells).sum(1) > 0])
    np.testing.assert_array_equal(colours.rgb(a)[0, 0], colours.rgb(b)[5, 5])
    assert not np.array_equal(pca_rgb(a)[0, 0], pca_rgb(b)[5, 5])


def test_too_few_occupied_cells_give_no_colours():
    feat = np.zeros((8, 4, 4))
    feat[:, 0, 0] = 1.0  # one cell: no direction to speak of
    assert PcaColours.fit(feat.reshape(8, -1).T[:1]) is None
    assert not pca_rgb(feat).any()
