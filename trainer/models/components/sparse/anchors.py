"""The anchor state of the sparse head: one row per query, columns named once here.

``X, Y, Z, LOG_L, LOG_W, LOG_H, SIN, COS, VX, VY, VZ`` (:data:`ANCHOR_DIM` = 11), in the (BEV-augmented)
ego frame of the batch: the box centre (metres), the log of its size (metres), the yaw as
``(sin, cos)`` (counter-clockwise from +x, as ``bevlabels.geometry``), the velocity (m/s). The
yaw is stored as sine and cosine in *that* order: Sparse4D's released code writes ``[cos, sin]``
into these slots when it rotates anchors (its issue #61); here every write goes through the named
columns.

:func:`boxes_to_anchors` and :func:`anchors_to_boxes` convert from and to the project's box layout
(``bevlabels.geometry``: ``X, Y, Z, L, W, H, YAW, VX, VY``, no vertical velocity).

Initial anchors (:func:`kmeans_anchors`, :func:`anchors_for_dataset`) are k-means centres of the
training split's GT box centres, as Sparse4D's ``tools/anchor_generator.py`` makes them, cached beside
the label store under a fingerprint of everything they depend on.

Shape letters: Q queries, M boxes, K anchors (clusters).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from bevlabels import geometry as G
from bevlabels.grid import GridSpec, as_grid

X, Y, Z, LOG_L, LOG_W, LOG_H, SIN, COS, VX, VY, VZ = range(11)
ANCHOR_DIM = 11
ANCHOR_COLUMNS = ("x", "y", "z", "log_l", "log_w", "log_h", "sin", "cos", "vx", "vy", "vz")
#: the columns of a query's quality ``(..., 2)`` beside its anchor: centerness, yawness logits (Sparse4Dv3's CNS, YNS)
CNS, YNS = 0, 1


def boxes_to_anchors(boxes: torch.Tensor) -> torch.Tensor:
    """Anchors ``(..., 11)`` of boxes ``(..., 9)`` (sizes clamped to 1 cm before the log; ``VZ`` = 0).

    float32 at least: bf16 / fp16 boxes are cast up (a box is never rounded to bf16, and under CUDA autocast
    ``log`` would return float32 into a bf16 buffer).
    """
    assert boxes.shape[-1] == G.BOX_DIM, f"boxes must be (..., {G.BOX_DIM}); got {tuple(boxes.shape)}"
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    out = boxes.new_zeros(*boxes.shape[:-1], ANCHOR_DIM)
    out[..., [X, Y, Z]] = boxes[..., [G.X, G.Y, G.Z]]
    out[..., [LOG_L, LOG_W, LOG_H]] = boxes[..., [G.L, G.W, G.H]].clamp(min=0.01).log()
    out[..., SIN] = torch.sin(boxes[..., G.YAW])
    out[..., COS] = torch.cos(boxes[..., G.YAW])
    out[..., [VX, VY]] = boxes[..., [G.VX, G.VY]]
    return out


def anchors_to_boxes(anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``(..., 9)`` of anchors ``(..., 11)`` (``VZ`` dropped; yaw = atan2(sin, cos)), float32 at least."""
    assert anchors.shape[-1] == ANCHOR_DIM, f"anchors must be (..., {ANCHOR_DIM}); got {tuple(anchors.shape)}"
    anchors = anchors.to(torch.promote_types(anchors.dtype, torch.float32))
    out = anchors.new_zeros(*anchors.shape[:-1], G.BOX_DIM)
    out[..., [G.X, G.Y, G.Z]] = anchors[..., [X, Y, Z]]
    out[..., [G.L, G.W, G.H]] = anchors[..., [LOG_L, LOG_W, LOG_H]].exp()
    out[..., G.YAW] = torch.atan2(anchors[..., SIN], anchors[..., COS])
    out[..., [G.VX, G.VY]] = anchors[..., [VX, VY]]
    return out


# ---------------------------------------------------------------------------------------------
# Initial anchors: k-means over the training boxes' centres, cached beside the label store

#: bump when the k-means or the anchor layout changes: it is part of the cache fingerprint
ANCHOR_CACHE_VERSION = 1


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int, tol: float) -> np.ndarray:
    """Lloyd's k-means ``(K, 3)`` of points ``(M, 3)`` (at least K distinct), seeded k-means++ initialisation.

    Nearest centres come from a k-d tree over the K centres (scipy's ``cKDTree``); an emptied cluster
    is re-seeded at the point farthest from its own centre (scikit-learn's rule). Stops after ``iters``
    iterations or when no centre moves more than ``tol`` metres.
    """
    from scipy.spatial import cKDTree

    m = len(points)
    norms = (points**2).sum(1)  # (M,)
    centres = np.empty((k, 3), dtype=np.float64)
    centres[0] = points[rng.integers(m)]
    d2 = np.maximum(norms - 2.0 * points @ centres[0] + (centres[0] ** 2).sum(), 0.0)  # (M,)
    for j in range(1, k):
        cum = np.cumsum(d2)  # (M,)
        assert cum[-1] > 0, "k-means++ ran out of distinct points (the caller checks there are at least K)"
        centres[j] = points[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), m - 1)]
        d2 = np.minimum(d2, np.maximum(norms - 2.0 * points @ centres[j] + (centres[j] ** 2).sum(), 0.0))
    for _ in range(iters):
        dist, labels = cKDTree(centres).query(points, k=1)  # (M,) each
        counts = np.bincount(labels, minlength=k)  # (K,)
        sums = np.stack([np.bincount(labels, weights=points[:, a], minlength=k) for a in range(3)], 1)  # (K, 3)
        new = centres.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if len(empty):
            new[empty] = points[np.argsort(-dist, kind="stable")[: len(empty)]]
        shift = np.sqrt(((new - centres) ** 2).sum(1)).max()
        centres = new
        if shift <= tol and not len(empty):
            break
    return centres


