"""Do a store's labels put objects where they are, and only there? Leak, own class and coverage of an oracle store.

A label store made with ``features=synthetic_oracle`` (:class:`bevlabels.features.oracle.SyntheticOracle`)
knows what every camera pixel shows: each patch feature is a mix of fixed, orthonormal class
directions. So a BEV cell's pooled feature can be read back as a class, its **argmax** over those
directions, and checked against the keyframe's GT boxes:

- **leak**: of the occupied cells (``count > 0``) outside every GT box (each box's BEV footprint
  enlarged by ``margin`` metres, 0.4 by default, so a box's own edge cells are not counted), the share
  whose argmax is an object class. A cell behind a car that took the car's pixels leaks;
- **own class**: of the occupied cells whose centre lies inside a GT box's footprint, the share whose
  argmax is that box's class;
- **coverage**: occupied cells per keyframe (and their share of the grid), and per GT box with LiDAR
  points, how many boxes own at least one occupied cell (footprint enlarged by half a cell, so a
  pedestrian narrower than a cell owns the cell its centre falls in) and how many cells they own;
- **behind an object** (a diagnostic of the leak's cause): of the leaked cells, the share that has a
  GT box nearer to the ego origin on the same bearing (within ``ray_deg`` degrees of the box's
  angular extent). Leakage through an object shows here; blur at an object's edge does not.

Every figure is kept as counts per keyframe, so a store's overall share is a pooled ratio (every
cell weighs the same) and the per-keyframe shares are beside it. Nothing here reads a config file or
a command line: ``scripts/label_leak.py`` is the command.

Letters: C channels, H/W the BEV grid, K oracle classes, M boxes, L cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bevlabels import geometry as g
from bevlabels.grid import GridSpec

#: metres added on every side of a GT box before a cell counts as outside every box (the leak's region)
LEAK_MARGIN = 0.4
#: degrees beside a box's angular extent within which a cell farther away counts as behind it
RAY_DEG = 2.0


class NotAnOracleStoreError(ValueError):
    """The store's features are not the synthetic oracle's: its cells have no known class."""


@dataclass(frozen=True)
class OracleDirections:
    """The oracle's class names ``(K,)``, unit directions ``dirs (K, C)``, and which classes are objects."""

    classes: tuple[str, ...]
    dirs: np.ndarray
    n_stuff: int  # the first n_stuff classes are not objects (sky, ground, scenery)

    def argmax(self, feat: np.ndarray) -> np.ndarray:
        """The class index ``(...)`` of features ``(C, ...)``: the direction with the largest dot product."""
        C = feat.shape[0]
        assert self.dirs.shape[1] == C, f"feat has {C} channels, the oracle's directions {self.dirs.shape[1]}"
        scores = np.tensordot(self.dirs, feat.astype(np.float32), axes=([1], [0]))  # (K, ...)
        return scores.argmax(0)

    def index(self, name: str) -> int:
        return self.classes.index(name)


def oracle_directions(feature_model: dict, where: str = "the store") -> OracleDirections:
    """The class directions an oracle store was made with, rebuilt from its ``attrs["feature_model"]`` record."""
    from bevlabels.features.oracle import SyntheticOracle
    from bevlabels.synthetic.generate import ORACLE_STUFF

    if not feature_model or feature_model.get("name") != "synthetic_oracle":
        raise NotAnOracleStoreError(
            f"{where}: attrs.feature_model.name is {(feature_model or {}).get('name')!r}, not 'synthetic_oracle'. "
            "Leak and own class need cells whose class is known: make an oracle store with "
            '`make labels ARGS="features=synthetic_oracle out=<path>.zarr"`'
        )
    oracle = SyntheticOracle(
        noise=float(feature_model["noise"]),
        instance_scale=float(feature_model["instance_scale"]),
        seed=int(feature_model["seed"]),
        out_channels=int(feature_model["channels"]),
    )
    recorded = tuple(feature_model.get("classes") or ())
    if recorded and recorded != oracle.classes:
        raise NotAnOracleStoreError(
            f"{where}: attrs.feature_model.classes {recorded} differ from this bevlabels' oracle classes "
            f"{oracle.classes}; remake the store"
        )
    return OracleDirections(oracle.classes, oracle.class_dirs.numpy().astype(np.float32), len(ORACLE_STUFF))


