"""Writing the synthetic world as Argoverse 2 sensor logs, readable by av2's own loaders.

:func:`generate_av2` renders the same procedural scenes as :func:`~bevlabels.synthetic.generate.generate`
(:func:`~bevlabels.synthetic.world.build_world`, :class:`~bevlabels.synthetic.render.Renderer`; the
per-scene :class:`_AV2Log` is the nuScenes writer's ``SceneWriter`` with a 10 Hz clock) and writes each
scene as one AV2 log. Same config and seed, same bytes; scenes are rendered by ``map_fn`` (in
parallel if it is), into a staging folder moved into place once complete.

Layout (AV2's)::

    <out>/synth.json                                  config, and per log its scene, draw, t0
    <out>/<train|val>/<log_id>/city_SE3_egovehicle.feather   a pose at every sensor timestamp
    <out>/<train|val>/<log_id>/calibration/egovehicle_SE3_sensor.feather, intrinsics.feather
    <out>/<train|val>/<log_id>/sensors/lidar/<timestamp_ns>.feather     x, y, z (ego frame, float16), ...
    <out>/<train|val>/<log_id>/sensors/cameras/<ring camera>/<timestamp_ns>.jpg
    <out>/<train|val>/<log_id>/annotations.feather    cuboids in the ego frame at every sweep

Mapping from :class:`~bevlabels.synthetic.config.SynthConfig`:

- scenes keep their nuScenes names (``train_scenes`` from the devkit's train split, ...): the
  train ones become logs of ``train/``, the val ones of ``val/``; the log id is a uuid5 of the
  seed and the scene name (:func:`log_id`).
- ``keyframes`` is the number of LiDAR sweeps per log, at 10 Hz, every one annotated (AV2
  annotates every sweep), so a log lasts ``(keyframes - 1) x 0.1`` s and its world is built for
  that duration (a world of the same scene name as the nuScenes writer's, drawn for a shorter
  drive). ``sweeps_per_keyframe`` is not used.
- cameras: always AV2's 7 ring cameras (:mod:`.av2_rig`), one image each per sweep at its own
  firing time; ``image_width`` sets their scale, ``image_height`` and ``cameras`` (nuScenes
  channels) are not used.
- the LiDAR is the preset's, mounted at AV2's ``up_lidar``; its sweep is written in the ego frame
  as AV2 stores it (rendered at one instant, so ``offset_ns`` is 0 for every point).
- ``annotation_range``, ``traffic_density``, ``jpeg_quality`` as for nuScenes.

Annotations. An agent is annotated at the sweeps where it is within ``annotation_range`` (and
between two such, contiguous), as the nuScenes writer does; the ten classes map to AV2
categories (:data:`AV2_CATEGORY`). ``num_interior_pts`` is the number of points of that sweep
inside the box, counted on the points as written (float16): like the renderer, which drops
returns within 2 mm of an annotated box's boundary, the writer drops the few points that the
float16 rounding moves within 2 mm of one, so any consumer counts the same points in every box.

Ten-class coverage. As in the nuScenes writer, a drawn world in which some class has no
annotation with LiDAR points within the nuScenes devkit's evaluation range (stricter than AV2's
150 m) at any sweep is re-drawn (``attempt`` + 1). The world places its guaranteed content along
the ego's drive, so a short 10 Hz log sees it close by; ``synth.json`` records each log's draw.

No ``map/`` folder is written: av2's ``AV2SensorDataLoader`` reads no map for sensor data (only
``get_city_name`` and the map API do), so evaluations of this world run without ROI filtering.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bevlabels.datasets.av2 import AV2_CLASSES, RING_CAMERAS
from bevlabels.geometry import invert_transform, transform_points, wrap_angle, yaw_to_quat
from bevlabels.synthetic.av2_rig import AV2_RIG, CAMERA_OFFSET_NS, LIDAR_NAME, LIDARS, ring_camera
from bevlabels.synthetic.config import SynthConfig
from bevlabels.synthetic.generate import (
    META_FILE,
    SceneWriter,
    camera_rays,
    finish_stage,
    lidar_points_in,
    read_meta,
    render_jobs,
    scene_number,
    start_stage,
)
from bevlabels.synthetic.render import near_box_boundary
from bevlabels.synthetic.world import build_world

FORMAT = "av2"
SWEEP_S = 0.1  # AV2's LiDAR: 10 Hz
SWEEP_NS = 100_000_000
#: AV2 split folder of each devkit split the scene names come from
AV2_SPLIT = {"mini_train": "train", "train": "train", "mini_val": "val", "val": "val"}
#: what generate_av2() writes at the top of the output folder (and removes first with overwrite=True)
OWN_PATHS_AV2 = ("train", "val", META_FILE)
#: the world's ten classes as AV2 categories (all among the 26 scored ones)
AV2_CATEGORY = {
    "car": "REGULAR_VEHICLE",
    "truck": "BOX_TRUCK",
    "bus": "BUS",
    "trailer": "VEHICULAR_TRAILER",
    "construction_vehicle": "LARGE_VEHICLE",
    "pedestrian": "PEDESTRIAN",
    "motorcycle": "MOTORCYCLE",
    "bicycle": "BICYCLE",
    "traffic_cone": "CONSTRUCTION_CONE",
    "barrier": "CONSTRUCTION_BARREL",
}
assert set(AV2_CATEGORY.values()) <= set(AV2_CLASSES)
_NAMESPACE = uuid.UUID("6d1f0f5e-8a2b-5c3e-9b7a-2f4e1c0d9a11")  # fixed: log ids and track uuids

# column names and types of AV2's tables (as in the real sensor-dataset logs)
_POSE_SCHEMA = (("timestamp_ns", "int64"),) + tuple((c, "float64") for c in ("qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"))  # fmt: skip
_EXTRINSICS_SCHEMA = (("sensor_name", "string"),) + _POSE_SCHEMA[1:]
_INTRINSICS_SCHEMA = (("sensor_name", "string"),) + tuple((c, "float64") for c in ("fx_px", "fy_px", "cx_px", "cy_px", "k1", "k2", "k3")) + (("height_px", "uint16"), ("width_px", "uint16"))  # fmt: skip
_LIDAR_SCHEMA = (("x", "float16"), ("y", "float16"), ("z", "float16"), ("intensity", "uint8"), ("laser_number", "uint8"),
                 ("offset_ns", "int32"))  # fmt: skip
_ANNOTATION_SCHEMA = (("timestamp_ns", "int64"), ("track_uuid", "string"), ("category", "string"),
                      *((c, "float64") for c in ("length_m", "width_m", "height_m", "qw", "qx", "qy", "qz", "tx_m",
                                                  "ty_m", "tz_m")), ("num_interior_pts", "int64"))  # fmt: skip


def log_id(seed: int, scene: str) -> str:
    """The AV2 log id of a scene: a uuid5 of the seed and the scene name (deterministic)."""
    return str(uuid.uuid5(_NAMESPACE, f"bevlabels.synthetic:{seed}:{scene}"))


def track_uuid(seed: int, scene: str, agent: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"bevlabels.synthetic:{seed}:{scene}:agent{agent}"))


def _write_feather(path: Path, columns: dict, schema: tuple[tuple[str, str], ...]) -> None:
    """One AV2 table: the columns in ``schema`` order and types (lz4, as pyarrow writes by default)."""
    import pyarrow as pa
    import pyarrow.feather as pf

    fields = [pa.field(name, pa.from_numpy_dtype(np.dtype(t)) if t != "string" else pa.string()) for name, t in schema]
    table = pa.table([pa.array(columns[f.name], type=f.type) for f in fields], schema=pa.schema(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    pf.write_feather(table, path, compression="lz4")


@dataclass
class LogResult:
    """What :func:`generate_av2` records about one log."""

    name: str  # the scene name
    split: str  # train or val
    log_id: str
    attempt: int
    class_counts: dict[str, int]
    t0_ns: int  # timestamp of the first sweep = world time 0
    sweeps: int
    annotations: int


class _AV2Log(SceneWriter):
    """Renders and writes one scene as an AV2 log: the nuScenes writer's scene on a 10 Hz clock.

    Every sweep is a keyframe (``S = 1``, ``key_dt = 0.1 s``); sweeps are kept in the ego frame
    as written (float16) so that box point counts are made on exactly those points.
    """

    def __init__(self, cfg: SynthConfig, name: str, split: str, out: Path):
        super().__init__(cfg, name, split, out)
        self.key_dt = SWEEP_S
        self.S = 1
        self.n_sweeps = cfg.keyframes
        self.sweep_dt = SWEEP_S
        self.ego_from_lidar = AV2_RIG[LIDAR_NAME].ego_from_sensor
        self.av2_split = AV2_SPLIT[split]
        self.log_id = log_id(cfg.seed, name)
        self.rel = f"{self.av2_split}/{self.log_id}"
        self.t0_ns = self.t0_us * 1000

    def ts(self, k: int) -> int:
        """Timestamp (ns) of sweep ``k``."""
        return self.t0_ns + k * SWEEP_NS

    def render_sweep(self, j: int) -> np.ndarray:
        """Sweep ``j`` as written: ``(N, 5)`` float32 ``x, y, z`` (ego frame, float16 values), intensity, ring."""
        pts = super().render_sweep(j)  # LiDAR frame
        t = self.key_time(j)
        xyz = transform_points(self.ego_from_lidar, pts[:, :3].astype(np.float64)).astype(np.float16)
        out = np.concatenate([xyz.astype(np.float32), pts[:, 3:]], 1)
        boxes = self.world.boxes(t, np.nonzero(self.annotated[j])[0])
        if len(boxes) and len(out):  # what float16 moved onto a box boundary goes, as the renderer's own
            drop = near_box_boundary(
                transform_points(self.world.global_from_ego(t), out[:, :3].astype(np.float64)), boxes
            )
            out = out[~drop]
        return out

    def count_points(self) -> None:
        self.boxes_k, self.npts_k = {}, {}
        for k in range(self.cfg.keyframes):
            t = self.key_time(k)
            self.boxes_k[k] = self.world.boxes(t, np.nonzero(self.annotated[k])[0])
            self.npts_k[k] = lidar_points_in(self.boxes_k[k], self.key_sweeps[k], self.world.global_from_ego(t))

    # -- everything ------------------------------------------------------------------------------------
    def run(self) -> LogResult:
        cfg = self.cfg
        self.draw()
        w = self.world
        log_dir = self.out / self.rel
        pose_ts: dict[int, float] = {}  # timestamp_ns -> world time of every sensor reading

        # LiDAR sweeps and, per sweep, one image per ring camera at its own firing time
        for k in range(cfg.keyframes):
            ts = self.ts(k)
            pose_ts[ts] = self.key_time(k)
            pts = self.key_sweeps[k]
            n = len(pts)
            _write_feather(log_dir / "sensors" / "lidar" / f"{ts}.feather",
                           {"x": pts[:, 0].astype(np.float16), "y": pts[:, 1].astype(np.float16),
                            "z": pts[:, 2].astype(np.float16), "intensity": pts[:, 3].astype(np.uint8),
                            "laser_number": pts[:, 4].astype(np.uint8), "offset_ns": np.zeros(n, np.int32)},
                           _LIDAR_SCHEMA)  # fmt: skip
            for cam in RING_CAMERAS:
                K, width, height = ring_camera(cam, cfg.image_width)
                ts_cam = ts + CAMERA_OFFSET_NS[cam]
                t = self.key_time(k) + CAMERA_OFFSET_NS[cam] * 1e-9
                pose_ts[ts_cam] = t
                g_from_cam = w.global_from_ego(t) @ AV2_RIG[cam].ego_from_sensor
                rgb, _, _ = self.renderer.camera(g_from_cam, camera_rays(K, width, height), width, height, t)
                self.write_jpeg(f"{self.rel}/sensors/cameras/{cam}/{ts_cam}.jpg", rgb)

        # ego poses: every sensor timestamp (av2 looks them up exactly), in time order
        stamps = np.array(sorted(pose_ts), np.int64)
        x, y, yaw = w.ego_pose(np.array([pose_ts[int(s)] for s in stamps]))
        q = yaw_to_quat(np.asarray(yaw, np.float64))  # (P, 4) w, x, y, z
        _write_feather(log_dir / "city_SE3_egovehicle.feather",
                       {"timestamp_ns": stamps, "qw": q[:, 0], "qx": q[:, 1], "qy": q[:, 2], "qz": q[:, 3],
                        "tx_m": np.asarray(x, np.float64), "ty_m": np.asarray(y, np.float64),
                        "tz_m": np.zeros(len(stamps))}, _POSE_SCHEMA)  # fmt: skip

        # calibration: the ring cameras and the two LiDARs (av2's Sweep reads both; only up_lidar is rendered)
        sensors = (*RING_CAMERAS, *LIDARS)
        rot = np.array([AV2_RIG[s].rotation for s in sensors])
        tr = np.array([AV2_RIG[s].translation for s in sensors])
        _write_feather(log_dir / "calibration" / "egovehicle_SE3_sensor.feather",
                       {"sensor_name": list(sensors), "qw": rot[:, 0], "qx": rot[:, 1], "qy": rot[:, 2], "qz": rot[:, 3],
                        "tx_m": tr[:, 0], "ty_m": tr[:, 1], "tz_m": tr[:, 2]}, _EXTRINSICS_SCHEMA)  # fmt: skip
        cams = [ring_camera(c, cfg.image_width) for c in RING_CAMERAS]
        zeros = np.zeros(len(cams))
        _write_feather(log_dir / "calibration" / "intrinsics.feather",
                       {"sensor_name": list(RING_CAMERAS), "fx_px": [K[0, 0] for K, _, _ in cams],
                        "fy_px": [K[1, 1] for K, _, _ in cams], "cx_px": [K[0, 2] for K, _, _ in cams],
                        "cy_px": [K[1, 2] for K, _, _ in cams], "k1": zeros, "k2": zeros, "k3": zeros,
                        "height_px": np.array([h for _, _, h in cams], np.uint16),
                        "width_px": np.array([wd for _, wd, _ in cams], np.uint16)}, _INTRINSICS_SCHEMA)  # fmt: skip

        # annotations: every sweep, boxes in its ego frame, in agent order
        cols: dict[str, list] = {name: [] for name, _ in _ANNOTATION_SCHEMA}
        for k in range(cfg.keyframes):
            idx = np.nonzero(self.annotated[k])[0]
            if len(idx) == 0:
                continue
            t = self.key_time(k)
            b = self.boxes_k[k]
            centre = transform_points(invert_transform(w.global_from_ego(t)), b[:, :3])  # (M, 3) ego frame
            yaw_e = wrap_angle(b[:, 6] - float(w.ego_pose(t)[2]))
            q = yaw_to_quat(np.asarray(yaw_e, np.float64))  # (M, 4)
            cols["timestamp_ns"] += [self.ts(k)] * len(idx)
            cols["track_uuid"] += [track_uuid(cfg.seed, self.name, int(i)) for i in idx]
            cols["category"] += [AV2_CATEGORY[w.agents[i].cls] for i in idx]
            for c, v in (("length_m", b[:, 3]), ("width_m", b[:, 4]), ("height_m", b[:, 5]), ("qw", q[:, 0]),
                         ("qx", q[:, 1]), ("qy", q[:, 2]), ("qz", q[:, 3]), ("tx_m", centre[:, 0]),
                         ("ty_m", centre[:, 1]), ("tz_m", centre[:, 2])):  # fmt: skip
                cols[c] += np.asarray(v, np.float64).tolist()
            cols["num_interior_pts"] += np.asarray(self.npts_k[k], np.int64).tolist()
        cols["timestamp_ns"] = np.array(cols["timestamp_ns"], np.int64)
        cols["num_interior_pts"] = np.array(cols["num_interior_pts"], np.int64)
        _write_feather(log_dir / "annotations.feather", cols, _ANNOTATION_SCHEMA)
        return LogResult(self.name, self.av2_split, self.log_id, self.attempt, self.class_counts, self.t0_ns,
                         cfg.keyframes, len(cols["track_uuid"]))  # fmt: skip


def generate_log(cfg: SynthConfig, name: str, split: str, out: str | Path) -> LogResult:
    """Render one scene as an AV2 log under ``out/<train|val>/<log_id>``: a pure function of its inputs."""
    return _AV2Log(cfg, name, split, Path(out)).run()


def _log_job(job) -> LogResult:
    return generate_log(*job)


def generate_av2(cfg: SynthConfig, out: str | Path, overwrite: bool = False,
                 map_fn: Callable[[Callable, Iterable], Iterable] | None = None,
                 log: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Write the synthetic world ``cfg`` describes as AV2 sensor logs into ``out``; returns ``out``.

    As :func:`~bevlabels.synthetic.generate.generate`: ``map_fn(f, items)`` renders the scenes
    (default: in turn), everything goes to a staging folder first and is moved into ``out`` once
    complete; with ``overwrite`` only :data:`OWN_PATHS_AV2` are replaced. Same config, same bytes.
    """
    out, stage, jobs = start_stage(cfg, out, overwrite, OWN_PATHS_AV2)
    log(f"synthetic world '{cfg.name}' (seed {cfg.seed}) as AV2: {len(jobs)} logs x {cfg.keyframes} sweeps -> {out}")
    results = render_jobs(_log_job, jobs, map_fn)
    scenes = [
        {
            "name": r.name,
            "split": r.split,
            "log_id": r.log_id,
            "draw": r.attempt,
            "t0_ns": r.t0_ns,
            "annotations_in_range_with_points": r.class_counts,
        }
        for r in results
    ]
    finish_stage(stage, out, OWN_PATHS_AV2, cfg, scenes, format=FORMAT)
    log(f"wrote {len(results)} logs, {sum(r.sweeps for r in results)} sweeps, "
        f"{sum(r.annotations for r in results)} annotations to {out}")  # fmt: skip
    return out


