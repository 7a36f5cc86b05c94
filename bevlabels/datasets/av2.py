"""Argoverse 2 sensor dataset adapter, through av2's own ``AV2SensorDataLoader``.

Scenes are AV2 log ids; keyframes are the annotated LiDAR sweeps of a log, in time order.

AV2 quirks absorbed here (and nowhere else)
-------------------------------------------
- **Timestamps** are integer *nanoseconds* in AV2 (file names, tables). Our records store
  *microseconds* (rounded to the nearest µs, :func:`ns_to_us`); tokens keep the exact nanoseconds:
  a keyframe (and its sweep) is ``f"{log_id}:{timestamp_ns}"``, a camera image
  ``f"{log_id}:{cam_name}:{timestamp_ns}"``.
- **Global frame = AV2's ``city`` frame.** ``global_from_ego`` is ``city_SE3_egovehicle`` as a 4x4.
  AV2 records ego poses at sensor timestamps (2,706 in the 15 s test log, every LiDAR and
  annotation timestamp among them) and av2 looks poses up by exact timestamp
  (``get_city_SE3_ego``, also for camera timestamps); we do the same, and only when a timestamp
  is absent from the table interpolate between the two bracketing poses (linear translation,
  slerp rotation), or take the end pose up to 50 ms outside the table's span (else DatasetError).
- **Sweeps are already in the ego frame.** AV2 merges its two stacked 32-beam LiDARs (``up_lidar``,
  ``down_lidar``) into one sweep, ego-motion-compensated to the sweep timestamp and expressed in
  the egovehicle frame (av2 ``Sweep.from_feather``: "The sweep is in the _ego_ reference frame").
  So ``ego_from_lidar`` is the identity and the sweep's "sensor frame" is the ego frame.
  ``ring`` is AV2's ``laser_number`` (0..63, both sensors); xyz are stored as float16 on disk.
- **Cuboids** (``annotations.feather``, one table for the whole log) are in the ego frame at
  their LiDAR timestamp (av2 evaluation: "Center of the ground truth annotations in the
  egovehicle frame"); ``tx_m, ty_m, tz_m`` is the box *centre* and the object frame has x along
  the length, y along the width, z up: exactly our layout (``boxes_from_av2_cuboids``). On the
  real test log, the number of sweep points inside each of our boxes equals AV2's
  ``num_interior_pts`` exactly. av2's ``Cuboid.vertices_m`` order is the devkit's corner order, so
  ``box_corners`` matches it vertex for vertex.
- **No velocities** are annotated: we estimate them per track by differencing the box centre in the
  city frame over time (see :meth:`AV2Dataset._track_velocities`).
- **Categories**: AV2 annotates 30 categories (``AnnotationCategories``); its detection/tracking
  benchmark scores 26 of them (``av2.evaluation.SensorCompetitionCategories``, listed in
  :data:`AV2_CLASSES` in that enum's order). ``ANIMAL``, ``OFFICIAL_SIGNALER``,
  ``RAILED_VEHICLE`` and ``TRAFFIC_LIGHT_TRAILER`` get ``detection_class=None``.
- **Every sweep is annotated** (10 Hz), so every sweep is a keyframe and the ``prev_sweeps`` of a
  keyframe are the previous keyframes' sweeps (in nuScenes they are non-key sweeps).
- **Cameras**: the 7 ring cameras (20 Hz, each with its own timestamp; ``ring_front_center`` is
  portrait, 1550x2048). A keyframe takes each camera's image closest to the LiDAR timestamp within
  av2's tolerance (±25 ms, half the 20 Hz period, ``SynchronizationDB.get_closest_cam_channel_
  timestamp``), with that image's own timestamp (not a whole microsecond: rounded) and ego pose.
  **Pixel convention**: av2 projects ``uv = (K p)[:2] / z`` with no offset and treats integer
  ``uv`` as pixel centres (it rounds ``uv`` to index an image). We pass AV2's ``K`` unchanged, so
  our ``uv`` equals av2's numerically (tested to 0.01 px); in our ``[i, i+1)`` pixel convention
  this leaves a constant half-pixel offset in the calibration, as the nuScenes devkit does too.
- **Logs without images** (the public test log, LiDAR-only downloads): we warn once per log,
  naming the missing ``sensors/cameras/<cam>`` folders, and give each camera the path its image
  would have (``sensors/cameras/<cam>/<lidar_timestamp_ns>.jpg``, which does not exist, so
  ``CameraInfo.has_image`` is False), the LiDAR timestamp and the LiDAR's ego pose.

Root layout
-----------
``root`` is either a folder of logs (``root/<log_id>/...``, e.g. ``.../av2/sensor/val``) or the
dataset top folder holding split folders (``root/<split>/<log_id>/...``, ``split`` in ``train``,
``val``, ``test``). A sub-folder is a log when it holds ``city_SE3_egovehicle.feather`` or a
``sensors`` folder. With a top folder, ``split`` picks the split the dataset shows by default
(``None``: all splits present); with a folder of logs, its own name is its split.

Shapes: S sweeps of a log, A annotation rows of a log, M boxes of a keyframe, N points.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.datasets.base import (
    POINT_DIM,
    Boxes,
    CameraInfo,
    DatasetError,
    DriveDataset,
    Frame,
    LidarSweep,
)
from bevlabels.geometry import VX, VY, boxes_from_av2_cuboids, make_transform

#: The 26 categories of AV2's sensor-dataset detection and tracking benchmark, in the order of
#: ``av2.evaluation.SensorCompetitionCategories`` (a test checks they agree).
AV2_CLASSES: tuple[str, ...] = (
    "ARTICULATED_BUS",
    "BICYCLE",
    "BICYCLIST",
    "BOLLARD",
    "BOX_TRUCK",
    "BUS",
    "CONSTRUCTION_BARREL",
    "CONSTRUCTION_CONE",
    "DOG",
    "LARGE_VEHICLE",
    "MESSAGE_BOARD_TRAILER",
    "MOBILE_PEDESTRIAN_CROSSING_SIGN",
    "MOTORCYCLE",
    "MOTORCYCLIST",
    "PEDESTRIAN",
    "REGULAR_VEHICLE",
    "SCHOOL_BUS",
    "SIGN",
    "STOP_SIGN",
    "STROLLER",
    "TRUCK",
    "TRUCK_CAB",
    "VEHICULAR_TRAILER",
    "WHEELCHAIR",
    "WHEELED_DEVICE",
    "WHEELED_RIDER",
)

#: The 7 ring cameras, in the order a frame lists them (front, then left/right pairs going back).
RING_CAMERAS: tuple[str, ...] = (
    "ring_front_center",
    "ring_front_left",
    "ring_front_right",
    "ring_side_left",
    "ring_side_right",
    "ring_rear_left",
    "ring_rear_right",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")  # listed first, in this order, when present

_POSES_FILE = "city_SE3_egovehicle.feather"
_ANNOTATIONS_FILE = "annotations.feather"
_POINT_COLUMNS = ("x", "y", "z", "intensity", "laser_number")
_ANNOTATION_COLUMNS = (
    "timestamp_ns", "track_uuid", "category", "length_m", "width_m", "height_m",
    "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m", "num_interior_pts",
)  # fmt: skip
_POSE_EXTRAPOLATION_NS = 50_000_000  # how far outside the pose table the end pose is still used


def ns_to_us(timestamp_ns: int | np.ndarray) -> int | np.ndarray:
    """Microseconds (rounded to nearest) from AV2 nanosecond timestamps, int or int64 array alike."""
    if isinstance(timestamp_ns, np.ndarray):
        return (timestamp_ns.astype(np.int64) + 500) // 1000
    return (int(timestamp_ns) + 500) // 1000


def _is_log_dir(path: Path) -> bool:
    return path.is_dir() and ((path / _POSES_FILE).is_file() or (path / "sensors").is_dir())


def _log_ids_in(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if not d.name.startswith(".") and _is_log_dir(d))


@dataclass
class _Log:
    """Everything read once per log: sweep times, pose table, calibration, annotations."""

    log_id: str
    split: str
    log_dir: Path
    loader: Any  # the split's AV2SensorDataLoader
    lidar_ns: np.ndarray  # (S,) int64, sorted
    pose_ns: np.ndarray  # (P,) int64, sorted
    pose_quat: np.ndarray  # (P, 4) w, x, y, z
    pose_R: np.ndarray  # (P, 3, 3)
    pose_t: np.ndarray  # (P, 3)
    cameras: dict[str, Any]  # cam name -> av2 PinholeCamera
    cams_without_images: tuple[str, ...]
    ann: Any = None  # pandas DataFrame of annotations.feather (file order), None when absent
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (A, 2) ego-frame vx, vy
    rows_by_ts: dict[int, np.ndarray] = field(default_factory=dict)  # timestamp_ns -> row indices
    key_ns: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (K,) keyframe times
    frames: list[Frame] | None = None


class AV2Dataset(DriveDataset):
    """Argoverse 2 sensor dataset: logs as scenes, annotated LiDAR sweeps as keyframes.

    Args:
        root: a folder of AV2 logs, or the dataset top folder holding ``train/``, ``val/``, ``test/``
            (see the module docstring).
        split: with a top folder, the split shown by default (``None``: all present).
        n_prev_sweeps: how many earlier sweeps a keyframe carries in ``prev_sweeps``.
        cameras: the camera names a frame lists (default the 7 ring cameras).
        max_velocity_gap_s: a track's neighbouring observation further apart in time than this is
            not used for its velocity (the nuScenes devkit's ``max_time_diff``).
        cached_logs: how many logs' indices (annotations, poses, frames) stay in memory; a label
            pipeline walks scene by scene, so a few suffice and memory stays bounded.
    """

    name = "av2"
    classes = AV2_CLASSES
    evaluation = "av2"  # scored by av2's own detection evaluation (av2.evaluation.detection)

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        n_prev_sweeps: int = 5,
        cameras: Sequence[str] = RING_CAMERAS,
        max_velocity_gap_s: float = 1.5,
        cached_logs: int = 4,
    ) -> None:
        try:
            from av2.datasets.sensor.av2_sensor_dataloader import AV2SensorDataLoader
        except ImportError as e:  # pragma: no cover - av2 is a project dependency
            raise ImportError("AV2Dataset needs the av2 package: pip install 'av2>=0.3.4,<0.4'") from e
        self._loader_cls = AV2SensorDataLoader
        self.root = Path(root)
        self.n_prev_sweeps = int(n_prev_sweeps)
        self.camera_names = tuple(cameras)
        self.max_velocity_gap_ns = int(max_velocity_gap_s * 1e9)
        self.cached_logs = max(1, int(cached_logs))
        if not self.root.is_dir():
            raise DatasetError(f"AV2 root not found (or not a folder): {self.root}")

        if _log_ids_in(self.root):  # a folder of logs: its name is its split
            self._split_dirs = {self.root.name: self.root}
        else:
            found = {d.name: d for d in self.root.iterdir() if d.is_dir() and _log_ids_in(d)}
            order = [s for s in SPLITS if s in found] + sorted(s for s in found if s not in SPLITS)
            self._split_dirs = {s: found[s] for s in order}
        if not self._split_dirs:
            raise DatasetError(
                f"no AV2 logs under {self.root}: expected <root>/<log_id>/{_POSES_FILE} (a folder of "
                f"logs) or <root>/<split>/<log_id>/{_POSES_FILE} (the dataset top folder)"
            )
        if split is not None:
            self._check_split(split)
        self.split = split
        self._loaders: dict[str, Any] = {}
        self._logs: OrderedDict[str, _Log] = OrderedDict()  # least recently used first
        self._warned: set[tuple[str, str]] = set()  # (log id, what): each warning once per log

    # -- DriveDataset interface --------------------------------------------------------------------
    def scenes(self, split: str | None = None) -> list[str]:
        """Log ids, sorted, of ``split`` (default: the constructor's split, else every split present)."""
        split = split if split is not None else self.split
        splits = [self._check_split(split)] if split is not None else list(self._split_dirs)
        return [log for s in splits for log in self._loader(s).get_log_ids() if _is_log_dir(self._split_dirs[s] / log)]

    def keyframes(self, scene: str) -> list[Frame]:
        """The log's annotated sweeps as frames, in time order (every sweep when labels are absent)."""
        log = self._log(scene)
        if log.frames is None:
            log.frames = [self._make_frame(log, i) for i in range(len(log.key_ns))]
        return list(log.frames)

    def keyframe_tokens(self, scene: str) -> list[str]:
        """``"<log_id>:<timestamp_ns>"`` of the log's keyframes, from its index alone (no frames, cameras or boxes built)."""
        return [f"{scene}:{int(ts)}" for ts in self._log(scene).key_ns]

    def sweeps(self, scene: str) -> list[LidarSweep]:
        """Every LiDAR sweep of the log in time order; ``is_key`` where the sweep has labels."""
        log = self._log(scene)
        poses = self._poses_at(log, log.lidar_ns)  # (S, 4, 4)
        return [self._make_sweep(log, i, poses[i]) for i in range(len(log.lidar_ns))]

    def load_points(self, sweep: LidarSweep) -> np.ndarray:
        """``(N, 5)`` float32 ``x, y, z, intensity, ring`` in the ego frame (AV2's sweep frame).

        ``intensity`` is AV2's 0..255 value, ``ring`` its ``laser_number`` (0..63).
        """
        from av2.utils.io import read_feather

        df = _read_table(read_feather, Path(sweep.path), _POINT_COLUMNS, what="LiDAR sweep", absent="LiDAR sweep")
        points = np.empty((len(df), POINT_DIM), dtype=np.float32)  # (N, 5)
        for j, c in enumerate(_POINT_COLUMNS):
            points[:, j] = df[c].to_numpy()
        return points

    def frame(self, token: str) -> Frame:
        """The keyframe with token ``"<log_id>:<timestamp_ns>"``."""
        log_id, _, ts = token.rpartition(":")
        if log_id and ts.isdigit():
            try:
                log = self._log(log_id)
            except DatasetError:
                log = None
            if log is not None:
                hit = np.flatnonzero(log.key_ns == int(ts))
                if hit.size:
                    return self.keyframes(log_id)[int(hit[0])]
        raise KeyError(f"no keyframe with token {token!r} in {self.name} at {self.root}")

    def __getstate__(self) -> dict:
        """Pickle (e.g. to a dask worker) without the per-log caches; the worker rebuilds what it reads."""
        state = self.__dict__.copy()
        state["_logs"] = OrderedDict()
        return state

    # -- log index ---------------------------------------------------------------------------------
    def _check_split(self, split: str) -> str:
        if split not in self._split_dirs:
            raise DatasetError(
                f"AV2 split {split!r} not found under {self.root}; available: {sorted(self._split_dirs)}"
            )
        return split

    def _loader(self, split: str):
        """The av2 loader of one split folder (built on first use: it indexes every log's images)."""
        if split not in self._loaders:
            d = self._split_dirs[split]
            self._loaders[split] = self._loader_cls(data_dir=d, labels_dir=d)
        return self._loaders[split]

    def _log(self, log_id: str) -> _Log:
        """The log's index, from the cache or read now (evicting the least recently used)."""
        if log_id in self._logs:
            self._logs.move_to_end(log_id)
            return self._logs[log_id]
        split = next((s for s, d in self._split_dirs.items() if _is_log_dir(d / log_id)), None)
        if split is None:
            raise DatasetError(f"no AV2 log {log_id!r} under {self.root} (splits: {list(self._split_dirs)})")
        self._logs[log_id] = self._index_log(log_id, split)
        while len(self._logs) > self.cached_logs:
            self._logs.popitem(last=False)
        return self._logs[log_id]

    def _warn_once(self, log_id: str, what: str, message: str) -> None:
        if (log_id, what) not in self._warned:
            self._warned.add((log_id, what))
            warnings.warn(message, stacklevel=3)

    def _index_log(self, log_id: str, split: str) -> _Log:
        """Read a log's sweep list, poses, calibration and annotations once."""
        from av2.geometry.geometry import quat_to_mat
        from av2.utils.io import read_feather

        loader = self._loader(split)
        log_dir = self._split_dirs[split] / log_id
        lidar_ns = np.asarray(loader.get_ordered_log_lidar_timestamps(log_id), dtype=np.int64)
        if lidar_ns.size == 0:
            raise DatasetError(f"AV2 log {log_id} has no LiDAR sweeps: no *.feather in {log_dir / 'sensors' / 'lidar'}")

        poses_path = log_dir / _POSES_FILE
        poses = _read_table(read_feather, poses_path, ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"))
        order = np.argsort(poses["timestamp_ns"].to_numpy(np.int64), kind="stable")
        poses = poses.iloc[order]
        quat = poses[["qw", "qx", "qy", "qz"]].to_numpy(np.float64)  # (P, 4)

        cameras = {}
        for cam in self.camera_names:
            try:
                cameras[cam] = loader.get_log_pinhole_camera(log_id, cam)
            except (OSError, KeyError, ValueError) as e:
                raise DatasetError(
                    f"AV2 log {log_id}: no calibration for camera {cam!r} in "
                    f"{log_dir / 'calibration'} (intrinsics.feather, egovehicle_SE3_sensor.feather): {e!r}"
                ) from e
        cam_dirs = {cam: log_dir / "sensors" / "cameras" / cam for cam in self.camera_names}
        without = tuple(c for c, d in cam_dirs.items() if not (d.is_dir() and next(d.glob("*.jpg"), None)))
        log = _Log(
            log_id=log_id,
            split=split,
            log_dir=log_dir,
            loader=loader,
            lidar_ns=lidar_ns,
            pose_ns=poses["timestamp_ns"].to_numpy(np.int64),
            pose_quat=quat,
            pose_R=quat_to_mat(quat),  # av2's own conversion: poses equal get_city_SE3_ego's
            pose_t=poses[["tx_m", "ty_m", "tz_m"]].to_numpy(np.float64),
            cameras=cameras,
            cams_without_images=without,
        )
        if without:
            missing = ", ".join(str(cam_dirs[c].relative_to(log_dir)) for c in without)
            self._warn_once(
                log_id,
                "images",
                f"AV2 log {log_id} has no images in {missing} (under {log_dir}); those cameras get "
                f"the image paths they would have (not existing), the LiDAR timestamp and its ego pose",
            )

        ann_path = log_dir / _ANNOTATIONS_FILE
        if not ann_path.is_file():
            self._warn_once(
                log_id,
                "annotations",
                f"AV2 log {log_id} has no annotations ({ann_path} not found): every sweep is a keyframe with no boxes",
            )
            log.key_ns = lidar_ns.copy()
            return log
        ann = _read_table(read_feather, ann_path, _ANNOTATION_COLUMNS).reset_index(drop=True)
        ts = ann["timestamp_ns"].to_numpy(np.int64)  # (A,)
        by_time = np.argsort(ts, kind="stable")  # keeps file order within a timestamp
        uts, starts = np.unique(ts[by_time], return_index=True)
        log.ann = ann
        log.rows_by_ts = {int(t): rows for t, rows in zip(uts, np.split(by_time, starts[1:]))}
        log.velocity = self._track_velocities(log, ann)
        log.key_ns = lidar_ns[np.isin(lidar_ns, uts)]
        unswept = int(np.count_nonzero(~np.isin(uts, lidar_ns)))
        if unswept:
            self._warn_once(
                log_id,
                "unswept labels",
                f"AV2 log {log_id}: {unswept} of {len(uts)} annotated timestamps have no sweep file in "
                f"{log_dir / 'sensors' / 'lidar'}; they only serve velocity estimation",
            )
        return log

    # -- poses and velocities ----------------------------------------------------------------------
    def _poses_at(self, log: _Log, timestamps_ns: np.ndarray) -> np.ndarray:
        """``global_from_ego (T, 4, 4)`` at timestamps ``(T,)``: exact table entries, else interpolated."""
        t = np.asarray(timestamps_ns, dtype=np.int64).reshape(-1)
        P = len(log.pose_ns)
        if P == 0:
            raise DatasetError(f"AV2 log {log.log_id}: the pose table {log.log_dir / _POSES_FILE} is empty")
        idx = np.clip(np.searchsorted(log.pose_ns, t), 0, P - 1)
        exact = log.pose_ns[idx] == t
        R, trans = log.pose_R[idx].copy(), log.pose_t[idx].copy()  # (T, 3, 3), (T, 3)
        if not exact.all():
            from scipy.spatial.transform import Rotation, Slerp

            tq = t[~exact]
            outside = (tq < log.pose_ns[0]) | (tq > log.pose_ns[-1])
            far = np.minimum(np.abs(tq - log.pose_ns[0]), np.abs(tq - log.pose_ns[-1])) > _POSE_EXTRAPOLATION_NS
            if np.any(outside & far):
                bad = int(tq[outside & far][0])
                raise DatasetError(
                    f"AV2 log {log.log_id}: no ego pose near timestamp {bad} ns in "
                    f"{log.log_dir / _POSES_FILE} "
                    f"(poses span {log.pose_ns[0]}..{log.pose_ns[-1]})"
                )
            tc = np.clip(tq, log.pose_ns[0], log.pose_ns[-1])  # end pose just outside the span
            rel = (log.pose_ns - log.pose_ns[0]).astype(np.float64)  # ns offsets: exact in float64
            rq = (tc - log.pose_ns[0]).astype(np.float64)
            rots = Rotation.from_quat(log.pose_quat[:, [1, 2, 3, 0]])  # scipy is scalar-last
            R[~exact] = Slerp(rel, rots)(rq).as_matrix() if P > 1 else rots[np.zeros_like(tc)].as_matrix()
            trans[~exact] = np.stack([np.interp(rq, rel, log.pose_t[:, k]) for k in range(3)], -1)
        return make_transform(R, trans)  # (T, 4, 4)

    def _track_velocities(self, log: _Log, ann) -> np.ndarray:
        """Velocity ``(A, 2)`` of every annotation row, in the ego frame at the row's timestamp.

        Per track, the box centre is moved to the city frame and differenced between the track's
        neighbouring observations: central difference inside the track, forward / backward at its
        ends, NaN for a single observation (or neighbours further than ``max_velocity_gap_s``). The
        city-frame velocity is then rotated into the row's ego frame; all of it vectorised per log.
        """
        import pandas as pd

        ts = ann["timestamp_ns"].to_numpy(np.int64)  # (A,)
        n = len(ts)
        if n == 0:
            return np.zeros((0, 2))
        uts, inv = np.unique(ts, return_inverse=True)
        T = self._poses_at(log, uts)[inv]  # (A, 4, 4) city_from_ego at each row's time
        centre_city = np.einsum("aij,aj->ai", T[:, :3, :3], ann[["tx_m", "ty_m", "tz_m"]].to_numpy(np.float64))
        centre_city += T[:, :3, 3]  # (A, 3)

        track = pd.factorize(ann["track_uuid"])[0]
        order = np.lexsort((ts, track))  # by track, then time
        k, t, c = track[order], ts[order] - ts.min(), centre_city[order]
        dt = np.diff(t)  # (A-1,) ns
        linked = (k[1:] == k[:-1]) & (dt > 0) & (dt <= self.max_velocity_gap_ns)
        i = np.arange(n)
        prev = np.where(np.r_[False, linked], i - 1, i)
        nxt = np.where(np.r_[linked, False], i + 1, i)
        span_s = (t[nxt] - t[prev]) * 1e-9
        with np.errstate(invalid="ignore", divide="ignore"):
            v_city = (c[nxt] - c[prev]) / span_s[:, None]  # (A, 3) city frame, sorted order
        v_city[nxt == prev] = np.nan
        v_ego = np.einsum("aji,aj->ai", T[order, :3, :3], v_city)  # R^T v: into each row's ego frame
        out = np.empty((n, 2))
        out[order] = v_ego[:, :2]
        return out

    # -- records -----------------------------------------------------------------------------------
    def _make_sweep(self, log: _Log, i: int, global_from_ego: np.ndarray | None = None) -> LidarSweep:
        ts = int(log.lidar_ns[i])
        if global_from_ego is None:
            global_from_ego = self._poses_at(log, np.array([ts]))[0]
        return LidarSweep(
            token=f"{log.log_id}:{ts}",
            path=log.loader.get_lidar_fpath(log.log_id, ts),
            ego_from_lidar=np.eye(4),  # AV2 sweeps are stored in the ego frame
            global_from_ego=global_from_ego,
            timestamp=ns_to_us(ts),
            is_key=bool(np.isin(ts, log.key_ns)),
        )

    def _make_frame(self, log: _Log, k: int) -> Frame:
        ts = int(log.key_ns[k])
        i = int(np.searchsorted(log.lidar_ns, ts))
        first = max(0, i - self.n_prev_sweeps)
        sweep_poses = self._poses_at(log, log.lidar_ns[first : i + 1])  # (n_prev + 1, 4, 4)
        lidar = self._make_sweep(log, i, sweep_poses[-1])
        prev = tuple(self._make_sweep(log, j, sweep_poses[j - first]) for j in range(i - 1, first - 1, -1))
        return Frame(
            token=f"{log.log_id}:{ts}",
            scene=log.log_id,
            index=k,
            timestamp=ns_to_us(ts),
            cameras=self._make_cameras(log, ts, lidar.global_from_ego),
            lidar=lidar,
            prev_sweeps=prev,
            boxes=self._make_boxes(log, ts),
        )

    def _make_cameras(self, log: _Log, lidar_ns: int, lidar_pose: np.ndarray) -> tuple[CameraInfo, ...]:
        """The frame's cameras: closest image to the LiDAR time, or a placeholder when there is none."""
        paths, stamps = [], []
        for cam in self.camera_names:
            path = (
                None if cam in log.cams_without_images else log.loader.get_closest_img_fpath(log.log_id, cam, lidar_ns)
            )
            if path is None:
                path = log.log_dir / "sensors" / "cameras" / cam / f"{lidar_ns}.jpg"
                if cam not in log.cams_without_images:
                    self._warn_once(
                        log.log_id,
                        cam,
                        f"AV2 log {log.log_id}: no {cam} image within 25 ms of LiDAR sweep {lidar_ns} "
                        f"(and maybe others of this log); using a placeholder path and the LiDAR pose",
                    )
            paths.append(Path(path))
            stamps.append(int(Path(path).stem))
        stamps_arr = np.array(stamps, dtype=np.int64)
        poses = self._poses_at(log, stamps_arr)  # (C, 4, 4) ego pose at each image's own time
        out = []
        for j, cam in enumerate(self.camera_names):
            pin = log.cameras[cam]
            out.append(
                CameraInfo(
                    name=cam,
                    token=f"{log.log_id}:{cam}:{stamps[j]}",
                    image_path=paths[j],
                    width=int(pin.width_px),
                    height=int(pin.height_px),
                    K=np.array(pin.intrinsics.K, dtype=np.float64),
                    ego_from_cam=np.array(pin.ego_SE3_cam.transform_matrix, dtype=np.float64),
                    global_from_ego=lidar_pose if stamps[j] == lidar_ns else poses[j],
                    timestamp=ns_to_us(stamps[j]),
                )
            )
        return tuple(out)

    def _make_boxes(self, log: _Log, ts: int) -> Boxes:
        """GT boxes at one annotated timestamp, in that sweep's ego frame, in annotation-file order."""
        from av2.structures.cuboid import CuboidList

        rows = log.rows_by_ts.get(ts)
        if log.ann is None or rows is None:
            return Boxes.empty()
        sub = log.ann.iloc[rows]
        boxes = boxes_from_av2_cuboids(CuboidList.from_dataframe(sub))  # (M, 9), velocity NaN
        boxes[:, VX : VY + 1] = log.velocity[rows]
        category = tuple(str(c) for c in sub["category"])
        instance = tuple(str(u) for u in sub["track_uuid"])
        return Boxes(
            boxes=boxes,
            category=category,
            detection_class=tuple(c if c in AV2_CLASSES else None for c in category),
            instance_id=instance,
            num_lidar_pts=sub["num_interior_pts"].to_numpy(np.int64),
            token=tuple(f"{log.log_id}:{ts}:{u}" for u in instance),
        )


def _read_table(read_feather, path: Path, columns: Sequence[str], what: str = "table", absent: str = "file"):
    """A feather table as a DataFrame, with :class:`DatasetError` naming the file when it is unusable.

    ``what`` names the file in the errors (``cannot read AV2 <what> <path>``, ``AV2 <what> <path> lacks columns``),
    ``absent`` in the one for a missing file (``AV2 <absent> not found: <path>``).
    """
    import pyarrow as pa

    if not path.is_file():
        raise DatasetError(f"AV2 {absent} not found: {path}")
    try:
        df = read_feather(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DatasetError(f"cannot read AV2 {what} {path}: {type(e).__name__}: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"AV2 {what} {path} lacks columns {missing} (has {list(df.columns)})")
    return df
