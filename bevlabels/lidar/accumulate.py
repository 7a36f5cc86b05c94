"""Scene-level LiDAR accumulation: static points in the global frame, object points in their box frames.

DualViewDistill projects DINOv2 features onto a LiDAR cloud accumulated over the whole scene, so
that the BEV pseudo-labels are dense. A naive accumulation smears moving objects along their
paths; the fix is to split every sweep in two:

* **static** points, outside every (enlarged) GT box at the sweep's time, are moved to the global
  frame and simply collected; at a keyframe they are moved into that keyframe's ego frame;
* **dynamic** points, inside an instance's box at the sweep's time, are stored in that box's own
  frame, then placed at the instance's box pose at each keyframe where it is annotated. Instances
  absent at a keyframe contribute nothing to it.

Annotations exist only at keyframes (2 Hz in nuScenes), so box poses at sweep times are
interpolated: centre linearly, yaw along the shortest arc (``np.unwrap``); before the first or
after the last annotation of an instance its pose is extrapolated with its velocity for at most
``extrapolate_s`` seconds, after which the instance is taken as absent (its points, if any, then
count as static: a documented limitation of box-based separation).

Memory per scene is bounded: every cloud is voxel-deduplicated (first point per
``voxel_size`` voxel kept) each time it grows by ``dedup_every`` sweeps, so it grows with the
scene's *surface area* over the voxel area, not with the number of sweeps; points beyond
``max_range`` of the sensor or closer than ``min_range`` (the ego's own roof) are dropped on read.
With a ``time_window`` only the sweeps within the window of the keyframe being built are held.

Letters: N points of one sweep, P accumulated points, M boxes, T sweeps, K keyframes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from bevlabels import geometry as g
from bevlabels.datasets.base import DriveDataset, Frame, LidarSweep

_KEY_BITS = 21
_KEY_OFF = 1 << (_KEY_BITS - 1)


@dataclass(frozen=True)
class AccumulationConfig:
    """How a scene's sweeps are accumulated (defaults fit nuScenes' LIDAR_TOP)."""

    time_window: float | None = None  # seconds either side of a keyframe; None = the whole scene
    box_margin: float = 0.25  # metres added on every side of a box when separating static points
    voxel_size: float = 0.1  # metres; first point per voxel kept (finer buys little: patches are coarse)
    dedup_every: int = 50  # sweeps between dedup passes (memory bound vs. cost)
    min_range: float = 1.5  # metres from the sensor: the ego's own body
    max_range: float = 80.0
    extrapolate_s: float = 0.5  # an instance is present this long before/after its annotations
    max_sweeps: int | None = None  # for tests and quick looks: only the first n sweeps
    #: False: static-only accumulation (DualViewDistill's Table VIII): objects keep only their own keyframe
    #: sweep's points, not those of the scene's other sweeps (``+accumulation.dynamic=false``)
    dynamic: bool = True

    def __post_init__(self):
        if self.time_window is not None and self.time_window <= 0:
            raise ValueError(f"accumulation.time_window must be > 0 or None; got {self.time_window}")
        if self.voxel_size <= 0 or self.box_margin < 0 or self.min_range < 0 or self.max_range <= self.min_range:
            raise ValueError(f"accumulation config out of range: {self}")


@dataclass
class AccumulatedCloud:
    """The accumulated cloud of one keyframe, in that keyframe's ego frame.

    ``points (P, 4)`` x, y, z, intensity; ``box_index (P,)`` the index into ``frame.boxes`` of
    the instance a dynamic point belongs to, -1 for static points.
    """

    frame: Frame
    points: np.ndarray
    box_index: np.ndarray

    @property
    def n_static(self) -> int:
        return int((self.box_index < 0).sum())

    @property
    def n_dynamic(self) -> int:
        return int((self.box_index >= 0).sum())


@dataclass
class InstanceTrack:
    """One instance's annotated poses over a scene, in the global frame."""

    times: np.ndarray  # (k,) seconds
    centres: np.ndarray  # (k, 3)
    yaws: np.ndarray  # (k,) unwrapped
    lwh: np.ndarray  # (3,)
    velocity: np.ndarray  # (k, 2), NaN where unknown

    def box_at(self, t: float, extrapolate_s: float) -> np.ndarray | None:
        """The ``(9,)`` box at time ``t`` (interpolated), or None when the instance is absent then."""
        t0, t1 = self.times[0], self.times[-1]
        if t < t0 - extrapolate_s or t > t1 + extrapolate_s:
            return None
        box = np.zeros(g.BOX_DIM)
        box[g.L : g.H + 1] = self.lwh
        if t0 <= t <= t1:
            for d in range(3):
                box[d] = np.interp(t, self.times, self.centres[:, d])
            box[g.YAW] = np.interp(t, self.times, self.yaws)
            return box
        end = 0 if t < t0 else -1
        v = self.velocity[end]
        if not np.all(np.isfinite(v)):
            if len(self.times) >= 2:  # finite-difference velocity from the two nearest annotations
                a, b = (0, 1) if end == 0 else (-2, -1)
                v = (self.centres[b, :2] - self.centres[a, :2]) / max(self.times[b] - self.times[a], 1e-6)
            else:
                v = np.zeros(2)
        dt = t - self.times[end]
        box[:3] = self.centres[end]
        box[:2] += v * dt
        box[g.YAW] = self.yaws[end]
        return box