def is_generated(out: str | Path) -> bool:
    """Whether ``out`` holds AV2 logs (a ``<split>/<log_id>/city_SE3_egovehicle.feather``)."""
    return any(Path(out).glob("*/*/city_SE3_egovehicle.feather"))


def is_generated_for(root: str | Path, dataset_cfg=None) -> bool:
    """:func:`is_generated`, with the signature :class:`~bevlabels.synthetic.formats.Writer` wants."""
    return is_generated(root)


def log_meta(out: str | Path, log: str) -> dict:
    """The ``synth.json`` record of one log (scene name, split, draw, ``t0_ns``) of a generated AV2 world."""
    meta = read_meta(out)
    if meta is None or meta.get("format") != FORMAT:
        raise FileNotFoundError(f"{Path(out) / META_FILE} not found or not an AV2 world: {out}")
    by_id = {s["log_id"]: s for s in meta["scenes"]}
    if log not in by_id:
        raise KeyError(f"no log {log!r} in {out}; logs: {sorted(by_id)}")
    return by_id[log]


def load_world(out: str | Path, log: str):
    """The :class:`~bevlabels.synthetic.world.World` a generated AV2 log was rendered from (for checks).

    World time 0 is the log's first sweep, ``log_meta(out, log)["t0_ns"]``.
    """
    rec = log_meta(out, log)
    cfg = SynthConfig.from_dict(read_meta(out)["config"])
    return build_world(cfg.seed, scene_number(rec["name"]), (cfg.keyframes - 1) * SWEEP_S, cfg.traffic_density,
                       rec["draw"])  # fmt: skip
