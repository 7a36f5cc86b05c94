"""What every data module of the trainer shares: the batch dict, GT selection, BEV augmentation, collation.

The batch dict
--------------
Every :class:`FrameDataModule` yields batches as one dict (OpenPCDet's ``batch_dict``), built by
:func:`collate` from per-keyframe sample dicts. Keys every data module provides:

=====================  ==============================  ======================================================
key                    type / shape                    meaning
=====================  ==============================  ======================================================
``sample_token``       ``list[str]`` (B)               keyframe token (nuScenes ``sample`` token, AV2 ``log:ns``)
``scene``              ``list[str]`` (B)               scene name
``gt_boxes``           ``list[Tensor (M_b, 9)]``       float32 GT boxes in the keyframe's ego frame (after
                                                       augmentation, if any), layout ``X, Y, Z, L, W, H, YAW,
                                                       VX, VY`` of :mod:`bevlabels.geometry`; velocity NaN
                                                       where unknown
``gt_labels``          ``list[Tensor (M_b,)]``         int64 indices into ``class_names``; boxes whose
                                                       detection class is ``None`` or not in ``class_names``
                                                       are dropped (see :func:`gt_for_frame`)
``global_from_ego``    ``Tensor (B, 4, 4)`` float64    the keyframe's ego pose (un-augmented ego frame)
``timestamp``          ``Tensor (B,)`` int64           keyframe time, microseconds
``aug_from_ego``       ``Tensor (B, 4, 4)`` float32    the BEV augmentation applied to points and boxes
                                                       (identity when off): ``p_aug = aug_from_ego @ p_ego``
=====================  ==============================  ======================================================

Per-modality keys, added by each data module:

- LiDAR (:mod:`trainer.data.lidar`): ``points``: ``Tensor (P, 1+5)`` float32, columns ``b, x, y,
  z, intensity, dt``: the batch index, then the keyframe sweep and ``n_sweeps - 1`` earlier sweeps
  in the keyframe's ego frame (augmented), ``dt`` the seconds each sweep was taken before the
  keyframe sweep (0 for the keyframe sweep itself).
- Camera (:mod:`trainer.data.camera`): documented there.

:func:`collate` stacks equal-shaped tensors along a new batch axis, keeps :data:`LIST_KEYS` (and
any ragged tensors) as lists, and concatenates :data:`CAT_KEYS` (point clouds) with a leading
batch-index column.

Data modules
------------
:class:`FrameDataModule` is the base: it builds the dataset adapter from the ``dataset`` config
group (generating the synthetic world on first use), lists the train and val keyframes (devkit
split names from the dataset version: ``mini_train``/``mini_val`` for ``v1.0-mini``,
``train``/``val`` otherwise), checks the label stores a subclass needs (:meth:`~FrameDataModule.check_inputs`),
and serves DataLoaders. A subclass implements :meth:`~FrameDataModule.make_dataset` (a
:class:`KeyframeDataset` over a list of frames). The evaluator uses :attr:`~FrameDataModule.adapter`,
:meth:`~FrameDataModule.split_name` and :meth:`~FrameDataModule.predict_dataloader`.

Shape letters: B batch, M boxes, P points (of the whole batch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from bevlabels.conf import plain
from bevlabels.datasets.base import Frame
from bevlabels.datasets.nuscenes import VERSION_SPLITS
from bevlabels.geometry import BOX_DIM, VX, VY, YAW, H, L, W, X, Y, Z
from bevlabels.grid import GridSpec, as_grid

log = logging.getLogger(__name__)

#: keys :func:`collate` always keeps as per-sample lists
LIST_KEYS = ("sample_token", "scene", "gt_boxes", "gt_labels")
#: keys :func:`collate` concatenates along rows with a leading batch-index column (point clouds)
CAT_KEYS = ("points",)


# ---------------------------------------------------------------------------------------------
# Dataset adapters, built once per process


def get_adapter(adapter_cfg: Mapping) -> Any:
    """The dataset adapter of a ``dataset.adapter`` config, built once per process
    (:func:`bevlabels.datasets.factory.build_adapter`). DataLoader workers call this too: a :class:`KeyframeDataset`
    pickles only the config."""
    from bevlabels.datasets.factory import build_adapter

    return build_adapter(adapter_cfg)


def ensure_synthetic(dataset_cfg: Mapping, log_fn=log.warning) -> None:
    """Generate the synthetic world (nuScenes or AV2 format) a ``dataset`` config names when it is missing."""
    from bevlabels.synthetic.formats import ensure_world

    ensure_world(dataset_cfg, log=log_fn)


def split_names(dataset_cfg: Mapping) -> tuple[str, str]:
    """The dataset's ``(train, val)`` split names: devkit names by nuScenes version, else ``train``/``val``."""
    return VERSION_SPLITS.get(str(dataset_cfg.get("version")), ("train", "val"))