def build_tracks(frames: list[Frame]) -> dict[str, InstanceTrack]:
    """Instance tracks (global frame) from a scene's keyframe annotations, keyed by instance id."""
    rows: dict[str, list[tuple[float, np.ndarray]]] = {}
    for f in frames:
        if len(f.boxes) == 0:
            continue
        boxes_global = g.transform_boxes(f.global_from_ego, f.boxes.boxes)  # (M, 9)
        for inst, b in zip(f.boxes.instance_id, boxes_global):
            rows.setdefault(inst, []).append((f.timestamp * 1e-6, b))
    tracks = {}
    for inst, obs in rows.items():
        obs.sort(key=lambda r: r[0])
        b = np.stack([r[1] for r in obs])
        tracks[inst] = InstanceTrack(
            times=np.array([r[0] for r in obs]),
            centres=b[:, :3],
            yaws=np.unwrap(b[:, g.YAW]),
            lwh=np.median(b[:, g.L : g.H + 1], axis=0),
            velocity=b[:, g.VX : g.VY + 1],
        )
    return tracks


def voxel_dedup(points, voxel_size: float, *extra):
    """The first point of each ``voxel_size`` voxel ``(P', C)`` (in input order), and ``extra`` arrays subset alike.

    numpy or torch (on any device) alike: the same points survive, in the same order.
    """
    if len(points) == 0:
        return (points, *extra)
    if isinstance(points, torch.Tensor):
        vox = torch.floor(points[:, :3].double() / voxel_size).long() + _KEY_OFF
    else:
        vox = np.floor(points[:, :3] / voxel_size).astype(np.int64) + _KEY_OFF
    if vox.min() < 0 or vox.max() >= (1 << _KEY_BITS):
        raise ValueError(f"coordinates beyond +-{_KEY_OFF * voxel_size:.0f} m cannot be voxel-keyed at {voxel_size} m")
    key = (vox[:, 0] << (2 * _KEY_BITS)) | (vox[:, 1] << _KEY_BITS) | vox[:, 2]
    if isinstance(points, torch.Tensor):
        _, inverse = torch.unique(key, return_inverse=True)
        index = torch.arange(len(key), device=key.device)
        first = torch.full((int(inverse.max()) + 1,), len(key), dtype=torch.long, device=key.device)
        first = first.scatter_reduce(0, inverse, index, reduce="amin").sort().values
    else:
        _, first = np.unique(key, return_index=True)
        first.sort()  # keep input (time) order: deterministic and stable under appends
    return (points[first], *(e[first] for e in extra))


def _cat(parts: list):
    """``np.concatenate`` or ``torch.cat`` of a list of like arrays."""
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


@dataclass
class _SweepSplit:
    """One sweep split into static points (global) and per-instance points (box frames)."""

    time: float
    static_global: np.ndarray  # (n, 4)
    dynamic_box: dict[str, np.ndarray] = field(default_factory=dict)  # instance -> (m, 4)
    token: str = ""  # the sweep's


