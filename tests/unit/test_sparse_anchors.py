"""Initial anchors of the sparse head: k-means over box centres, and their fingerprinted cache."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bevlabels.datasets.base import Boxes
from bevlabels.grid import GridSpec
from trainer.models.components.sparse.anchors import (
    ANCHOR_DIM,
    COS,
    LOG_H,
    LOG_L,
    LOG_W,
    SIN,
    VX,
    VZ,
    X,
    Z,
    anchors_for_dataset,
    anchors_to_boxes,
    boxes_to_anchors,
    kmeans_anchors,
)

GRID = GridSpec((-32.0, 32.0, 1.0), (-32.0, 32.0, 1.0))
CLUSTERS = np.array([[10.0, 0.0, 1.0], [-20.0, 5.0, 0.5], [0.0, -25.0, 1.5]])


def three_clusters(seed: int = 0, per: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.normal(0.0, 0.05, (per, 3)) for c in CLUSTERS])  # (3 per, 3)


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_kmeans_finds_three_tight_clusters():
    pts = three_clusters()
    anchors = kmeans_anchors(pts, num_anchors=3, seed=0)
    assert anchors.shape == (3, ANCHOR_DIM) and anchors.dtype == np.float32
    means = np.stack([pts[i * 40 : (i + 1) * 40].mean(0) for i in range(3)])
    np.testing.assert_allclose(sort_rows(anchors[:, X : Z + 1]), sort_rows(means), rtol=0, atol=1e-5)
    # Sparse4D's other columns: log of the given size (1 m by default), yaw 0, no velocity.
    assert (anchors[:, LOG_L : LOG_H + 1] == 0).all() and (anchors[:, SIN] == 0).all() and (anchors[:, COS] == 1).all()
    assert (anchors[:, VX : VZ + 1] == 0).all()
    sized = kmeans_anchors(pts, 3, seed=0, size=(4.5, 1.9, 1.6))
    np.testing.assert_allclose(sized[:, [LOG_L, LOG_W, LOG_H]], np.log([[4.5, 1.9, 1.6]] * 3), rtol=1e-6)
    boxes = anchors_to_boxes(torch.from_numpy(sized))
    np.testing.assert_allclose(boxes[:, 3:7].numpy(), [[4.5, 1.9, 1.6, 0.0]] * 3, rtol=1e-6, atol=1e-7)


def test_kmeans_is_reproducible_per_seed():
    pts = np.random.default_rng(1).uniform(-30, 30, (600, 3))
    a = kmeans_anchors(pts, 25, seed=7, iters=20)
    np.testing.assert_array_equal(a, kmeans_anchors(pts, 25, seed=7, iters=20))
    assert not np.array_equal(a, kmeans_anchors(pts, 25, seed=8, iters=20))
    assert len(np.unique(a[:, :3], axis=0)) == 25  # no two anchors on one spot


def test_fewer_distinct_centres_than_anchors_fills_inside_the_grid():
    distinct = np.array([[1.0, 2.0, 0.5], [3.0, -4.0, 1.0], [-5.0, 6.0, 1.5], [7.0, 8.0, 0.8]])
    pts = np.repeat(distinct, 5, axis=0)  # 20 centres, 4 distinct
    a = kmeans_anchors(pts, 10, seed=0, grid=GRID)
    np.testing.assert_array_equal(sort_rows(a[:4, :3]), sort_rows(distinct.astype(np.float32)))
    fill = a[4:, :3]
    assert ((fill[:, :2] >= -32) & (fill[:, :2] < 32)).all() and ((fill[:, 2] >= 0.5) & (fill[:, 2] <= 1.5)).all()
    assert len(np.unique(fill, axis=0)) == 6
    np.testing.assert_array_equal(a, kmeans_anchors(pts, 10, seed=0, grid=GRID))
    with pytest.raises(ValueError, match="pass grid="):
        kmeans_anchors(pts, 10, seed=0)
    empty = kmeans_anchors(np.zeros((0, 3)), 5, seed=0, grid=GRID)
    assert empty.shape == (5, ANCHOR_DIM) and (empty[:, Z] == 0).all()


# ---------------------------------------------------------------------------------------------
# anchors_for_dataset and its cache


class FakeAdapter:
    """The two attributes and the one method ``anchors_for_dataset`` reads, counting keyframe reads."""

    name = "fake"
    version = "v0"

    def __init__(self, root: Path, scenes: dict[str, list[Boxes]]):
        self.root = root
        self._scenes = scenes
        self.reads = 0

    def keyframes(self, scene: str) -> list:
        self.reads += 1
        return [SimpleNamespace(boxes=b) for b in self._scenes[scene]]


def boxes(rows: list[tuple], classes: list, pts: list[int]) -> Boxes:
    arr = np.array([[*r, 0.0, np.nan, np.nan] for r in rows], dtype=np.float64)  # x y z l w h, yaw 0, vx vy
    n = len(rows)
    return Boxes(arr, tuple(c or "x" for c in classes), tuple(classes), tuple(map(str, range(n))), np.array(pts))


@pytest.fixture
def adapter(tmp_path) -> FakeAdapter:
    rng = np.random.default_rng(0)
    kept = [
        tuple(c + rng.normal(0, 0.05, 3)) + (4.0 + i % 2, 2.0, 1.5) for i, c in enumerate(np.repeat(CLUSTERS, 6, 0))
    ]
    noise = [(5.0, 5.0, 0.0, 1, 1, 1), (20.0, 20.0, 0.0, 1, 1, 1), (100.0, 0.0, 0.0, 1, 1, 1)]
    frame_a = boxes(kept[:9] + noise, ["car"] * 9 + ["barrier", "car", "car"], [5] * 9 + [5, 0, 5])
    frame_b = boxes(kept[9:] + noise[:1], ["pedestrian"] * 9 + [None], [3] * 9 + [9])
    return FakeAdapter(tmp_path / "data", {"s1": [frame_a], "s2": [frame_b], "s3": [frame_b]})


def test_anchors_for_dataset_filters_like_the_trainer_and_uses_the_mean_size(adapter, tmp_path):
    # Dropped: the barrier (class not asked for), a car without LiDAR points, a car outside the grid,
    # and a box the benchmark ignores (class None). Any of them would pull a cluster off.
    a = anchors_for_dataset(adapter, ["s1", "s2"], GRID, ["car", "pedestrian"], num_anchors=3, seed=0, cache_dir=None)
    np.testing.assert_allclose(sort_rows(a[:, :3]), sort_rows(CLUSTERS), rtol=0, atol=0.1)
    np.testing.assert_allclose(np.exp(a[0, [LOG_L, LOG_W, LOG_H]]), [4.5, 2.0, 1.5], rtol=1e-6)


def test_anchor_cache_is_reused_and_recomputed_when_its_inputs_change(adapter, tmp_path):
    cache = tmp_path / "store_dir"
    args = dict(class_names=["car", "pedestrian"], num_anchors=3, seed=0, cache_dir=cache)
    first = anchors_for_dataset(adapter, ["s1", "s2"], GRID, **args)
    assert adapter.reads == 2
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")  # no temporary left
    meta = json.loads((cache / files[0]).read_text())
    assert meta["inputs"]["scenes"] == ["s1", "s2"] and meta["inputs"]["dataset"]["name"] == "fake"

    again = anchors_for_dataset(adapter, ["s1", "s2"], GRID, **args)
    assert adapter.reads == 2, "the cached anchors were not reused"
    np.testing.assert_array_equal(again, first)

    # The same bounds under another name are the same grid: reused.
    anchors_for_dataset(adapter, ["s1", "s2"], GridSpec(GRID.xbound, GRID.ybound, name="other"), **args)
    assert adapter.reads == 2

    # Another grid (it drops the cluster at y = -25) or other scenes: recomputed, beside the first.
    small = GridSpec((-24.0, 24.0, 1.0), (-24.0, 24.0, 1.0))
    anchors_for_dataset(adapter, ["s1", "s2"], small, **args)
    assert adapter.reads == 4
    anchors_for_dataset(adapter, ["s1", "s3"], GRID, **args)
    assert adapter.reads == 6
    anchors_for_dataset(adapter, ["s1", "s2"], GRID, **{**args, "seed": 1})
    assert adapter.reads == 8
    assert len(list(cache.glob("*.npy"))) == 4

    # A sidecar whose fingerprint no longer matches, or a tampered array: recomputed and rewritten.
    meta["fingerprint"] = "0" * 64
    (cache / files[0]).write_text(json.dumps(meta))
    np.testing.assert_array_equal(anchors_for_dataset(adapter, ["s1", "s2"], GRID, **args), first)
    assert adapter.reads == 10
    np.save(cache / files[1], np.zeros_like(first))
    np.testing.assert_array_equal(anchors_for_dataset(adapter, ["s1", "s2"], GRID, **args), first)
    assert adapter.reads == 12
    anchors_for_dataset(adapter, ["s1", "s2"], GRID, **args)
    assert adapter.reads == 12


def test_boxes_round_trip_through_anchors():
    b = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, -1.0]])
    torch.testing.assert_close(anchors_to_boxes(boxes_to_anchors(b)), b)
