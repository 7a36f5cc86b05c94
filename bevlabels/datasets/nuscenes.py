"""nuScenes through the official nuscenes-devkit, as :class:`~bevlabels.datasets.base.DriveDataset` records.

The devkit is imported lazily in :meth:`NuScenesDataset.__init__`, so importing this module does not
need it. Everything nuScenes-specific is converted here, and only here:

- **Boxes are stored in the global frame** in ``sample_annotation``; a :class:`Frame` wants them in
  the keyframe's ego frame (the ego pose of the LIDAR_TOP keyframe sweep). Centres and velocities
  are moved with :func:`bevlabels.geometry.transform_boxes` by ``ego_from_global``. The yaw is the
  heading of the box's full 3D rotation expressed in the ego frame (``atan2(R[1,0], R[0,0])``),
  i.e. the devkit's ``nuscenes.eval.common.utils.quaternion_yaw`` of the box moved to ego the
  devkit's way (not pyquaternion's ``yaw_pitch_roll[0]``, which differs for tilted rotations).
  Adding the ego pose's heading to the global yaw instead (what ``transform_boxes`` does, exact
  only for level frames) is off by up to ~5e-4 rad on real data: ego poses pitch and roll by
  1-2 degrees and boxes are tilted too.
- **Size is ``wlh``** (width, length, height) in the devkit; our layout is ``L, W, H``
  (:func:`bevlabels.geometry.boxes_from_nuscenes` swaps them).
- **Boxes stay upright.** Annotated boxes are slightly tilted in the ego frame (ego pitch/roll,
  ~0.02-0.04 rad); our layout keeps only the heading, so corners of tall or long boxes differ
  from the devkit's ``Box.corners()`` by centimetres (up to 0.13 m on the real demo keyframe).
- **Every sensor has its own ego pose.** Cameras and LiDAR fire at different times (the six
  cameras fire over the ~45 ms before the LiDAR keyframe timestamp), and each ``sample_data`` points to the ego pose at
  its own timestamp. Each :class:`CameraInfo` and :class:`LidarSweep` keeps its own
  ``global_from_ego``; :class:`Frame` chains them through the global frame as the devkit does.
- **Velocities are not annotated.** They come from ``NuScenes.box_velocity``: a finite
  difference of the neighbouring annotations of the same instance, in the global frame, NaN when
  the instance is annotated once or the neighbours are too far apart in time. They are rotated
  (not ego-motion compensated) into the keyframe's ego frame: over-ground velocity in ego axes.
- **Points** are ``.pcd.bin`` files of 5 float32 per point: x, y, z, intensity, ring index.
- **Sweeps.** LIDAR_TOP runs at 20 Hz and is annotated at 2 Hz; non-key sweeps are
  ``sample_data`` records chained by ``prev``/``next`` and tied to a sample only by
  ``sample_token``, which is how we keep a walk inside one scene.

Shapes: M boxes, N points.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bevlabels.datasets.base import (
    Boxes,
    CameraInfo,
    DatasetError,
    DriveDataset,
    Frame,
    LidarSweep,
    read_float32_points,
)
from bevlabels.geometry import (
    YAW,
    boxes_from_nuscenes,
    invert_transform,
    quat_to_rotmat,
    rotmat_to_yaw,
    transform_boxes,
    transform_from_pose,
)

#: The tables every nuScenes version folder holds, as ``<name>.json``.
TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
#: Camera channels in the order a :class:`Frame` lists them (the usual nuScenes 6-camera order).
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"


def _devkit_context(e: BaseException, table_dir: Path) -> str:
    """Which table file the devkit was on when ``e`` was raised, from its frames; "" if unknown.

    Names the file ``__load_table__`` was reading, or the table and token a lookup (``getind``)
    did not find (a record pointing to a token that its table lacks).
    """
    tb, where = e.__traceback__, ""
    while tb is not None:
        code, local = tb.tb_frame.f_code.co_name, tb.tb_frame.f_locals
        table = table_dir / f"{local.get('table_name')}.json"
        if code == "__load_table__" and "table_name" in local:
            where = f" (while reading {table})"
        elif code == "getind" and "table_name" in local:
            where = f" (token {local.get('token')!r} not found in {table})"
        tb = tb.tb_next
    return where


@contextmanager
def _dangling_tokens_named(table_dir: Path, what: str):
    """Re-raise a devkit lookup's ``KeyError`` for a token missing from a table as a :class:`DatasetError`."""
    try:
        yield
    except KeyError as e:
        where = _devkit_context(e, table_dir)
        if not where.startswith(" (token"):
            raise
        raise DatasetError(f"nuScenes {what}: a record refers to a missing token{where}") from e