def split_sweep(
    points_lidar: np.ndarray,
    sweep: LidarSweep,
    tracks: dict[str, InstanceTrack],
    cfg: AccumulationConfig,
    device: torch.device | str | None = None,
) -> _SweepSplit:
    """Split one sweep's points ``(N, >=4)`` (sensor frame) into static (global) and per-box points.

    With ``device`` the work runs in torch on that device (float64, as the numpy reference), and the
    split holds tensors there.
    """
    if device is not None:
        points_lidar = torch.as_tensor(np.asarray(points_lidar[:, :4]), dtype=torch.float64, device=device)
        rng = torch.linalg.norm(points_lidar[:, :2], dim=1)
    else:
        rng = np.linalg.norm(points_lidar[:, :2], axis=1)
    pts = points_lidar[(rng >= cfg.min_range) & (rng <= cfg.max_range), :4]
    pts_global = g.transform_points(sweep.global_from_lidar, pts if device is not None else pts.astype(np.float64))
    t = sweep.timestamp * 1e-6
    insts, boxes = [], []
    for inst, tr in tracks.items():  # one interpolation per instance, not per point
        b = tr.box_at(t, cfg.extrapolate_s)
        if b is not None:
            insts.append(inst)
            boxes.append(b)
    if not boxes:
        return _SweepSplit(t, pts_global, token=sweep.token)
    boxes = np.stack(boxes)  # (M, 9)
    if device is not None:
        boxes_dev = torch.as_tensor(boxes, dtype=torch.float64, device=device)
    # Static: outside every enlarged box. Dynamic: inside the (un-enlarged) box; points in the
    # margin band belong to neither, which keeps ground points under a car out of its cloud.
    enlarged = g.points_box_index(pts_global, boxes if device is None else boxes_dev, margin=cfg.box_margin)
    if device is not None:
        near = torch.nonzero(enlarged >= 0).squeeze(1)
        exact = torch.full((len(pts_global),), -1, dtype=torch.int64, device=pts_global.device)
        exact[near] = g.points_box_index(pts_global[near], boxes_dev)
        present = torch.unique(exact[exact >= 0]).tolist()
    else:
        near = np.flatnonzero(enlarged >= 0)  # only these can be inside an exact box
        exact = np.full(len(pts_global), -1, dtype=np.int64)
        exact[near] = g.points_box_index(pts_global[near], boxes)
        present = np.unique(exact[exact >= 0]).tolist()
    split = _SweepSplit(t, pts_global[enlarged < 0], token=sweep.token)
    for m in present:
        sel = pts_global[exact == m]
        box_from_global = g.invert_transform(g.make_transform(g.rot_z(boxes[m, g.YAW]), boxes[m, :3]))
        split.dynamic_box[insts[m]] = g.transform_points(box_from_global, sel)
    return split


class _Accumulator:
    """Static and per-instance clouds, deduplicated as they grow."""

    def __init__(self, cfg: AccumulationConfig, device: torch.device | str | None = None):
        self.cfg, self.device = cfg, device
        self.static: list[np.ndarray] = []
        self.dynamic: dict[str, list[np.ndarray]] = {}
        self._since_dedup = 0

    def add(self, s: _SweepSplit):
        self.static.append(s.static_global)
        for inst, p in s.dynamic_box.items():
            self.dynamic.setdefault(inst, []).append(p)
        self._since_dedup += 1
        if self._since_dedup >= self.cfg.dedup_every:
            self.compact()

    def compact(self):
        self._since_dedup = 0
        if self.static:
            self.static = [voxel_dedup(_cat(self.static), self.cfg.voxel_size)[0]]
        for inst, parts in self.dynamic.items():
            self.dynamic[inst] = [voxel_dedup(_cat(parts), self.cfg.voxel_size)[0]]

    def static_cloud(self):
        self.compact()
        if self.static:
            return self.static[0]
        return (
            torch.zeros((0, 4), dtype=torch.float64, device=self.device)
            if self.device is not None
            else np.zeros((0, 4))
        )

    def instance_cloud(self, inst: str) -> np.ndarray | None:
        parts = self.dynamic.get(inst)
        return None if not parts else parts[0]


