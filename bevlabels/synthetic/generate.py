"""Writing a synthetic nuScenes dataset: one pure function per scene, then the tables.

:func:`generate` checks the config and the output folder before any work, renders every scene
(``map_fn`` lets a caller run :func:`generate_scene` in parallel, e.g. with dask; the bytes do not
depend on it), then writes the 13 tables to ``<out>/<version>/`` and ``<out>/synth.json``.

Part of a world. ``generate(..., scenes=[...])`` renders only those scenes: a *partial* world, an ordinary
nuScenes dataset of fewer scenes whose ``synth.json`` lists the scenes it holds beside the config that has
more (:func:`is_partial`). It is never taken for the whole world (:func:`has_world`): a later ``generate``
of the same config renders only the scenes it lacks (:func:`missing_scenes`) and writes the tables of all,
byte for byte those of a world generated at once. This is how ``python -m pipelines.labels limit_scenes=n``
renders only the scenes it labels.

Layout on disk (nuScenes'):
``samples/LIDAR_TOP/*.pcd.bin`` keyframe sweeps, ``sweeps/LIDAR_TOP/*.pcd.bin`` the sweeps between
them (non-key ``sample_data`` chained by prev/next, tied to the next keyframe's sample),
``samples/CAM_*/*.jpg`` one image per camera per keyframe, ``maps/<token>.png`` a semantic prior
(road and sidewalks, 0.1 m per pixel) per scene, ``v1.0-*/*.json`` the tables.

Annotations. An agent is annotated at the keyframes where it is within ``annotation_range`` of
the ego (and at any keyframe between two such, so instances stay contiguous). ``num_lidar_pts``
is the number of points of the keyframe sweep inside the box; ``visibility_token`` bins the
fraction of the object's pixels that are visible in the six images
(:func:`render.visible_fractions`); attributes follow the agent's speed and kind.

Every scene holds each of the ten classes with LiDAR points within the devkit's evaluation range
at some keyframe: a drawn world that misses one is re-drawn (``attempt`` + 1, deterministic).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bevlabels.datasets.nuscenes import in_split
from bevlabels.geometry import VX, VY, points_in_boxes, transform_points, yaw_to_quat
from bevlabels.synthetic import catalog, tables
from bevlabels.synthetic.config import SynthConfig, SynthConfigError
from bevlabels.synthetic.render import Renderer, visible_fractions
from bevlabels.synthetic.rig import LIDAR_NAME, RIG, camera_intrinsics
from bevlabels.synthetic.world import CROSS_SIDEWALK, KEY_DT, SIDEWALK_OUTER, build_world

MAX_ATTEMPTS = 8
#: first timestamp of scene number n: 2018-08-01 plus n * 1000 s (microseconds)
T0_US = 1_533_081_600_000_000
GENERATOR = "bevlabels.synthetic v1"
META_FILE = "synth.json"
#: what generate() writes at the top of the output folder (and removes first with overwrite=True)
OWN_PATHS = ("samples", "sweeps", "maps", "v1.0-mini", "v1.0-trainval", META_FILE, "oracle")
#: the oracle label maps (``oracle/<CAM>/<image stem>.png``, see :func:`oracle_path`): a pixel's semantic class
#: (these, then the ten object classes) and instance; the devkit never reads the folder
ORACLE_DIR = "oracle"
#: the folders of the scenes' sensor files (each file named after its scene's log, a map after its token): what a
#: partial world extended by more scenes keeps (:func:`generate`)
SCENE_DIRS = ("samples", "sweeps", "maps", ORACLE_DIR)
ORACLE_STUFF = ("sky", "ground", "scenery")
ORACLE_CLASSES = ORACLE_STUFF + catalog.CLASSES
#: label = class * ORACLE_INSTANCE_BASE + (agent index + 1), 0 in the low part for no instance (16-bit PNG)
ORACLE_INSTANCE_BASE = 2048


class OutputDirError(FileExistsError):
    """The output folder is not empty and overwrite was not asked for."""


@dataclass
class SceneResult:
    """The table rows of one scene, and a few numbers about it."""

    name: str
    split: str
    rows: dict[str, list[dict]]
    attempt: int
    class_counts: dict[str, int]  # annotations with LiDAR points within evaluation range, per class


def scene_number(name: str) -> int:
    return int(name.split("-")[1])


def lidar_points_in(boxes: np.ndarray, points_lidar: np.ndarray, global_from_lidar: np.ndarray) -> np.ndarray:
    """``(M,)`` how many sweep points ``(N, >=3)`` (LiDAR frame) lie in each global box ``(M, 9)``.

    ``geometry.points_in_boxes`` per box, on the points a k-d tree finds near it.
    """
    from scipy.spatial import cKDTree

    counts = np.zeros(len(boxes), np.int64)
    if len(boxes) == 0 or len(points_lidar) == 0:
        return counts
    pts = transform_points(global_from_lidar, points_lidar[:, :3].astype(np.float64))
    near = cKDTree(pts[:, :2]).query_ball_point(boxes[:, :2], np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + 1e-3)
    for k, idx in enumerate(near):  # one box at a time, over its neighbourhood only
        if idx:
            counts[k] = int(points_in_boxes(pts[np.asarray(idx)], boxes[k : k + 1]).sum())
    return counts


class SceneWriter:
    """Renders and writes one scene; see :func:`generate_scene`."""

    def __init__(self, cfg: SynthConfig, name: str, split: str, out: Path):
        self.cfg, self.name, self.split, self.out = cfg, name, split, Path(out)
        self.number = scene_number(name)
        self.logfile = f"synth{cfg.seed:04d}-{name}"
        self.key_dt = KEY_DT  # s between keyframes (the AV2 writer's subclass: 0.1, every sweep a keyframe)
        self.S = cfg.sweeps_per_keyframe
        self.n_sweeps = (cfg.keyframes - 1) * self.S + 1
        self.sweep_dt = self.key_dt / self.S
        self.t0_us = T0_US + self.number * 1_000_000_000
        self.dirs_lidar, self.ring = cfg.lidar.ray_directions()
        self.ego_from_lidar = RIG[LIDAR_NAME].ego_from_sensor

    def tok(self, *key) -> str:
        return tables.token(self.cfg.seed, self.name, *key)

    def key_time(self, k: int) -> float:
        return k * self.key_dt

    def us(self, t: float) -> int:
        return self.t0_us + int(round(t * 1e6))

    # -- the world, re-drawn until every class is covered ----------------------------------------------
    def draw(self) -> None:
        cfg = self.cfg
        duration = (cfg.keyframes - 1) * self.key_dt
        for attempt in range(MAX_ATTEMPTS):
            self.world = build_world(cfg.seed, self.number, duration, cfg.traffic_density, attempt)
            self.renderer = Renderer(self.world)
            self.annotate_plan()
            self.key_sweeps = {k: self.render_sweep(k * self.S) for k in range(cfg.keyframes)}
            self.count_points()
            counts = self.coverage()
            if cfg.traffic_density == 0 or all(counts[c] > 0 for c in catalog.CLASSES):
                self.attempt, self.class_counts = attempt, counts
                return
        missing = [c for c in catalog.CLASSES if counts[c] == 0]
        raise RuntimeError(
            f"synthetic scene {self.name} (seed {cfg.seed}): after {MAX_ATTEMPTS} draws, no annotation of "
            f"{missing} has LiDAR points within evaluation range; try another seed"
        )

    def annotate_plan(self) -> None:
        """Which agents are annotated at which keyframe (contiguous per agent)."""
        K, w = self.cfg.keyframes, self.world
        n = len(w.agents)
        inside = np.zeros((K, n), bool)
        for k in range(K):
            t = self.key_time(k)
            ex, ey, _ = w.ego_pose(t)
            b = w.boxes(t)
            inside[k] = np.hypot(b[:, 0] - ex, b[:, 1] - ey) <= self.cfg.annotation_range
        any_k = inside.any(0)
        first = np.where(any_k, inside.argmax(0), K)
        last = np.where(any_k, K - 1 - inside[::-1].argmax(0), -1)
        ks = np.arange(K)[:, None]
        self.annotated = (ks >= first[None]) & (ks <= last[None])  # (K, n)

    def global_from_lidar(self, t: float) -> np.ndarray:
        return self.world.global_from_ego(t) @ self.ego_from_lidar

    def render_sweep(self, j: int) -> np.ndarray:
        t = j * self.sweep_dt
        k = j // self.S if j % self.S == 0 else None
        idx = np.nonzero(self.annotated[k])[0] if k is not None else np.arange(len(self.world.agents))
        boxes = self.world.boxes(t, idx)
        li = self.cfg.lidar
        pts, _ = self.renderer.lidar(self.global_from_lidar(t), self.dirs_lidar, self.ring, t, li.min_range,
                                     li.max_range, boxes)  # fmt: skip
        return pts

    def count_points(self) -> None:
        K = self.cfg.keyframes
        self.boxes_k, self.npts_k = {}, {}
        for k in range(K):
            t = self.key_time(k)
            idx = np.nonzero(self.annotated[k])[0]
            self.boxes_k[k] = self.world.boxes(t, idx)
            self.npts_k[k] = lidar_points_in(self.boxes_k[k], self.key_sweeps[k], self.global_from_lidar(t))

    def coverage(self) -> dict[str, int]:
        """Per class: annotations with points within the devkit's evaluation range (1 m margin)."""
        from nuscenes.eval.detection.config import config_factory

        eval_range = config_factory("detection_cvpr_2019").class_range  # metres from the ego, per class
        counts = dict.fromkeys(catalog.CLASSES, 0)
        for k in range(self.cfg.keyframes):
            ex, ey, _ = self.world.ego_pose(self.key_time(k))
            for i, b, npts in zip(np.nonzero(self.annotated[k])[0], self.boxes_k[k], self.npts_k[k]):
                cls = self.world.agents[i].cls
                if npts > 0 and np.hypot(b[0] - ex, b[1] - ey) < eval_range[cls] - 1.0:
                    counts[cls] += 1
        return counts

    # -- files -----------------------------------------------------------------------------------------
    def write_points(self, rel: str, pts: np.ndarray) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.ascontiguousarray(pts, dtype=np.float32).tofile(path)

    def write_jpeg(self, rel: str, rgb: np.ndarray) -> None:
        from PIL import Image

        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=self.cfg.jpeg_quality, optimize=False,
                                  progressive=False, subsampling=2)  # fmt: skip
        path.write_bytes(buf.getvalue())

    def write_oracle(self, rel: str, kind: np.ndarray, obj: np.ndarray) -> None:
        """A camera image's oracle label map (:data:`ORACLE_CLASSES`, agent index) as a 16-bit PNG (:func:`read_oracle`)."""
        from PIL import Image

        agent_cls = np.array([ORACLE_CLASSES.index(a.cls) for a in self.world.agents] + [0], dtype=np.int64)
        cls = np.where(kind == 0, 0, np.where(kind == 1, 1, np.where(obj >= 0, agent_cls[obj], 2)))  # (H, W)
        if len(self.world.agents) + 1 >= ORACLE_INSTANCE_BASE:
            raise ValueError(
                f"{len(self.world.agents)} agents: the oracle PNG holds at most {ORACLE_INSTANCE_BASE - 2}"
            )
        label = (cls * ORACLE_INSTANCE_BASE + np.where(obj >= 0, obj + 1, 0)).astype(np.uint16)
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(label).save(buf, format="PNG", optimize=False, compress_level=1)
        path.write_bytes(buf.getvalue())

    def write_map(self, rel: str) -> None:
        """The semantic prior (road and sidewalks = 255) at 0.1 m per pixel, origin at the image's bottom left."""
        from PIL import Image, ImageDraw

        w = self.world
        res = 0.1
        hi = w.bounds[1]
        width, height = int(np.ceil(hi[0] / res)), int(np.ceil(hi[1] / res))
        img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(img)
        s = np.arange(-50.0, w.road.length + 50.0, 1.0)
        xl, yl, _ = w.road.pose(s, SIDEWALK_OUTER)
        xr, yr, _ = w.road.pose(s[::-1], -SIDEWALK_OUTER)
        to_px = lambda x, y: list(zip((np.asarray(x) / res).tolist(), (height - np.asarray(y) / res).tolist()))  # noqa: E731
        draw.polygon(to_px(np.r_[xl, xr], np.r_[yl, yr]), fill=255)
        ends = np.array([-170.0, -170.0, 170.0, 170.0])
        xc, yc, _ = w.cross.pose(ends, np.array([-CROSS_SIDEWALK, CROSS_SIDEWALK, CROSS_SIDEWALK, -CROSS_SIDEWALK]))
        draw.polygon(to_px(xc, yc), fill=255)
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=False, compress_level=1)
        path.write_bytes(buf.getvalue())

    # -- everything ------------------------------------------------------------------------------------
    def run(self) -> SceneResult:
        cfg = self.cfg
        self.draw()
        w = self.world
        rows = {t: [] for t in tables.SCENE_TABLES}
        log_tok, map_tok, scene_tok = self.tok("log"), self.tok("map"), self.tok("scene")
        rows["log"].append({"token": log_tok, "logfile": self.logfile, "vehicle": "synth", "date_captured": "2018-08-01",
                            "location": "synthetic"})  # fmt: skip
        map_file = f"maps/{map_tok}.png"
        self.write_map(map_file)
        rows["map"].append(
            {"token": map_tok, "log_tokens": [log_tok], "category": "semantic_prior", "filename": map_file}
        )
        calib = {}
        for ch in (LIDAR_NAME, *cfg.cameras):
            c = RIG[ch]
            K = camera_intrinsics(ch, cfg.image_width, cfg.image_height).tolist() if c.K is not None else []
            calib[ch] = self.tok("calibrated_sensor", ch)
            rows["calibrated_sensor"].append({"token": calib[ch], "sensor_token": tables.sensor_token(ch),
                                              "translation": list(c.translation), "rotation": list(c.rotation),
                                              "camera_intrinsic": K})  # fmt: skip
        K_ = cfg.keyframes
        sample_tok = [self.tok("sample", k) for k in range(K_)]
        for k in range(K_):
            rows["sample"].append({"token": sample_tok[k], "timestamp": self.us(self.key_time(k)),
                                   "prev": sample_tok[k - 1] if k > 0 else "",
                                   "next": sample_tok[k + 1] if k < K_ - 1 else "", "scene_token": scene_tok})  # fmt: skip
        rows["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": K_,
                              "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1], "name": self.name,
                              "description": f"synthetic ({cfg.name}, seed {cfg.seed}): ego at "
                                             f"{w.ego.profile.v:.1f} m/s, draw {self.attempt}"})  # fmt: skip

        sd_rows: dict[str, dict] = {}

        def add_sample_data(ch: str, t: float, rel: str, is_key: bool, k_sample: int, width: int, height: int,
                            prev: str, key) -> str:  # fmt: skip
            sd_tok = self.tok("sample_data", ch, *key)
            ts = self.us(t)
            x, y, yaw = (float(v) for v in w.ego_pose(t))
            rows["ego_pose"].append({"token": sd_tok, "timestamp": ts, "rotation": yaw_to_quat(np.float64(yaw)).tolist(),
                                     "translation": [x, y, 0.0]})  # fmt: skip
            sd_rows[sd_tok] = {"token": sd_tok, "sample_token": sample_tok[k_sample], "ego_pose_token": sd_tok,
                                        "calibrated_sensor_token": calib[ch], "timestamp": ts,
                                        "fileformat": "pcd" if ch == LIDAR_NAME else "jpg", "is_key_frame": is_key,
                                "height": height, "width": width, "filename": rel, "prev": prev, "next": ""}  # fmt: skip
            rows["sample_data"].append(sd_rows[sd_tok])
            if prev:
                sd_rows[prev]["next"] = sd_tok
            return sd_tok

        # LiDAR: every sweep, keyframes among them
        prev = ""
        for j in range(self.n_sweeps):
            t = j * self.sweep_dt
            is_key = j % self.S == 0
            k_sample = j // self.S if is_key else j // self.S + 1  # non-key sweeps belong to the next keyframe
            pts = self.key_sweeps[j // self.S] if is_key else self.render_sweep(j)
            folder = "samples" if is_key else "sweeps"
            rel = f"{folder}/{LIDAR_NAME}/{self.logfile}__{LIDAR_NAME}__{self.us(t)}.pcd.bin"
            self.write_points(rel, pts)
            prev = add_sample_data(LIDAR_NAME, t, rel, is_key, k_sample, 0, 0, prev, (j,))

        # cameras at the keyframes, each at its own firing time; visibility from their renders
        visibility = {}
        cam_prev = dict.fromkeys(cfg.cameras, "")
        for k in range(K_):
            cams = []
            for ch in cfg.cameras:
                c = RIG[ch]
                t = self.key_time(k) + c.offset_us * 1e-6
                K = camera_intrinsics(ch, cfg.image_width, cfg.image_height)
                g_from_cam = w.global_from_ego(t) @ c.ego_from_sensor
                dirs = camera_rays(K, cfg.image_width, cfg.image_height)
                rgb, obj, _, kind = self.renderer.camera(g_from_cam, dirs, cfg.image_width, cfg.image_height, t,
                                                         with_kind=True)  # fmt: skip
                rel = f"samples/{ch}/{self.logfile}__{ch}__{self.us(t)}.jpg"
                self.write_jpeg(rel, rgb)
                self.write_oracle(oracle_path(rel), kind, obj)
                cam_prev[ch] = add_sample_data(
                    ch, t, rel, True, k, cfg.image_width, cfg.image_height, cam_prev[ch], (k,)
                )
                cams.append({"global_from_cam": g_from_cam, "K": K, "width": cfg.image_width,
                             "height": cfg.image_height, "t": t, "dirs": dirs, "obj": obj})  # fmt: skip
            idx = np.nonzero(self.annotated[k])[0]
            stride = max(2, cfg.image_width // 352)  # visibility from a quarter of the pixels or fewer
            visibility[k] = visible_fractions(self.renderer, cams, idx, stride=stride)

        # instances and annotations
        for i in np.nonzero(self.annotated.any(0))[0]:
            a = w.agents[i]
            ks = np.nonzero(self.annotated[:, i])[0]
            ann = [self.tok("sample_annotation", i, k) for k in ks]
            rows["instance"].append({"token": self.tok("instance", i), "category_token": tables.category_token(a.category),
                                     "nbr_annotations": len(ks), "first_annotation_token": ann[0],
                                     "last_annotation_token": ann[-1]})  # fmt: skip
        for k in range(K_):
            idx = np.nonzero(self.annotated[k])[0]
            t = self.key_time(k)
            for m, i in enumerate(idx):
                a = w.agents[i]
                b = self.boxes_k[k][m]
                ks = np.nonzero(self.annotated[:, i])[0]
                pos = int(np.searchsorted(ks, k))
                attr = catalog.attribute(a.cls, float(np.hypot(b[VX], b[VY])), a.parked, a.rider)
                rows["sample_annotation"].append({
                    "token": self.tok("sample_annotation", i, k), "sample_token": sample_tok[k],
                    "instance_token": self.tok("instance", i),
                    "visibility_token": catalog.visibility_token(float(visibility[k][m])),
                    "attribute_tokens": [tables.attribute_token(attr)] if attr else [],
                    "translation": [float(b[0]), float(b[1]), float(b[2])],
                    "size": [float(b[4]), float(b[3]), float(b[5])],  # nuScenes: w, l, h
                    "rotation": yaw_to_quat(np.float64(b[6])).tolist(),
                    "prev": self.tok("sample_annotation", i, ks[pos - 1]) if pos > 0 else "",
                    "next": self.tok("sample_annotation", i, ks[pos + 1]) if pos + 1 < len(ks) else "",
                    "num_lidar_pts": int(self.npts_k[k][m]), "num_radar_pts": 0,
                })  # fmt: skip
        return SceneResult(self.name, self.split, rows, self.attempt, self.class_counts)


def oracle_path(image_rel: str | Path) -> Path:
    """Where the oracle label map of a camera image lies: ``samples/<CAM>/<stem>.jpg`` -> ``oracle/<CAM>/<stem>.png``
    (relative paths, or absolute ones under the dataset root)."""
    p = Path(image_rel)
    if len(p.parts) < 3 or p.parts[-3] != "samples":
        raise ValueError(f"{p} is not a synthetic camera image (<root>/samples/<CAM>/<file>.jpg)")
    return p.parent.parent.parent / ORACLE_DIR / p.parent.name / (p.stem + ".png")


def read_oracle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An oracle label map's ``class (H, W)`` (indices into :data:`ORACLE_CLASSES`) and ``instance (H, W)``
    (the scene's agent index, -1 none), both int64."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"oracle label map {path} not found: the synthetic world was generated without oracle maps "
            f"(before they existed); regenerate it: python -m pipelines.synth ... overwrite=true"
        )
    with Image.open(path) as im:
        label = np.asarray(im, dtype=np.int64)
    return label // ORACLE_INSTANCE_BASE, label % ORACLE_INSTANCE_BASE - 1


_RAYS: dict = {}


def camera_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit rays ``(H*W, 3)`` in the camera frame through every pixel centre (row-major), cached."""
    key = (K.tobytes(), width, height)
    if key not in _RAYS:
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], -1)  # (H*W, 3)
        d = pix @ np.linalg.inv(K).T
        if len(_RAYS) > 16:
            _RAYS.clear()
        _RAYS[key] = d / np.linalg.norm(d, axis=1, keepdims=True)
    return _RAYS[key]


def generate_scene(cfg: SynthConfig, name: str, split: str, out: str | Path) -> SceneResult:
    """Render one scene into ``out`` (its sensor files) and return its table rows: a pure function of its inputs."""
    return SceneWriter(cfg, name, split, Path(out)).run()


def check_output_dir(
    out: str | Path, overwrite: bool, own_paths: tuple[str, ...] = OWN_PATHS, cfg: SynthConfig | None = None
) -> Path:
    """``out`` as a Path, after refusing a non-empty folder unless ``overwrite`` (a file is always refused).

    ``own_paths``: what the writer replaces with ``overwrite`` (named in the message). ``cfg``: a partial world of
    this config in ``out`` is not refused (:func:`generate` extends it).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if cfg is not None and partial_world(out, cfg) is not None:
            return out
        part = " (it holds part of a synthetic world of another config)" if is_partial(out) else ""
        raise OutputDirError(
            f"output folder {out} is not empty{part}; pass overwrite=true to replace the synthetic dataset in it "
            f"(only {', '.join(own_paths)} are removed)"
        )
    return out


def staging_dir(out: Path) -> Path:
    """Where :func:`generate` writes before moving the finished dataset into ``out``."""
    return out.parent / f".{out.name}.partial"


def start_stage(
    cfg: SynthConfig, out: str | Path, overwrite: bool, own_paths: tuple[str, ...] = OWN_PATHS
) -> tuple[Path, Path, list[tuple]]:
    """``(out, stage, jobs)`` of a world about to be written: ``cfg`` and ``out`` checked before any work, a fresh
    staging folder (:func:`staging_dir`; an interrupted run's is replaced) and one rendering job
    ``(cfg, name, split, stage)`` per scene. Every writer (nuScenes, AV2) starts here."""
    cfg.validate()
    out = check_output_dir(out, overwrite, own_paths)
    stage = staging_dir(out)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return out, stage, [(cfg, name, split, str(stage)) for name, split in cfg.scene_names()]


def render_jobs(job_fn: Callable, jobs: list[tuple], map_fn: Callable[[Callable, Iterable], Iterable] | None) -> list:
    """``job_fn`` of every job of :func:`start_stage`, through ``map_fn`` (default: in turn, with a progress bar)."""
    # a parallel map_fn shows its own progress (pipelines.synth.dask_map); rendering in turn gets a bar here
    return list(tqdm((map_fn or map)(job_fn, jobs), total=len(jobs), unit="scene", disable=map_fn is not None))


def finish_stage(
    stage: Path, out: Path, own_paths: tuple[str, ...], cfg: SynthConfig, scenes: list[dict], **extra
) -> None:
    """Write the staged world's :data:`META_FILE` (generator, config, the per-scene records ``scenes`` and
    ``extra`` keys), then move it into ``out`` (:func:`install`): what every writer does last."""
    meta = {"generator": GENERATOR, "config": cfg.to_dict(), "scenes": scenes, **extra}
    (stage / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    install(stage, out, own_paths)


def generate(cfg: SynthConfig, out: str | Path, overwrite: bool = False,
             map_fn: Callable[[Callable, Iterable], Iterable] | None = None, log: Callable[[str], None] = print,
             scenes: Iterable[str] | None = None) -> Path:  # fmt: skip
    """Write the synthetic dataset ``cfg`` describes into ``out``; returns ``out``.

    ``map_fn(f, items)`` applies ``f`` to every ``(cfg, name, split, out)`` tuple (default: in
    turn); pass a parallel map to render scenes concurrently. Same config, same bytes.

    ``scenes``: render only these of ``cfg``'s scenes (names; default all), which leaves a partial world (module
    docstring). A partial world of ``cfg`` already in ``out`` is extended, not refused: its scenes are kept (their
    files linked, their table rows read back), only the asked-for scenes it lacks are rendered, and the tables of
    all are written anew in scene order. So ``scenes=None`` on a partial world completes it.

    Everything is written to :func:`staging_dir` first and moved into ``out`` only once complete,
    so ``out`` never holds a half-written dataset; an interrupted run leaves the staging folder, which
    the next run replaces. With ``overwrite``, only what a previous run wrote (:data:`OWN_PATHS`)
    is removed from ``out``, and none of it is kept.
    """
    cfg.validate()
    order = scene_order(cfg)
    want = set(order if scenes is None else scenes)
    if want - set(order):
        raise SynthConfigError(f"scenes {sorted(want - set(order))} are not in the synthetic world '{cfg.name}' "
                               f"(its scenes: {order})")  # fmt: skip
    out = check_output_dir(out, overwrite, cfg=cfg)
    have = {} if overwrite else (partial_world(out, cfg) or {})
    render = [(name, split) for name, split in cfg.scene_names() if name in want and name not in have]
    if have and not render:
        log(f"synthetic world '{cfg.name}' in {out} already holds the scenes asked for; nothing to render")
        return out
    stage = staging_dir(out)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    kept = {}
    if have:  # a partial world grows: its scenes' files (hard links) and table rows come along
        for d in SCENE_DIRS:
            if (out / d).is_dir():
                link_tree(out / d, stage / d)
        kept = scene_rows(out / cfg.version)
    jobs = [(cfg, name, split, str(stage)) for name, split in render]
    names = [n for n in order if n in have or n in want]
    part = f" of its {len(order)} ({len(have)} there already)" if len(names) < len(order) or have else ""
    log(f"synthetic world '{cfg.name}' (seed {cfg.seed}): {len(jobs)} scenes{part} x {cfg.keyframes} keyframes "
        f"-> {out}")  # fmt: skip
    results = render_jobs(_generate_job, jobs, map_fn)
    new = {r.name: r for r in results}
    all_tables = tables.vocabulary_tables()
    for t in tables.SCENE_TABLES:
        all_tables[t] = [row for n in names for row in (new[n].rows[t] if n in new else kept[n][t])]
    tables.write_tables(stage / cfg.version, all_tables)
    finish_stage(stage, out, OWN_PATHS, cfg, [scene_record(new[n]) if n in new else have[n] for n in names])
    log(f"wrote {sum(len(r.rows['sample']) for r in results)} keyframes, "
        f"{sum(len(r.rows['sample_annotation']) for r in results)} annotations to {out / cfg.version}")  # fmt: skip
    if len(names) < len(order):
        log(f"{out} holds {len(names)} of the world's {len(order)} scenes (a partial world); a run that needs the "
            f"others renders them")  # fmt: skip
    return out


def scene_record(r: SceneResult) -> dict:
    """A scene's entry in ``synth.json``."""
    return {"name": r.name, "split": r.split, "draw": r.attempt, "annotations_in_range_with_points": r.class_counts}


def scene_order(cfg: SynthConfig, split: str | None = None) -> list[str]:
    """``cfg``'s scene names in the order the nuScenes adapter lists a world of them (table order), only those of
    the devkit ``split`` when given: what "the first n scenes" counts, known before any scene is rendered."""
    return in_split([name for name, _ in cfg.scene_names()], split)


def is_partial(out: str | Path) -> bool:
    """Whether ``out`` holds a partial synthetic world: its ``synth.json`` lists fewer scenes than its config has.

    A ``synth.json`` this code cannot read (a world of an older generator, a config with other fields) is not
    partial: such a world was only ever written whole.
    """
    meta = read_meta(out)
    if meta is None or meta.get("format", "nuscenes") != "nuscenes":
        return False
    try:
        names = set(scene_order(SynthConfig.from_dict(meta["config"])))
        return {s["name"] for s in meta["scenes"]} < names
    except (SynthConfigError, KeyError, TypeError, ValueError):
        return False


def partial_world(out: str | Path, cfg: SynthConfig) -> dict[str, dict] | None:
    """The ``synth.json`` entries, by scene name, of a partial world of ``cfg`` in ``out``; None where ``out`` holds
    none (no world, a whole one, or part of another config's)."""
    if not is_partial(out):
        return None
    meta = read_meta(out)
    if meta["config"] != json.loads(json.dumps(cfg.to_dict())) or not (Path(out) / cfg.version).is_dir():
        return None
    return {s["name"]: s for s in meta["scenes"]}


def missing_scenes(out: str | Path, cfg: SynthConfig, scenes: Iterable[str] | None = None) -> list[str]:
    """The scenes of ``scenes`` (default: all of ``cfg``'s), in scene order, that the world in ``out`` lacks: every
    one where no world is there, none where a whole one is (:func:`has_world`, whatever its config, as before)."""
    want = set(scene_order(cfg) if scenes is None else scenes)
    if has_world(out, {"version": cfg.version}):
        return []
    have = set(partial_world(out, cfg) or ())
    return [n for n in scene_order(cfg) if n in want and n not in have]


def scene_rows(table_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """The rows of a written world's per-scene tables (``tables.SCENE_TABLES``) by scene name, each scene's in their
    written order: what a partial world extended by more scenes keeps of the scenes it has."""
    t = {name: json.loads((table_dir / f"{name}.json").read_text()) for name in tables.SCENE_TABLES}
    scene_of_log = {r["log_token"]: r["name"] for r in t["scene"]}
    scene_of_token = {r["token"]: r["name"] for r in t["scene"]}
    of_sample = {r["token"]: scene_of_token[r["scene_token"]] for r in t["sample"]}
    of_sample_data = {r["token"]: of_sample[r["sample_token"]] for r in t["sample_data"]}
    of_calibration = {r["calibrated_sensor_token"]: of_sample[r["sample_token"]] for r in t["sample_data"]}
    of_annotation = {r["token"]: of_sample[r["sample_token"]] for r in t["sample_annotation"]}
    owner = {
        "scene": lambda r: r["name"],
        "log": lambda r: scene_of_log[r["token"]],
        "map": lambda r: scene_of_log[r["log_tokens"][0]],
        "sample": lambda r: of_sample[r["token"]],
        "sample_data": lambda r: of_sample_data[r["token"]],
        "ego_pose": lambda r: of_sample_data[r["token"]],  # an ego pose's token is its sample_data's
        "calibrated_sensor": lambda r: of_calibration[r["token"]],
        "sample_annotation": lambda r: of_annotation[r["token"]],
        "instance": lambda r: of_annotation[r["first_annotation_token"]],
    }
    rows = {name: {table: [] for table in tables.SCENE_TABLES} for name in scene_of_token.values()}
    for table in tables.SCENE_TABLES:
        for r in t[table]:
            rows[owner[table](r)][table].append(r)
    return rows


def link_tree(src: Path, dst: Path) -> None:
    """``dst``: a copy of the folder ``src`` whose files are hard links to ``src``'s (copies where links fail)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def install(stage: Path, out: Path, own_paths: tuple[str, ...]) -> None:
    """Move a finished staging folder into place: the whole folder when ``out`` is new, else
    ``own_paths`` of ``out`` are removed and the staged entries moved in one by one."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(out)
        return
    for p in own_paths:
        q = out / p
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
    for child in sorted(stage.iterdir()):
        child.rename(out / child.name)
    stage.rmdir()


def _generate_job(job) -> SceneResult:
    return generate_scene(*job)


def has_world(root: str | Path, dataset_cfg) -> bool:
    """Whether a whole world is at ``root``: the nuScenes tables of ``dataset_cfg["version"]``, and not a partial
    synthetic world (:func:`is_partial`: one that holds only some of its config's scenes)."""
    return (Path(root) / str(dataset_cfg["version"])).is_dir() and not is_partial(root)


def read_meta(out: str | Path) -> dict | None:
    """The ``synth.json`` of a generated dataset, or None when there is none."""
    p = Path(out) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def load_world(out: str | Path, scene: str):
    """The :class:`~bevlabels.synthetic.world.World` a generated dataset's scene was rendered from (for checks)."""
    meta = read_meta(out)
    if meta is None:
        raise FileNotFoundError(f"{Path(out) / META_FILE} not found: {out} is not a synthetic dataset")
    draws = {s["name"]: s["draw"] for s in meta["scenes"]}
    if scene not in draws:
        raise KeyError(f"no scene {scene!r} in {out}; scenes: {sorted(draws)}")
    cfg = SynthConfig.from_dict(meta["config"])
    return build_world(cfg.seed, scene_number(scene), (cfg.keyframes - 1) * KEY_DT, cfg.traffic_density, draws[scene])
