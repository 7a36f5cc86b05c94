"""Typed records of a driving dataset and the one interface every adapter implements.

An adapter (nuScenes, Argoverse 2, the synthetic world through the nuScenes adapter) converts its
dataset's frames, units and box conventions into these records, and only there (see
``bevlabels.geometry`` for frames and the box layout). Everything downstream (label pipeline,
trainer) sees only these records.

Frames: a :class:`Frame`'s boxes are in the *keyframe's ego frame*, i.e. the ego pose at the
keyframe LiDAR sweep's timestamp (``frame.global_from_ego``). Each camera and sweep carries its
own ego pose, because sensors fire at different times; :meth:`Frame.key_ego_from_cam` and
:meth:`Frame.key_ego_from_lidar` chain through the global frame exactly as the nuScenes devkit does.

Points from :meth:`DriveDataset.load_points` are ``(N, 5)`` float32 in the sweep's sensor frame:
``x, y, z, intensity, ring`` (ring -1 where the dataset has none).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bevlabels.geometry import BOX_DIM, compose, invert_transform

POINT_DIM = 5  # x, y, z, intensity, ring
POINT_COLUMNS = ("x", "y", "z", "intensity", "ring")


class DatasetError(RuntimeError):
    """A dataset on disk is missing something or is malformed; the message names the file or field."""


@dataclass(frozen=True, eq=False)
class CameraInfo:
    """One camera image of a keyframe.

    ``K (3, 3)`` is ``img_from_cam`` for the image at its original ``(width, height)``;
    ``ego_from_cam (4, 4)`` is the calibration; ``global_from_ego (4, 4)`` the ego pose at the
    image's own timestamp. ``image_path`` may not exist (AV2 logs without images): check
    :attr:`has_image` before reading it.
    """

    name: str
    token: str
    image_path: Path
    width: int
    height: int
    K: np.ndarray
    ego_from_cam: np.ndarray
    global_from_ego: np.ndarray
    timestamp: int  # microseconds

    @property
    def has_image(self) -> bool:
        return Path(self.image_path).is_file()


@dataclass(frozen=True, eq=False)
class LidarSweep:
    """One LiDAR sweep: where its points are, how to move them, and when it was taken."""

    token: str
    path: Path
    ego_from_lidar: np.ndarray  # (4, 4) calibration
    global_from_ego: np.ndarray  # (4, 4) ego pose at the sweep's timestamp
    timestamp: int  # microseconds
    is_key: bool = False

    @property
    def global_from_lidar(self) -> np.ndarray:
        return self.global_from_ego @ self.ego_from_lidar


@dataclass(frozen=True, eq=False)
class Boxes:
    """GT boxes of one keyframe, in that keyframe's ego frame.

    ``boxes (M, 9)`` in the layout of ``bevlabels.geometry`` (centre, L W H, yaw, vx vy; velocity
    NaN when unknown). ``detection_class[i]`` is ``None`` for categories the dataset's detection
    benchmark ignores. ``instance_id`` is stable across a scene's keyframes.
    """

    boxes: np.ndarray
    category: tuple[str, ...]
    detection_class: tuple[str | None, ...]
    instance_id: tuple[str, ...]
    num_lidar_pts: np.ndarray  # (M,) int
    token: tuple[str, ...] = ()
    attribute: tuple[str | None, ...] = ()

    def __post_init__(self):
        m = len(self.category)
        if self.boxes.shape != (m, BOX_DIM):
            raise ValueError(f"boxes must be ({m}, {BOX_DIM}); got {self.boxes.shape}")
        for name in ("detection_class", "instance_id"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"Boxes.{name} has {len(getattr(self, name))} entries for {m} boxes")
        if self.num_lidar_pts.shape != (m,):
            raise ValueError(f"Boxes.num_lidar_pts must be ({m},); got {self.num_lidar_pts.shape}")

    def __len__(self) -> int:
        return len(self.category)

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, BOX_DIM)), (), (), (), np.zeros((0,), dtype=np.int64))

    def select(self, keep: np.ndarray) -> Boxes:
        """The subset of boxes where ``keep`` (bool ``(M,)`` or indices) holds."""
        idx = np.arange(len(self))[keep]
        pick = lambda t: tuple(t[i] for i in idx) if t else t  # noqa: E731
        return Boxes(
            self.boxes[idx],
            pick(self.category),
            pick(self.detection_class),
            pick(self.instance_id),
            self.num_lidar_pts[idx],
            pick(self.token),
            pick(self.attribute),
        )


#: nuScenes keyframes are 2 Hz: the keyframe interval (seconds) where a sample's own is unknown (a lone keyframe;
#: Sparse4D's ``default_time_interval``). Samples carry their real interval (``dt``) wherever a neighbour exists.
DEFAULT_DT = 0.5


@dataclass(frozen=True, eq=False)
class Frame:
    """One annotated keyframe: cameras, its LiDAR sweep and the sweeps before it, GT boxes."""

    token: str
    scene: str
    index: int  # position in the scene's keyframe order
    timestamp: int  # microseconds, the keyframe LiDAR sweep's
    cameras: tuple[CameraInfo, ...]
    lidar: LidarSweep
    prev_sweeps: tuple[
        LidarSweep, ...
    ] = ()  # earlier sweeps of the scene, newest first (earlier keyframe sweeps included)
    boxes: Boxes = field(default_factory=Boxes.empty)

    @property
    def global_from_ego(self) -> np.ndarray:
        """The keyframe's ego pose (at the keyframe sweep's time)."""
        return self.lidar.global_from_ego

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def key_ego_from_cam(self, cam: int | CameraInfo) -> np.ndarray:
        """``(4, 4)`` from a camera's frame to the keyframe's ego frame, through the global frame."""
        c = self.cameras[cam] if isinstance(cam, int) else cam
        return compose(invert_transform(self.global_from_ego), c.global_from_ego, c.ego_from_cam)

    def cam_from_key_ego(self, cam: int | CameraInfo) -> np.ndarray:
        """``(4, 4)`` from the keyframe's ego frame to a camera's frame."""
        return invert_transform(self.key_ego_from_cam(cam))

    def key_ego_from_lidar(self, sweep: LidarSweep) -> np.ndarray:
        """``(4, 4)`` from any sweep's sensor frame to this keyframe's ego frame."""
        return compose(invert_transform(self.global_from_ego), sweep.global_from_ego, sweep.ego_from_lidar)


class DriveDataset(abc.ABC):
    """One view of a driving dataset: scenes, their keyframes in order, their LiDAR sweeps, points.

    Adapters import their devkit lazily (in ``__init__``), so importing ``bevlabels.datasets``
    never needs nuscenes-devkit or av2.
    """

    #: short dataset name recorded in stores (``nuscenes``, ``av2``)
    name: str = "base"
    #: the detection classes of this dataset's benchmark, in the order models index them
    classes: tuple[str, ...] = ()
    #: which official evaluation scores this dataset's detections (``trainer.evaluate`` dispatches on
    #: it): ``"nuscenes"`` (the nuScenes devkit), ``"av2"`` (av2's detection evaluation), ``None``: none
    evaluation: str | None = None
    root: Path

    @abc.abstractmethod
    def scenes(self, split: str | None = None) -> list[str]:
        """Scene names, optionally restricted to a split (``train``, ``val``, ...)."""

    @abc.abstractmethod
    def keyframes(self, scene: str) -> list[Frame]:
        """The scene's annotated keyframes in time order."""

    @abc.abstractmethod
    def sweeps(self, scene: str) -> list[LidarSweep]:
        """Every LiDAR sweep of the scene (key and non-key) in time order."""

    @abc.abstractmethod
    def load_points(self, sweep: LidarSweep) -> np.ndarray:
        """``(N, 5)`` float32 points of a sweep in its sensor frame: x, y, z, intensity, ring."""

    # -- conveniences built on the abstract methods ------------------------------------------------
    def frames(self, scenes: Sequence[str] | None = None) -> Iterator[Frame]:
        """All keyframes of the given scenes (default: all), scene by scene in order."""
        for s in self.scenes() if scenes is None else scenes:
            yield from self.keyframes(s)

    def keyframe_tokens(self, scene: str) -> list[str]:
        """The tokens of the scene's keyframes in time order (adapters may override without building frames)."""
        return [f.token for f in self.keyframes(scene)]

    def frame(self, token: str) -> Frame:
        """The keyframe with this token (linear search; adapters may override with a lookup)."""
        for f in self.frames():
            if f.token == token:
                return f
        raise KeyError(f"no keyframe with token {token!r} in {self.name} at {self.root}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


def read_float32_points(path: Path, columns: int, keep: int = POINT_DIM) -> np.ndarray:
    """``(N, keep)`` float32 from a flat binary file of ``columns`` float32 per point.

    Raises :class:`DatasetError` naming the file when it is missing or truncated (its size is
    not a whole number of ``4 * columns``-byte records).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"point file not found: {path}")
    size = path.stat().st_size
    record = 4 * columns
    if size % record:
        raise DatasetError(
            f"point file {path} is truncated or corrupt: {size} bytes is not a multiple of the "
            f"{record}-byte record ({columns} float32 per point)"
        )
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, columns)
    if pts.shape[1] >= keep:
        return np.ascontiguousarray(pts[:, :keep])
    pad = np.full((pts.shape[0], keep - pts.shape[1]), -1.0, dtype=np.float32)
    return np.concatenate([pts, pad], 1)