def place_at_keyframe(frame: Frame, static_global, acc: _Accumulator) -> AccumulatedCloud:
    """The keyframe's cloud: static points moved to its ego frame plus each present instance's points at its box.

    numpy in, numpy out; torch in (the device path), float32 / int32 tensors on that device out.
    """
    dev = static_global.device if isinstance(static_global, torch.Tensor) else None

    def f32(a):
        return a.float() if dev is not None else a.astype(np.float32)

    def label(n: int, m: int):
        return torch.full((n,), m, dtype=torch.int32, device=dev) if dev is not None else np.full(n, m, dtype=np.int32)

    ego_from_global = g.invert_transform(frame.global_from_ego)
    parts = [f32(g.transform_points(ego_from_global, static_global))]
    labels = [label(len(static_global), -1)]
    for m, inst in enumerate(frame.boxes.instance_id):
        pts_box = acc.instance_cloud(inst)
        if pts_box is None:
            continue
        b = frame.boxes.boxes[m]
        ego_from_box = g.make_transform(g.rot_z(b[g.YAW]), b[:3])
        parts.append(f32(g.transform_points(ego_from_box, pts_box)))
        labels.append(label(len(pts_box), m))
    return AccumulatedCloud(frame, _cat(parts), _cat(labels))


def accumulate_scene(
    ds: DriveDataset,
    scene: str,
    cfg: AccumulationConfig | None = None,
    frames: list[Frame] | None = None,
    device: torch.device | str | None = None,
) -> Iterator[AccumulatedCloud]:
    """Yield each keyframe's accumulated cloud (ego frame of that keyframe), in keyframe order.

    With ``cfg.time_window=None`` the whole scene is read once and every keyframe shares the same
    static map; with a window, sweeps are read in time order and only those within the window of
    the current keyframe are held (a sliding deque), so memory is bounded by the window.

    ``device``: run the splitting, deduplication and placing in torch on that device (float64, the
    numpy path's precision); the clouds are then float32 / int32 tensors there. ``None`` (default) is
    the numpy reference, which the device path equals (``tests/unit/test_accumulate.py``).
    """
    cfg = cfg or AccumulationConfig()
    frames = ds.keyframes(scene) if frames is None else frames
    sweeps = ds.sweeps(scene)
    if cfg.max_sweeps is not None:
        sweeps = sweeps[: cfg.max_sweeps]
    tracks = build_tracks(frames)

    def splits() -> Iterator[_SweepSplit]:
        for sw in sweeps:
            yield split_sweep(ds.load_points(sw), sw, tracks, cfg, device=device)

    def own_sweep_objects(f: Frame, split: _SweepSplit | None) -> _Accumulator:
        """Static-only accumulation: the keyframe's objects from its own sweep alone."""
        own = _Accumulator(cfg, device)
        if split is not None:
            own.dynamic = {inst: [p] for inst, p in split.dynamic_box.items()}
        return own

    if cfg.time_window is None:
        acc = _Accumulator(cfg, device)
        key_splits = {}
        for s in splits():
            acc.add(s)
            if not cfg.dynamic:
                key_splits[s.token] = s
        static = acc.static_cloud()
        for f in frames:
            objects = acc if cfg.dynamic else own_sweep_objects(f, key_splits.get(f.lidar.token))
            yield place_at_keyframe(f, static, objects)
        return

    window: deque[_SweepSplit] = deque()
    source = splits()
    pending: _SweepSplit | None = next(source, None)
    for f in frames:  # keyframes and sweeps are both in time order: one pass
        t_key = f.timestamp * 1e-6
        while pending is not None and pending.time <= t_key + cfg.time_window:
            window.append(pending)
            pending = next(source, None)
        while window and window[0].time < t_key - cfg.time_window:
            window.popleft()
        acc = _Accumulator(cfg, device)
        for s in window:
            acc.add(s)
        if not cfg.dynamic:
            own = next((s for s in window if s.token == f.lidar.token), None)
            yield place_at_keyframe(f, acc.static_cloud(), own_sweep_objects(f, own))
            continue
        yield place_at_keyframe(f, acc.static_cloud(), acc)