def kmeans_anchors(
    centres: np.ndarray,
    num_anchors: int = 900,
    seed: int = 0,
    iters: int = 100,
    *,
    size: Sequence[float] | None = None,
    grid: GridSpec | Mapping | None = None,
    tol: float = 1e-4,
) -> np.ndarray:
    """Initial anchors ``(num_anchors, 11)`` float32: k-means cluster centres of box centres ``(M, 3)``.

    As Sparse4D's ``tools/anchor_generator.py``: ``X, Y, Z`` the cluster centres; every anchor gets
    the same size, ``log(size)`` with ``size = (L, W, H)`` metres (Sparse4D uses the mean GT size,
    which :func:`anchors_for_dataset` passes; ``None`` means 1 m, log 0); yaw 0 (``SIN`` 0, ``COS`` 1);
    velocity 0. The k-means is Lloyd's, from a k-means++ start drawn with ``np.random.default_rng(seed)``,
    at most ``iters`` iterations (stops earlier when no centre moves more than ``tol`` m).

    With no more distinct centres than anchors, every distinct centre becomes an anchor and the rest
    are drawn uniformly inside ``grid``'s x/y bounds (z uniform over the centres' z range, 0 without
    centres), with the same seeded generator; ``grid`` is then required.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.size == 0:
        centres = centres.reshape(0, 3)  # (0, 3)
    assert centres.ndim == 2 and centres.shape[1] == 3, f"centres must be (M, 3); got {centres.shape}"
    if not np.isfinite(centres).all():
        raise ValueError("centres contain NaN or inf")
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1; got {num_anchors}")
    size = np.ones(3) if size is None else np.asarray(size, dtype=np.float64)
    if size.shape != (3,) or not (size > 0).all():
        raise ValueError(f"size must be 3 positive metres (L, W, H); got {size.tolist()}")
    rng = np.random.default_rng(seed)
    points = centres  # (M, 3) float64
    distinct = np.unique(points, axis=0)  # (U, 3)
    if len(distinct) > num_anchors:
        xyz = _kmeans(points, num_anchors, rng, iters, tol)
    else:
        fill = num_anchors - len(distinct)
        if fill and grid is None:
            raise ValueError(
                f"only {len(distinct)} distinct centres for {num_anchors} anchors: pass grid= to fill the rest"
            )
        xyz = np.zeros((num_anchors, 3))
        xyz[: len(distinct)] = distinct
        if fill:
            g = as_grid(grid)
            zlo, zhi = (points[:, 2].min(), points[:, 2].max()) if len(points) else (0.0, 0.0)
            xyz[len(distinct) :, 0] = rng.uniform(g.xbound[0], g.xbound[1], fill)
            xyz[len(distinct) :, 1] = rng.uniform(g.ybound[0], g.ybound[1], fill)
            xyz[len(distinct) :, 2] = rng.uniform(zlo, zhi, fill)
    out = np.zeros((num_anchors, ANCHOR_DIM), dtype=np.float32)
    out[:, [X, Y, Z]] = xyz
    out[:, [LOG_L, LOG_W, LOG_H]] = np.log(size)
    out[:, COS] = 1.0
    return out


def _training_boxes(adapter, scenes: Sequence[str], grid: GridSpec, class_names: Sequence[str], min_lidar_points: int):
    """Centres ``(M, 3)`` and sizes ``(M, 3)`` (L, W, H) of the scenes' keyframe boxes kept for training.

    The filter of ``trainer.data.common.gt_for_frame`` without augmentation: detection class in
    ``class_names``, at least ``min_lidar_points`` LiDAR points, centre inside the grid's x/y bounds.
    """
    wanted = set(class_names)
    centres, sizes = [], []
    for scene in scenes:
        for frame in adapter.keyframes(scene):
            b = frame.boxes
            cls_ok = np.array([c is not None and c in wanted for c in b.detection_class], dtype=bool)
            boxes = np.asarray(b.boxes, dtype=np.float64).reshape(-1, G.BOX_DIM)
            x, y = boxes[:, G.X], boxes[:, G.Y]
            inside = (x >= grid.xbound[0]) & (x < grid.xbound[1]) & (y >= grid.ybound[0]) & (y < grid.ybound[1])
            keep = cls_ok & (np.asarray(b.num_lidar_pts) >= min_lidar_points) & inside
            centres.append(boxes[keep][:, [G.X, G.Y, G.Z]])
            sizes.append(boxes[keep][:, [G.L, G.W, G.H]])
    if not centres:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(centres), np.concatenate(sizes)


def anchor_fingerprint(
    adapter,
    split_scenes: Sequence[str],
    grid: GridSpec | Mapping,
    class_names: Sequence[str],
    num_anchors: int,
    seed: int,
    min_lidar_points: int = 1,
    iters: int = 100,
) -> tuple[str, dict]:
    """The sha256 hex digest that decides whether cached anchors are reused, and the dict it hashes.

    It covers the dataset (``name``, ``version``, resolved ``root``), the scene names in order, the
    grid's bounds (not its name), the class names, ``num_anchors``, ``seed``, ``min_lidar_points``,
    ``iters`` and :data:`ANCHOR_CACHE_VERSION`.
    """
    g = as_grid(grid)
    root = getattr(adapter, "root", None)
    inputs = {
        "cache_version": ANCHOR_CACHE_VERSION,
        "dataset": {
            "name": str(getattr(adapter, "name", type(adapter).__name__)),
            "version": None if getattr(adapter, "version", None) is None else str(adapter.version),
            "root": None if root is None else str(Path(root).resolve()),
        },
        "scenes": [str(s) for s in split_scenes],
        "grid": {k: v for k, v in g.to_dict().items() if k != "name"},
        "class_names": [str(c) for c in class_names],
        "num_anchors": int(num_anchors),
        "seed": int(seed),
        "min_lidar_points": int(min_lidar_points),
        "iters": int(iters),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(npy: Path, meta_path: Path, digest: str, num_anchors: int) -> np.ndarray | None:
    """The cached anchors when the sidecar's fingerprint and the array's checksum match, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != digest:
            return None
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.shape != (num_anchors, ANCHOR_DIM) or arr.dtype != np.float32:
        return None
    if hashlib.sha256(arr.tobytes()).hexdigest() != meta.get("array_sha256"):
        return None
    return arr