def cell_box_index(grid: GridSpec, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(H, W)`` int: the index of the box whose BEV footprint (enlarged by ``margin`` m) holds the cell's
    centre, the lowest index where footprints overlap, -1 for none. Height is ignored."""
    centres = grid.cell_centres()  # (H, W, 2)
    H, W = centres.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) == 0:
        return np.full((H, W), -1, dtype=np.int64)
    flat = np.concatenate([centres.reshape(-1, 2), np.zeros((H * W, 1))], 1)  # (H*W, 3) at z = 0
    footprint = boxes[:, :7].copy()
    footprint[:, g.Z] = 0.0
    footprint[:, g.H] = np.inf  # unbounded in height
    return g.points_box_index(flat, footprint, margin=margin).reshape(H, W)


def behind_boxes(xy: np.ndarray, boxes: np.ndarray, ray_deg: float = RAY_DEG) -> np.ndarray:
    """``(L,)`` bool: a box of ``boxes (M, >=7)`` lies nearer to the origin on the bearing of ``xy (L, 2)``.

    A box covers the bearings between its footprint corners' (widened by ``ray_deg``); a point is behind it
    when its bearing is among them and it is farther from the origin than the box's nearest corner.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(xy), dtype=bool)
    if len(boxes) == 0 or len(xy) == 0:
        return out
    corners = g.box_corners(np.asarray(boxes, dtype=np.float64))[:, :4, :2]  # (M, 4, 2): the top face's xy
    centre_az = np.arctan2(boxes[:, g.Y], boxes[:, g.X])  # (M,)
    corner_az = np.arctan2(corners[..., 1], corners[..., 0])  # (M, 4)
    half = np.abs(g.wrap_angle(corner_az - centre_az[:, None])).max(1) + np.deg2rad(ray_deg)  # (M,)
    near = np.linalg.norm(corners, axis=-1).min(1)  # (M,)
    az = np.arctan2(xy[:, 1], xy[:, 0])  # (L,)
    rng = np.linalg.norm(xy, axis=1)
    on_ray = np.abs(g.wrap_angle(az[:, None] - centre_az[None])) <= half[None]  # (L, M)
    return (on_ray & (rng[:, None] > near[None])).any(1)


@dataclass
class KeyframeLeak:
    """One keyframe's counts (shares are ratios of these; see the module docstring)."""

    token: str
    cells: int  # cells of the grid
    occupied: int  # cells with pooled points
    outside: int  # occupied cells outside every box (enlarged by the margin)
    leaked: int  # ... whose argmax is an object class
    leaked_behind: int  # ... of which a GT box lies nearer on the same bearing
    inside: int  # occupied cells whose centre is inside a box's footprint
    own: int  # ... whose argmax is that box's class
    boxes: int  # GT boxes with LiDAR points
    boxes_covered: int  # ... owning at least one occupied cell
    box_cells: int  # occupied cells those boxes own (footprint + half a cell)

    @property
    def leak(self) -> float:
        return self.leaked / self.outside if self.outside else float("nan")

    @property
    def own_class(self) -> float:
        return self.own / self.inside if self.inside else float("nan")

    @property
    def coverage(self) -> float:
        return self.occupied / self.cells


def keyframe_leak(
    feat: np.ndarray,
    count: np.ndarray,
    boxes: np.ndarray,
    box_classes: Sequence[str | None],
    grid: GridSpec,
    oracle: OracleDirections,
    *,
    num_lidar_pts: np.ndarray | None = None,
    margin: float = LEAK_MARGIN,
    ray_deg: float = RAY_DEG,
    token: str = "",
) -> KeyframeLeak:
    """Leak, own class and coverage counts of one keyframe's ``feat (C, H, W)``, ``count (H, W)``.

    ``boxes (M, >=7)`` in the keyframe's ego frame, ``box_classes`` their oracle class names (a box
    whose class the oracle lacks, or ``None``, counts toward the regions but never as "own");
    ``num_lidar_pts (M,)`` selects the boxes of the per-box coverage (default: all).
    """
    H, W = grid.shape
    assert feat.shape[1:] == (H, W) and count.shape == (H, W), (
        f"feat {feat.shape} / count {count.shape} do not fit the grid {grid.shape}"
    )
    boxes = np.asarray(boxes, dtype=np.float64)
    assert boxes.ndim == 2 and (len(boxes) == 0 or boxes.shape[1] >= 7), f"boxes must be (M, >=7); got {boxes.shape}"
    assert len(box_classes) == len(boxes), f"{len(box_classes)} classes for {len(boxes)} boxes"
    occupied = count > 0
    cls = oracle.argmax(feat)  # (H, W)
    is_object = cls >= oracle.n_stuff
    outside = occupied & (cell_box_index(grid, boxes, margin) < 0)
    leaked = outside & is_object
    if leaked.any():
        xy = grid.cell_centres()[leaked]  # (L, 2)
        leaked_behind = int(behind_boxes(xy, boxes, ray_deg).sum())
    else:
        leaked_behind = 0
    box_of = cell_box_index(grid, boxes, 0.0)
    cls_of_box = np.array([oracle.classes.index(c) if c in oracle.classes else -1 for c in box_classes] + [-2])
    inside = occupied & (box_of >= 0)
    own = inside & (cls == cls_of_box[box_of])  # box_of = -1 reads the sentinel -2: never own
    with_pts = np.ones(len(boxes), bool) if num_lidar_pts is None else np.asarray(num_lidar_pts) > 0
    half_cell = 0.5 * max(grid.cell_size)
    owned = cell_box_index(grid, boxes[with_pts], half_cell)  # (H, W), indices into the boxes with points
    owned_occ = owned[occupied]
    covered = np.unique(owned_occ[owned_occ >= 0])
    return KeyframeLeak(
        token=token,
        cells=H * W,
        occupied=int(occupied.sum()),
        outside=int(outside.sum()),
        leaked=int(leaked.sum()),
        leaked_behind=leaked_behind,
        inside=int(inside.sum()),
        own=int(own.sum()),
        boxes=int(with_pts.sum()),
        boxes_covered=len(covered),
        box_cells=int((owned_occ >= 0).sum()),
    )


def pooled(rows: Sequence[KeyframeLeak]) -> dict:
    """A store's overall figures: pooled shares (every cell weighs the same) and per-keyframe medians and worst."""
    tot = {k: sum(getattr(r, k) for r in rows) for k in KeyframeLeak.__dataclass_fields__ if k != "token"}
    leaks = np.array([r.leak for r in rows], dtype=np.float64)
    owns = np.array([r.own_class for r in rows], dtype=np.float64)

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    def stat(f, v: np.ndarray) -> float:
        v = v[np.isfinite(v)]
        return float(f(v)) if len(v) else float("nan")

    return {
        "keyframes": len(rows),
        "leak": ratio(tot["leaked"], tot["outside"]),
        "leak_median_keyframe": stat(np.median, leaks),
        "leak_worst_keyframe": stat(np.max, leaks),
        "leak_behind_object": ratio(tot["leaked_behind"], tot["leaked"]),
        "own_class": ratio(tot["own"], tot["inside"]),
        "own_class_median_keyframe": stat(np.median, owns),
        "coverage": ratio(tot["occupied"], tot["cells"]),
        "occupied_per_keyframe": ratio(tot["occupied"], len(rows)),
        "boxes_with_points": tot["boxes"],
        "boxes_covered": ratio(tot["boxes_covered"], tot["boxes"]),
        "cells_per_box": ratio(tot["box_cells"], tot["boxes"]),
        **{f"total_{k}": v for k, v in tot.items()},
    }


@dataclass
class StoreLeak:
    """A store's per-keyframe counts and its overall figures (:func:`pooled`)."""

    store: str
    visibility: dict | None
    rows: list[KeyframeLeak]
    overall: dict

    def to_dict(self) -> dict:
        per = [{**asdict(r), "leak": r.leak, "own_class": r.own_class, "coverage": r.coverage} for r in self.rows]
        return {"store": self.store, "visibility": self.visibility, "overall": self.overall, "keyframes": per}


def measure_store(store, dataset=None, rows: Sequence[int] | None = None, margin: float = LEAK_MARGIN) -> StoreLeak:
    """Leak, own class and coverage of the done keyframes ``rows`` (default all) of an oracle label store.

    ``store``: a path or a :class:`~bevlabels.cache.LabelStoreReader`; ``dataset``: the adapter the boxes
    come from (default: the one the store's config names, ``attrs.config.dataset.adapter``).
    """
    from bevlabels.cache import LabelStoreReader

    reader = store if isinstance(store, LabelStoreReader) else LabelStoreReader(store)
    attrs = reader.attrs
    oracle = oracle_directions(attrs.get("feature_model") or {}, where=str(reader.path))
    if dataset is None:
        dataset = dataset_of(attrs, str(reader.path))
    grid = reader.grid
    done = reader.done_mask()
    rows = [int(s) for s in (range(len(reader)) if rows is None else rows) if done[int(s)]]
    tokens = reader.sample_tokens
    out = []
    for s in rows:
        frame = dataset.frame(str(tokens[s]))
        b = frame.boxes
        out.append(
            keyframe_leak(
                reader.dino_feat(s),
                reader.dino_count(s),
                b.boxes,
                b.detection_class,
                grid,
                oracle,
                num_lidar_pts=b.num_lidar_pts,
                margin=margin,
                token=frame.token,
            )
        )
    params = attrs.get("params") or {}
    return StoreLeak(str(reader.path), params.get("visibility"), out, pooled(out) if out else {})


def dataset_of(attrs: dict, where: str = "the store"):
    """The dataset adapter a store's ``attrs.config.dataset.adapter`` names (``_target_`` + kwargs)."""
    from bevlabels.datasets.factory import build_adapter

    adapter = ((attrs.get("config") or {}).get("dataset") or {}).get("adapter")
    if not adapter or "_target_" not in adapter:
        raise ValueError(f"{where}: attrs.config.dataset.adapter is missing; pass the dataset explicitly")
    root = adapter.get("root")
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"{where}: its dataset root {root} (attrs.config.dataset.adapter.root) does not exist")
    return build_adapter(adapter)