def check_layout(root: Path, version: str) -> Path:
    """The table folder ``root / version``, after checking that it and its 13 table JSONs exist.

    Raises :class:`DatasetError` naming the missing folder or table files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"nuScenes root not found: {root} (expected a folder holding {version}/, samples/, ...)")
    table_dir = root / version
    if not table_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise DatasetError(
            f"nuScenes version folder not found: {table_dir} (version={version!r}; version folders in "
            f"{root}: {found or 'none'})"
        )
    missing = [f"{t}.json" for t in TABLES if not (table_dir / f"{t}.json").is_file()]
    if missing:
        raise DatasetError(f"nuScenes table(s) missing in {table_dir}: {', '.join(missing)}")
    return table_dir


#: the ten detection classes of the devkit's DetectionEval, in its order (models index them so)
NUSCENES_CLASSES = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)

#: the devkit's ``(train, val)`` split names (``nuscenes.utils.splits``) of each nuScenes version
VERSION_SPLITS = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test", "test"),
}


def in_split(names: list[str], split: str | None) -> list[str]:
    """``names`` (in their order) that belong to the devkit split ``split`` (all of them for None); an unknown
    split is a ValueError naming the known ones."""
    if split is None:
        return list(names)
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown nuScenes split {split!r}; the devkit knows {sorted(splits)}")
    wanted = set(splits[split])
    return [n for n in names if n in wanted]


class NuScenesDataset(DriveDataset):
    """nuScenes (any version: mini, trainval, test, or a dataset written in its format).

    Args:
        root: the dataset root, holding ``<version>/`` (the tables), ``samples/`` and ``sweeps/``.
        version: the table folder, e.g. ``v1.0-trainval`` or ``v1.0-mini``.
        n_prev_sweeps: how many earlier LIDAR_TOP sweeps each :class:`Frame` lists in ``prev_sweeps``.
        verbose: let the devkit print its loading statistics.

    Keyframes and sweeps are built on first request per scene and cached.
    """

    name = "nuscenes"
    classes = NUSCENES_CLASSES
    evaluation = "nuscenes"  # scored by the nuScenes devkit's DetectionEval

    def __init__(
        self,
        root: str | Path,
        version: str = "v1.0-trainval",
        n_prev_sweeps: int = 10,
        verbose: bool = False,
    ):
        self.root = Path(root)
        self.version = version
        if n_prev_sweeps < 0:
            raise ValueError(f"n_prev_sweeps must be >= 0; got {n_prev_sweeps}")
        self.n_prev_sweeps = int(n_prev_sweeps)
        check_layout(self.root, version)

        from nuscenes.eval.detection.utils import category_to_detection_name
        from nuscenes.nuscenes import NuScenes

        try:
            self.nusc = NuScenes(version=version, dataroot=str(self.root), verbose=verbose)
        except Exception as e:  # the devkit asserts, KeyErrors on dangling tokens, JSON errors, ...
            where = _devkit_context(e, self.root / version)
            raise DatasetError(
                f"nuscenes-devkit could not load version {version!r} from {self.root}{where}: {type(e).__name__}: {e}"
            ) from e
        self._detection_name = category_to_detection_name
        self._scene_by_name = {s["name"]: s for s in self.nusc.scene}
        self._keyframes: dict[str, list[Frame]] = {}
        self._sweeps: dict[str, list[LidarSweep]] = {}
        self._frame_by_token: dict[str, Frame] = {}

    # -- scenes -----------------------------------------------------------------------------------
    def scenes(self, split: str | None = None) -> list[str]:
        """Scene names in table order, optionally only those of a devkit split (``train``, ``mini_val``)."""
        return in_split([s["name"] for s in self.nusc.scene], split)

    def _scene(self, scene: str) -> dict:
        try:
            return self._scene_by_name[scene]
        except KeyError:
            raise KeyError(f"no scene {scene!r} in nuScenes {self.version} at {self.root}") from None

    def _in_scene(self, sd: dict, scene_token: str) -> bool:
        """Whether a sample_data record belongs to the scene (through its ``sample_token``)."""
        return self.nusc.get("sample", sd["sample_token"])["scene_token"] == scene_token

    # -- keyframes --------------------------------------------------------------------------------
    def keyframes(self, scene: str) -> list[Frame]:
        """The scene's keyframes (one per ``sample``) in time order, boxes in each keyframe's ego frame."""
        if scene not in self._keyframes:
            rec = self._scene(scene)
            with _dangling_tokens_named(self.root / self.version, f"keyframes of scene {scene}"):
                frames = self._make_frames(rec)
            if frames and not any(len(f.boxes) for f in frames):
                warnings.warn(
                    f"nuScenes scene {scene} has no annotations in {self.root / self.version}: its "
                    f"{len(frames)} keyframe(s) have empty boxes (a test split?)",
                    stacklevel=2,
                )
            self._keyframes[scene] = frames
            self._frame_by_token.update((f.token, f) for f in frames)
        return list(self._keyframes[scene])

    def _make_frames(self, rec: dict) -> list[Frame]:
        """The keyframes of a ``scene`` record, following ``first_sample_token`` and ``next``."""
        scene = rec["name"]
        if not rec["first_sample_token"]:
            raise DatasetError(f"scene {scene} ({rec['token']}) has an empty field first_sample_token")
        frames, token = [], rec["first_sample_token"]
        while token:
            sample = self.nusc.get("sample", token)
            if sample["scene_token"] != rec["token"]:  # a next link leaving the scene
                break
            frames.append(self._make_frame(sample, scene, len(frames)))
            token = sample["next"]
        return frames

    def frame(self, token: str) -> Frame:
        """The keyframe whose sample token is ``token`` (builds and caches its scene's keyframes)."""
        if token not in self._frame_by_token:
            try:
                sample = self.nusc.get("sample", token)
            except KeyError:
                raise KeyError(f"no keyframe with token {token!r} in nuScenes {self.version} at {self.root}") from None
            self.keyframes(self.nusc.get("scene", sample["scene_token"])["name"])
        return self._frame_by_token[token]

    def _make_frame(self, sample: dict, scene: str, index: int) -> Frame:
        """One :class:`Frame` from a ``sample`` record."""
        lidar_token = sample["data"].get(LIDAR)
        if lidar_token is None:
            raise DatasetError(
                f"sample {sample['token']} of scene {scene} has no {LIDAR} keyframe in sample_data.json "
                f"(field data[{LIDAR!r}], is_key_frame=true)"
            )
        lidar_sd = self.nusc.get("sample_data", lidar_token)
        lidar = self._sweep(lidar_sd)
        cameras = tuple(
            self._camera(self.nusc.get("sample_data", sample["data"][c])) for c in CAMERAS if c in sample["data"]
        )

        prev, sd = [], lidar_sd
        while len(prev) < self.n_prev_sweeps and sd["prev"]:
            sd = self.nusc.get("sample_data", sd["prev"])
            if not self._in_scene(sd, sample["scene_token"]):
                break
            prev.append(self._sweep(sd))

        return Frame(
            token=sample["token"],
            scene=scene,
            index=index,
            timestamp=int(lidar_sd["timestamp"]),
            cameras=cameras,
            lidar=lidar,
            prev_sweeps=tuple(prev),
            boxes=self._boxes(sample["anns"], lidar.global_from_ego),
        )

    def _sweep(self, sd: dict) -> LidarSweep:
        """A :class:`LidarSweep` from a LiDAR ``sample_data`` record."""
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        return LidarSweep(
            token=sd["token"],
            path=self.root / sd["filename"],
            ego_from_lidar=transform_from_pose(cs["translation"], cs["rotation"]),
            global_from_ego=transform_from_pose(pose["translation"], pose["rotation"]),
            timestamp=int(sd["timestamp"]),
            is_key=bool(sd["is_key_frame"]),
        )

    def _camera(self, sd: dict) -> CameraInfo:
        """A :class:`CameraInfo` from a camera ``sample_data`` record; warns when its image is missing."""
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if K.shape != (3, 3):
            raise DatasetError(
                f"calibrated_sensor {cs['token']} ({sd['channel']}): field camera_intrinsic must be 3x3; "
                f"got shape {K.shape}"
            )
        cam = CameraInfo(
            name=sd["channel"],
            token=sd["token"],
            image_path=self.root / sd["filename"],
            width=int(sd["width"]),
            height=int(sd["height"]),
            K=K,
            ego_from_cam=transform_from_pose(cs["translation"], cs["rotation"]),
            global_from_ego=transform_from_pose(pose["translation"], pose["rotation"]),
            timestamp=int(sd["timestamp"]),
        )
        if not cam.has_image:
            warnings.warn(
                f"nuScenes image not found: {cam.image_path} ({cam.name}, sample_data {cam.token})",
                stacklevel=2,
            )
        return cam

    def _boxes(self, ann_tokens: list[str], global_from_ego: np.ndarray) -> Boxes:
        """The annotations as :class:`Boxes` in the ego frame that ``global_from_ego`` (4, 4) places."""
        if not ann_tokens:
            return Boxes.empty()
        nusc = self.nusc
        nboxes = []
        for t in ann_tokens:  # one devkit Box per annotation; a keyframe has at most a few hundred
            b = nusc.get_box(t)
            b.velocity = nusc.box_velocity(t)  # (3,) global, NaN when not estimable
            nboxes.append(b)
        ego_from_global = invert_transform(global_from_ego)
        boxes_global = boxes_from_nuscenes(nboxes)  # (M, 9), wlh -> L, W, H
        boxes = transform_boxes(ego_from_global, boxes_global)  # (M, 9) centres and velocities in ego
        # Heading of the full (tilted) rotation in ego, as the devkit's quaternion_yaw; see module doc.
        R_global = quat_to_rotmat(np.stack([b.orientation.elements for b in nboxes]))  # (M, 3, 3)
        boxes[:, YAW] = rotmat_to_yaw(ego_from_global[:3, :3] @ R_global)

        anns = [nusc.get("sample_annotation", t) for t in ann_tokens]
        attribute = tuple(
            nusc.get("attribute", a["attribute_tokens"][0])["name"] if a["attribute_tokens"] else None for a in anns
        )
        return Boxes(
            boxes=boxes,
            category=tuple(a["category_name"] for a in anns),
            detection_class=tuple(self._detection_name(a["category_name"]) for a in anns),
            instance_id=tuple(a["instance_token"] for a in anns),
            num_lidar_pts=np.array([a["num_lidar_pts"] for a in anns], dtype=np.int64),
            token=tuple(ann_tokens),
            attribute=attribute,
        )

    # -- sweeps and points ------------------------------------------------------------------------
    def sweeps(self, scene: str) -> list[LidarSweep]:
        """Every LIDAR_TOP sweep of the scene, key and non-key, in time order."""
        if scene not in self._sweeps:
            rec = self._scene(scene)
            with _dangling_tokens_named(self.root / self.version, f"sweeps of scene {scene}"):
                self._sweeps[scene] = self._make_sweeps(rec)
        return list(self._sweeps[scene])

    def _make_sweeps(self, rec: dict) -> list[LidarSweep]:
        """The LIDAR_TOP sweeps of a ``scene`` record: back from its first keyframe, then forward."""
        first = self.nusc.get("sample", rec["first_sample_token"])
        if LIDAR not in first["data"]:
            raise DatasetError(f"first sample {first['token']} of scene {rec['name']} has no {LIDAR} in field data")
        start = self.nusc.get("sample_data", first["data"][LIDAR])
        while start["prev"]:  # back to the scene's very first sweep
            prev = self.nusc.get("sample_data", start["prev"])
            if not self._in_scene(prev, rec["token"]):
                break
            start = prev
        out, sd = [self._sweep(start)], start
        while sd["next"]:
            sd = self.nusc.get("sample_data", sd["next"])
            if not self._in_scene(sd, rec["token"]):
                break
            out.append(self._sweep(sd))
        return out

    def load_points(self, sweep: LidarSweep) -> np.ndarray:
        """``(N, 5)`` float32 points of a sweep in its LiDAR frame: x, y, z, intensity, ring."""
        return read_float32_points(sweep.path, columns=5)