def anchors_for_dataset(
    adapter,
    split_scenes: Sequence[str],
    grid: GridSpec | Mapping,
    class_names: Sequence[str],
    num_anchors: int = 900,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    min_lidar_points: int = 1,
    iters: int = 100,
    log=None,
) -> np.ndarray:
    """Initial anchors ``(num_anchors, 11)`` float32 of a training split, computed once and cached.

    The GT boxes of every keyframe of ``split_scenes`` (``adapter.keyframes(scene)``, a
    ``bevlabels.datasets.base.DriveDataset``) are filtered as the trainer's targets are (class in
    ``class_names``, ``>= min_lidar_points`` LiDAR points, centre inside the grid), and their centres
    clustered by :func:`kmeans_anchors`, every anchor sized at the mean GT ``(L, W, H)`` (Sparse4D's
    choice; 1 m when there is no box).

    With ``cache_dir`` (beside the label store), the result is kept there as
    ``anchors-<fingerprint[:16]>.npy`` plus a ``.json`` sidecar holding the full fingerprint
    (:func:`anchor_fingerprint`), its inputs and the array's sha256; a later call with the same
    fingerprint loads it, any other fingerprint (or a missing/corrupt pair) recomputes. Both files are
    written atomically (temporary file, then rename), the array first, the sidecar last.
    """
    g = as_grid(grid)
    digest, inputs = anchor_fingerprint(
        adapter, split_scenes, g, class_names, num_anchors, seed, min_lidar_points, iters
    )
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        npy = cache_dir / f"anchors-{digest[:16]}.npy"
        meta_path = npy.with_suffix(".json")
        cached = _load_cached(npy, meta_path, digest, num_anchors)
        if cached is not None:
            return cached
    centres, sizes = _training_boxes(adapter, split_scenes, g, class_names, min_lidar_points)
    size = sizes.mean(0) if len(sizes) else None
    anchors = kmeans_anchors(centres, num_anchors, seed, iters, size=size, grid=g)
    distinct = len(np.unique(centres, axis=0)) if len(centres) else 0
    if log is not None:
        log(
            f"anchors: k-means of {len(centres)} box centres ({distinct} distinct) from {len(split_scenes)} scenes "
            f"into {num_anchors} anchors"
            + (f"; {num_anchors - distinct} drawn at random" if distinct < num_anchors else "")
        )
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "fingerprint": digest,
            "inputs": inputs,
            "array_sha256": hashlib.sha256(anchors.tobytes()).hexdigest(),
            "num_boxes": int(len(centres)),
            "num_distinct_centres": int(distinct),
            "mean_size_lwh": None if size is None else [float(v) for v in size],
            "columns": list(ANCHOR_COLUMNS),
        }
        _atomic_write(npy, lambda f: np.save(f, anchors, allow_pickle=False))
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return anchors
