"""LiDAR keyframes for the teacher: multi-sweep clouds in the keyframe's ego frame, GT boxes, BEV augmentation.

Per keyframe (:func:`load_sweeps`): the keyframe sweep and the ``n_sweeps - 1`` sweeps before it
(``Frame.prev_sweeps``, newest first), each moved from its sensor frame into the keyframe's ego
frame with ``Frame.key_ego_from_lidar`` (through the global frame: ego motion compensated, as the
devkit's ``from_file_multisweep``), with the returns within ``min_range`` of each sweep's sensor
dropped (the ego's own roof), and stamped with ``dt``, the seconds the sweep was taken before the
keyframe sweep. Columns ``x, y, z, intensity, dt``; see :mod:`trainer.data.common` for the batch
dict (``points (P, 1+5)`` with the batch index first).

A sweep with non-finite coordinates is an error naming the file: NaN would otherwise vanish
silently in the voxeliser and train the teacher on partial clouds.

Training samples are augmented (``augment``, a dict of :func:`~trainer.data.common.sample_bev_aug`
arguments, or ``None``): one random rotation / scale / flip per sample applied to the points and
the GT boxes (centres, sizes, yaw and velocity) alike, recorded in ``aug_from_ego``.

Shape letters: P points, M boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bevlabels.datasets.base import DatasetError, Frame
from bevlabels.geometry import transform_points
from bevlabels.grid import GridSpec
from trainer.data.common import (
    FrameDataModule,
    KeyframeDataset,
    augment_points,
    gt_for_frame,
    sample_bev_aug,
)

#: columns of a cloud after :func:`load_sweeps`
POINT_COLUMNS = ("x", "y", "z", "intensity", "dt")


def load_sweeps(adapter, frame: Frame, n_sweeps: int = 10, min_range: float = 1.0) -> np.ndarray:
    """The keyframe's cloud ``(P, 5)`` float32: ``x, y, z`` in the keyframe's ego frame, ``intensity``, ``dt`` (s).

    Uses the keyframe sweep and up to ``n_sweeps - 1`` earlier ones (fewer at a scene's start).
    Raises :class:`~bevlabels.datasets.base.DatasetError` naming the sweep file when a point is not finite.
    """
    if n_sweeps < 1:
        raise ValueError(f"n_sweeps must be >= 1; got {n_sweeps}")
    clouds = []
    for sweep in (frame.lidar, *frame.prev_sweeps[: n_sweeps - 1]):
        pts = adapter.load_points(sweep)  # (N, 5) x y z intensity ring, sensor frame
        bad = ~np.isfinite(pts[:, :4]).all(1)
        if bad.any():
            raise DatasetError(
                f"{int(bad.sum())} of {len(pts)} points of sweep {sweep.token} ({sweep.path}), used by keyframe "
                f"{frame.token} of scene {frame.scene}, have non-finite x/y/z/intensity (NaN or inf)"
            )
        if min_range > 0:
            pts = pts[np.hypot(pts[:, 0], pts[:, 1]) >= min_range]
        xyz = transform_points(frame.key_ego_from_lidar(sweep), pts[:, :3].astype(np.float64))  # (N, 3)
        dt = np.full((len(pts), 1), (frame.timestamp - sweep.timestamp) * 1e-6)
        clouds.append(np.concatenate([xyz, pts[:, 3:4], dt], 1).astype(np.float32))
    return np.concatenate(clouds, 0)


def crop_to_grid(points: np.ndarray | torch.Tensor, grid: GridSpec, margin: float = 0.0):
    """The points ``(P, >=3)`` inside the grid's x/y bounds and z range (grown by ``margin`` metres)."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    keep = (
        (x >= grid.xbound[0] - margin)
        & (x < grid.xbound[1] + margin)
        & (y >= grid.ybound[0] - margin)
        & (y < grid.ybound[1] + margin)
        & (z >= grid.zbound[0] - margin)
        & (z < grid.zbound[1] + margin)
    )
    return points[keep]


class LidarKeyframes(KeyframeDataset):
    """Samples ``{sample_token, scene, global_from_ego, timestamp, aug_from_ego, points (P, 5), gt_boxes, gt_labels}``."""

    def __init__(
        self,
        frames: Sequence[Frame],
        adapter_cfg: Mapping,
        grid: GridSpec,
        class_names: Sequence[str],
        n_sweeps: int = 10,
        min_range: float = 1.0,
        min_lidar_points: int = 1,
        augment: Mapping[str, Any] | None = None,
        train: bool = False,
    ):
        super().__init__(frames, adapter_cfg, train=train)
        self.grid = grid
        self.class_names = tuple(class_names)
        self.n_sweeps = int(n_sweeps)
        self.min_range = float(min_range)
        self.min_lidar_points = int(min_lidar_points)
        self.augment = dict(augment) if augment else None

    def __getitem__(self, i: int) -> dict[str, Any]:
        frame = self.frames[i]
        points = torch.from_numpy(load_sweeps(self.adapter, frame, self.n_sweeps, self.min_range))  # (P, 5)
        aug = torch.eye(4)
        if self.train and self.augment:
            aug = sample_bev_aug(**self.augment)
            points = augment_points(points, aug)
        # Boxes are moved, then kept when their centre is on the grid; points off it are never pillars.
        boxes, labels = gt_for_frame(frame, self.class_names, self.grid, self.min_lidar_points, aug_from_ego=aug)
        points = crop_to_grid(points, self.grid)
        return {
            **self.common_sample(frame),
            "aug_from_ego": aug,
            "points": points,
            "gt_boxes": boxes,
            "gt_labels": labels,
        }


class LidarDataModule(FrameDataModule):
    """Multi-sweep LiDAR keyframes of a dataset adapter (see the module docstring and :class:`FrameDataModule`).

    Args (beyond :class:`~trainer.data.common.FrameDataModule`'s):
        n_sweeps: sweeps per sample, the keyframe's included (CenterPoint on nuScenes: 10).
        min_range: metres; returns this close to a sweep's sensor (in xy) are dropped.
        augment: ``{rot_range, scale_range, flip_x_prob, flip_y_prob}`` for training samples, or ``None``.
    """

    def __init__(
        self,
        *args,
        n_sweeps: int = 10,
        min_range: float = 1.0,
        augment: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if n_sweeps < 1:
            raise ValueError(f"data.n_sweeps must be >= 1; got {n_sweeps}")
        self.n_sweeps = int(n_sweeps)
        self.min_range = float(min_range)
        self.augment = _plain_or_none(augment)

    def make_dataset(self, frames: Sequence[Frame], train: bool) -> LidarKeyframes:
        return LidarKeyframes(
            frames,
            self.dataset_cfg["adapter"],
            self.grid,
            self.class_names,
            n_sweeps=self.n_sweeps,
            min_range=self.min_range,
            min_lidar_points=self.min_lidar_points,
            augment=self.augment,
            train=train,
        )


def _plain_or_none(cfg):
    if not cfg:
        return None
    from bevlabels.conf import plain

    return plain(cfg)