# ---------------------------------------------------------------------------------------------
# GT boxes


def gt_for_frame(
    frame: Frame,
    class_names: Sequence[str],
    grid: GridSpec | Mapping,
    min_lidar_points: int = 1,
    aug_from_ego: torch.Tensor | None = None,
    return_index: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The keyframe's training GT: boxes ``(M, 9)`` float32 (ego frame) and labels ``(M,)`` int64.

    With ``return_index``, also ``index (M,)`` int64: the row of ``frame.boxes`` each kept box comes
    from (what the label store's ``lidar_px.obj`` refers to), so per-box data follows the filter.

    Keeps a box when its detection class is in ``class_names`` (``None``, the classes a benchmark
    ignores, never is), it holds at least ``min_lidar_points`` LiDAR points (``0`` keeps boxes
    without points; the nuScenes evaluation drops such GT, so training on them teaches the model to
    hallucinate), and its centre lies inside the grid's x/y bounds. With ``aug_from_ego`` (a BEV
    augmentation, :func:`bev_aug_matrix`) the boxes are moved first and the grid test applies to
    the moved centres: a rotation brings boxes from beyond the grid's edges into it, and those
    must be targets too, or the model learns to ignore objects it can see.
    """
    grid = as_grid(grid)
    index = {c: i for i, c in enumerate(class_names)}
    b = frame.boxes
    labels = np.array([index.get(c, -1) if c is not None else -1 for c in b.detection_class], dtype=np.int64)
    keep = (labels >= 0) & (b.num_lidar_pts >= min_lidar_points)
    index = torch.as_tensor(np.flatnonzero(keep), dtype=torch.int64)
    boxes = torch.as_tensor(b.boxes[keep], dtype=torch.float32).reshape(-1, BOX_DIM)
    labels = torch.as_tensor(labels[keep], dtype=torch.int64)
    if aug_from_ego is not None:
        boxes = augment_boxes(boxes, aug_from_ego)
    xy = boxes[:, :2]
    inside = (
        (xy[:, 0] >= grid.xbound[0])
        & (xy[:, 0] < grid.xbound[1])
        & (xy[:, 1] >= grid.ybound[0])
        & (xy[:, 1] < grid.ybound[1])
    )
    if return_index:
        return boxes[inside], labels[inside], index[inside]
    return boxes[inside], labels[inside]


# ---------------------------------------------------------------------------------------------
# BEV augmentation: one 4x4 matrix, applied alike to points and boxes


def bev_aug_matrix(rot: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False) -> torch.Tensor:
    """``aug_from_ego (4, 4)`` float32: rotate by ``rot`` about +z, scale by ``scale``, then flip.

    ``flip_x`` mirrors x (``x -> -x``, BEVDepth's ``flip_dx``), ``flip_y`` mirrors y (``flip_dy``).
    """
    c, s = math.cos(rot), math.sin(rot)
    A = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) * scale
    A = torch.diag(torch.tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0], dtype=torch.float64)) @ A
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = A
    return M.float()


def sample_bev_aug(
    rot_range: Sequence[float] = (-math.pi / 4, math.pi / 4),
    scale_range: Sequence[float] = (0.95, 1.05),
    flip_x_prob: float = 0.5,
    flip_y_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random ``aug_from_ego (4, 4)`` (uniform rotation and scale, independent flips), from torch's RNG.

    Lightning's ``seed_everything(workers=True)`` seeds each DataLoader worker, so runs repeat.
    """
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    rot = rot_range[0] + u[0] * (rot_range[1] - rot_range[0])
    scale = scale_range[0] + u[1] * (scale_range[1] - scale_range[0])
    return bev_aug_matrix(rot, scale, u[2] < flip_x_prob, u[3] < flip_y_prob)


def augment_points(points: torch.Tensor, aug_from_ego: torch.Tensor) -> torch.Tensor:
    """Points ``(P, >=3)`` moved by ``aug_from_ego (4, 4)``; extra columns (intensity, dt) untouched."""
    assert points.ndim == 2 and points.shape[1] >= 3, f"points must be (P, >=3); got {tuple(points.shape)}"
    A = aug_from_ego[:3, :3].to(points.dtype)
    t = aug_from_ego[:3, 3].to(points.dtype)
    return torch.cat([points[:, :3] @ A.T + t, points[:, 3:]], 1)


def augment_boxes(boxes: torch.Tensor, aug_from_ego: torch.Tensor) -> torch.Tensor:
    """Boxes ``(M, 9)`` moved by ``aug_from_ego (4, 4)`` (rotation, uniform scale, mirror flips).

    Centres are transformed; the heading is the angle of the transformed heading vector (so a
    flip of x gives ``pi - yaw``, a flip of y ``-yaw``); sizes scale by the matrix's scale; the
    velocity ``(vx, vy)`` is transformed like a direction (NaN stays NaN).
    """
    assert boxes.ndim == 2 and boxes.shape[1] == BOX_DIM, f"boxes must be (M, {BOX_DIM}); got {tuple(boxes.shape)}"
    A = aug_from_ego[:3, :3].to(boxes.dtype)
    out = boxes.clone()
    out[:, [X, Y, Z]] = boxes[:, [X, Y, Z]] @ A.T + aug_from_ego[:3, 3].to(boxes.dtype)
    heading = torch.stack([torch.cos(boxes[:, YAW]), torch.sin(boxes[:, YAW])], 1) @ A[:2, :2].T  # (M, 2)
    out[:, YAW] = torch.atan2(heading[:, 1], heading[:, 0])
    scale = torch.linalg.det(A.double()).abs() ** (1.0 / 3.0)
    out[:, [L, W, H]] = boxes[:, [L, W, H]] * scale.to(boxes.dtype)
    out[:, [VX, VY]] = boxes[:, [VX, VY]] @ A[:2, :2].T
    return out


# ---------------------------------------------------------------------------------------------
# Label-scarce training: the training scenes whose boxes are used


def choose_box_scenes(scenes: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The training scenes whose boxes are used (``data.box_fraction``), in ``scenes``' order.

    ``round(fraction * len(scenes))`` scenes, at least one when ``fraction > 0``, drawn without replacement by a
    numpy ``Generator`` seeded with ``seed``: the same scenes for the same list, fraction and seed on every machine.
    ``fraction`` 1.0 gives every scene; 0.0 none.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"data.box_fraction must lie in [0, 1]; got {fraction}")
    scenes = list(scenes)
    if float(fraction) >= 1.0:
        return scenes
    n = round(float(fraction) * len(scenes))
    n = max(n, 1) if fraction > 0 and scenes else n
    chosen = np.random.default_rng(int(seed)).choice(len(scenes), size=n, replace=False)
    return [scenes[i] for i in sorted(chosen.tolist())]


# ---------------------------------------------------------------------------------------------
# Collation


def collate(
    samples: Sequence[Mapping[str, Any]],
    list_keys: Sequence[str] = LIST_KEYS,
    cat_keys: Sequence[str] = CAT_KEYS,
) -> dict[str, Any]:
    """One batch dict from B sample dicts (see the module docstring).

    ``cat_keys``: ``(P_b, F)`` tensors concatenated into ``(P, 1+F)`` with the sample index first.
    ``list_keys``, non-tensors, and tensors whose shapes differ between samples: lists of B.
    Other tensors: stacked into ``(B, ...)``.
    """
    assert samples, "collate needs at least one sample"
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(keys):
            raise KeyError(
                f"sample {i} has keys {sorted(s)}, sample 0 {sorted(keys)}: every sample needs the same keys"
            )
    batch: dict[str, Any] = {}
    for k in keys:
        values = [s[k] for s in samples]
        if k in cat_keys:
            batch[k] = torch.cat([torch.cat([v.new_full((len(v), 1), float(b)), v], 1) for b, v in enumerate(values)])
        elif k in list_keys or not isinstance(values[0], torch.Tensor):
            batch[k] = values
        elif all(v.shape == values[0].shape for v in values):
            batch[k] = torch.stack(values)
        else:
            batch[k] = values
    return batch


# ---------------------------------------------------------------------------------------------
# Datasets and the base data module


class KeyframeDataset(Dataset):
    """A torch Dataset over a list of keyframes of one adapter; subclasses implement ``__getitem__``.

    Picklable for DataLoader workers: it holds the frames (plain records) and the adapter's config;
    :attr:`adapter` is built on first use in each process (:func:`get_adapter`).
    """

    def __init__(self, frames: Sequence[Frame], adapter_cfg: Mapping, train: bool = False):
        self.frames = list(frames)
        self.adapter_cfg = dict(adapter_cfg)
        self.train = train

    @property
    def adapter(self):
        return get_adapter(self.adapter_cfg)

    def __len__(self) -> int:
        return len(self.frames)

    def common_sample(self, frame: Frame) -> dict[str, Any]:
        """The keys every sample carries except the GT: ``sample_token, scene, global_from_ego, timestamp``."""
        return {
            "sample_token": frame.token,
            "scene": frame.scene,
            "global_from_ego": torch.as_tensor(frame.global_from_ego, dtype=torch.float64),
            "timestamp": torch.tensor(frame.timestamp, dtype=torch.int64),
        }


class FrameDataModule(pl.LightningDataModule):
    """Base data module: a dataset adapter, its train/val keyframes, label-store checks, DataLoaders.

    Args:
        dataset: the ``dataset`` config node (``name``, ``root``, ``version``, ``adapter`` with a
            ``_target_``, ``generate`` for the synthetic world). Build with ``_recursive_: false``
            so the adapter is made here, lazily, not by Hydra.
        grid: the ``grid`` config node (GT outside it is dropped; stores must match it).
        class_names: the label space (``gt_labels`` index it).
        batch_size: DataLoader batch size.
        num_workers: DataLoader processes per training process: an int, or ``"auto"`` (the data configs'
            default): :func:`resolve_num_workers` for the device the batches go to.
        pin_memory: page-locked batches for fast host-to-GPU copies: a bool, or ``"auto"``: on when the
            batches go to a CUDA device (:func:`resolve_pin_memory`). Every loader with workers keeps them
            between epochs (``persistent_workers``).
        train_split, val_split: split names; ``None`` picks them from the version
            (:data:`bevlabels.datasets.nuscenes.VERSION_SPLITS`).
        limit_scenes: use only the first n scenes of each split (quick runs).
        min_lidar_points: GT boxes with fewer LiDAR points are dropped (:func:`gt_for_frame`).
        label_store: path of the zarr label store the samples read, or ``None``.
        store_stages: the store's stages the samples need (e.g. ``["labels", "teacher"]``);
            :meth:`check_inputs` refuses a missing, incomplete or mismatched store before training.
    """

    def __init__(
        self,
        dataset: Mapping,
        grid: Mapping,
        class_names: Sequence[str],
        batch_size: int = 2,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        train_split: str | None = None,
        val_split: str | None = None,
        limit_scenes: int | None = None,
        min_lidar_points: int = 1,
        label_store: str | None = None,
        store_stages: Sequence[str] = (),
    ):
        super().__init__()
        self.dataset_cfg = plain(dataset)
        self.grid = as_grid(plain(grid))
        self.class_names = tuple(str(c) for c in class_names)
        self.batch_size = int(batch_size)
        self.num_workers_setting = check_num_workers(num_workers)
        self.pin_memory_setting = check_pin_memory(pin_memory)
        #: the device type the batches go to when no trainer is attached (the evaluator sets it); else the trainer's
        self.device_type: str | None = None
        default_train, default_val = split_names(self.dataset_cfg)
        self.splits = {"train": train_split or default_train, "val": val_split or default_val}
        self.limit_scenes = limit_scenes
        self.min_lidar_points = int(min_lidar_points)
        self.label_store = str(label_store) if label_store else None
        self.store_stages = tuple(store_stages)
        self._frames: dict[str, list[Frame]] = {}

    # -- what subclasses implement ----------------------------------------------------------------
    def make_dataset(self, frames: Sequence[Frame], train: bool) -> KeyframeDataset:
        """The torch Dataset of these keyframes (``train``: with augmentation)."""
        raise NotImplementedError

    def collate_fn(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Batch dict of samples; override to change :data:`LIST_KEYS` / :data:`CAT_KEYS`."""
        return collate(samples)

    # -- the dataset ------------------------------------------------------------------------------
    @property
    def adapter(self):
        """The dataset adapter (a :class:`~bevlabels.datasets.base.DriveDataset`)."""
        return get_adapter(self.dataset_cfg["adapter"])

    def split_name(self, split: str) -> str:
        """The dataset's name of ``"train"`` or ``"val"`` (e.g. ``mini_val``; the devkit's ``eval_set``)."""
        if split not in self.splits:
            raise KeyError(f"split must be one of {sorted(self.splits)}; got {split!r}")
        return self.splits[split]

    @property
    def eval_set(self) -> str:
        """The val split's name, as the devkit's ``DetectionEval(eval_set=...)`` wants it."""
        return self.split_name("val")

    def scenes(self, split: str) -> list[str]:
        """Scene names of ``"train"`` or ``"val"`` (after ``limit_scenes``)."""
        names = self.adapter.scenes(self.split_name(split))
        return names[: self.limit_scenes] if self.limit_scenes else names

    def frames(self, split: str) -> list[Frame]:
        """Keyframes of ``"train"`` or ``"val"``, scene by scene in time order (cached)."""
        if split not in self._frames:
            frames = [f for s in self.scenes(split) for f in self.adapter.keyframes(s)]
            if not frames:
                raise RuntimeError(
                    f"the {split} split {self.split_name(split)!r} of {self.adapter} has no keyframes; "
                    f"set data.{split}_split to a split of this dataset"
                )
            self._frames[split] = frames
        return self._frames[split]

    def prepare_data(self) -> None:
        ensure_synthetic(self.dataset_cfg)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.frames("train")
        self.frames("val")

    # -- label stores -----------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Refuse, naming the problem, a label store that is missing, incomplete or made for another grid/keyframes."""
        if not self.store_stages:
            return
        from bevlabels.cache import LabelStoreReader

        if not self.label_store:
            raise FileNotFoundError(f"data.label_store is not set; the samples need the stages {self.store_stages}")
        path = Path(self.label_store)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(
                f"label store {path} not found; make it with `python -m pipelines.labels out={path}`"
                + (" then `python -m pipelines.teacher ...`" if "teacher" in self.store_stages else "")
            )
        reader = LabelStoreReader(path)
        tokens = [f.token for split in ("train", "val") for f in self.frames(split)]
        for stage in self.store_stages:
            reader.check_compatible(grid=self.grid, sample_tokens=tokens, stage=stage)

    # -- loaders ----------------------------------------------------------------------------------
    def loader_device(self) -> tuple[str, int]:
        """``(device type, processes on this machine)`` the batches go to: the attached trainer's root device and
        devices per node; else :attr:`device_type` (set by the evaluator) and 1; else ``("cpu", 1)``."""
        trainer = getattr(self, "trainer", None)  # Lightning attaches it in fit/validate/predict(datamodule=...)
        if trainer is not None:
            try:
                return trainer.strategy.root_device.type, max(1, int(getattr(trainer, "num_devices", 1) or 1))
            except (AttributeError, AssertionError, RuntimeError):  # a strategy not set up yet
                pass
        return (self.device_type or "cpu"), 1

    @property
    def num_workers(self) -> int:
        """DataLoader processes per training process: ``num_workers`` resolved for :meth:`loader_device`."""
        device_type, processes = self.loader_device()
        return resolve_num_workers(self.num_workers_setting, device_type, processes)

    @property
    def pin_memory(self) -> bool:
        """Whether loaders pin their batches: ``pin_memory`` resolved for :meth:`loader_device`."""
        return resolve_pin_memory(self.pin_memory_setting, self.loader_device()[0])

    def loader_kwargs(self) -> dict[str, Any]:
        """``num_workers``, ``pin_memory`` and ``persistent_workers`` (with workers) of every loader of this module."""
        workers = self.num_workers
        return {"num_workers": workers, "pin_memory": self.pin_memory, "persistent_workers": workers > 0}

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            self.make_dataset(self.frames(split), train=train),
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(self.frames(split)) > self.batch_size,
            collate_fn=self.collate_fn,
            **self.loader_kwargs(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def bn_dataloader(self) -> DataLoader:
        """Training keyframes shuffled, each with its own augmentation draw, never as scene streams: what
        :class:`~trainer.callbacks.PreciseBN` averages BatchNorm statistics over. A stream loader would give it
        the same few scenes under one held augmentation every time."""
        return self._loader("train", train=True)

    def predict_dataloader(self, split: str = "val") -> DataLoader:
        """Keyframes of ``split`` in order, without augmentation (what the evaluator predicts)."""
        return self._loader(split, train=False)


#: ``num_workers: auto`` on a CUDA machine: at most this many loader processes per training process
MAX_AUTO_WORKERS = 8
#: ``num_workers: auto`` on a CPU: what the data configs said before ``auto`` (more workers only take cores from
#: the model's own threads on a small machine)
CPU_AUTO_WORKERS = 2


def check_num_workers(setting: int | str) -> int | str:
    """``num_workers`` as given (an int >= 0, or ``"auto"``); a ``ValueError`` naming ``data.num_workers`` otherwise."""
    if setting == "auto":
        return "auto"
    try:
        n = int(setting)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(setting, bool) or str(n) != str(setting).strip():
        raise ValueError(f"data.num_workers must be 'auto' or an integer >= 0; got {setting!r}")
    return n


def check_pin_memory(setting: bool | str) -> bool | str:
    """``pin_memory`` as given (a bool or ``"auto"``); a ``ValueError`` naming ``data.pin_memory`` otherwise."""
    if setting == "auto" or isinstance(setting, bool):
        return setting
    raise ValueError(f"data.pin_memory must be true, false or 'auto'; got {setting!r}")


def resolve_num_workers(setting: int | str, device_type: str = "cpu", processes: int = 1) -> int:
    """Loader processes of one training process: an int as given; ``"auto"``: on a CUDA device
    ``min(MAX_AUTO_WORKERS, CPUs / processes)`` (``processes``: training processes on the machine, e.g. one per
    GPU under DDP), at least 1; on a CPU :data:`CPU_AUTO_WORKERS` (at most the CPUs)."""
    import os

    setting = check_num_workers(setting)
    if setting != "auto":
        return int(setting)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device_type == "cuda":
        return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, int(processes))))
    return min(CPU_AUTO_WORKERS, cpus)


def resolve_pin_memory(setting: bool | str, device_type: str = "cpu") -> bool:
    """Pin the loaders' batches: a bool as given; ``"auto"``: when they go to a CUDA device."""
    setting = check_pin_memory(setting)
    return device_type == "cuda" if setting == "auto" else bool(setting)
