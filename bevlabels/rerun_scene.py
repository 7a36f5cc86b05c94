"""A driving scene as a rerun recording (``.rrd``): cameras, LiDAR, BEV grids, boxes and tracks, over time.

rerun (``rerun-sdk``, this project's ``viz`` extra: ``pip install -e ".[viz]"``, which ``make setup`` installs) is
imported lazily, so nothing else needs it; :func:`require_rerun` says how to get it. Open a recording with
``rerun <file>.rrd``. This module writes what it is given; the entry point that reads a dataset, a label store and
result files and gives them here is ``python -m trainer.view``.

Timelines: ``keyframe`` (the keyframe's index in its scene) and ``time`` (its LiDAR sweep's timestamp). Every 3D
entity is in the **global frame** (``world``, z up), where the devkits keep annotations and result files keep
boxes; ego-frame data (boxes of a :class:`~bevlabels.datasets.base.Frame`, accumulated LiDAR) is moved there with
the keyframe's ``global_from_ego``.

==========================================  ==============  =====================================================
entity                                      archetype       what
==========================================  ==============  =====================================================
``world``                                   ViewCoordinates right-handed, z up (static)
``world/ego``                               Transform3D     the keyframe's ``global_from_ego`` (its axes drawn)
``world/ego/cam/<CAM>``                     Transform3D,    ``key_ego_from_cam`` (through the camera's own ego
                                            Pinhole         pose); ``K`` and the image size, OpenCV axes (RDF)
``world/ego/cam/<CAM>/image``               EncodedImage    the camera's JPEG as it is on disk
``world/ego/cam/<CAM>/image/<kind>``        LineStrips2D    the 12 edges of each box of ``<kind>`` (``gt``,
                                                            ``pred``, ``tracks``) wholly in front of the camera and
                                                            meeting its image, projected here
                                                            (:func:`bevlabels.geometry.project_box_edges`)
``world/ego_path``                          LineStrips3D    the ego's positions up to this keyframe
``world/lidar/static``                      Points3D        accumulated static points (grey)
``world/lidar/dynamic``                     Points3D        object points carried with their boxes (orange)
``world/lidar/sweep``                       Points3D        the keyframe's own LiDAR sweep (cyan)
``world/gt``                                Boxes3D         GT boxes (green), labelled by class
``world/pred``                              Boxes3D         detections, coloured by class, labelled ``class score``
``world/tracks/<id>``                       Boxes3D         a track's box, coloured by id; cleared (with its
                                                            trail) at keyframes where the track is absent
``world/tracks/<id>/trail``                 LineStrips3D    the track's centres up to this keyframe
``bev/target``, ``bev/teacher``             Image           a BEV grid in colours (:class:`bevlabels.viz.PcaColours`),
                                                            +x (forward) right and +y (left) up, as in the PNGs
``bev/<grid>/gt``                           LineStrips2D    GT footprints on that grid
``log``                                     TextLog         what is missing from the recording, and why
``description``                             TextDocument    the scene and where each part came from (static)
==========================================  ==============  =====================================================

The boxes on the camera images are drawn by this module (the same projection as ``scripts/render_predictions.py``),
not by rerun's projection of 3D entities through a pinhole: they show exactly where the project's own geometry puts
them. The cameras still carry their pose and intrinsics, so the 3D view shows their frustums and images, and a
camera view can be given ``/world/**`` to let rerun project the 3D scene too.

rerun 0.23.1 is the last release that accepts numpy < 2 (which nuscenes-devkit needs), and part of its Python API
fails on numpy 1.x (``AnnotationContext``: ``asarray() got an unexpected keyword argument 'copy'``): colours are
therefore logged per box, never through an annotation context, and the recording is written in rerun's strict mode,
so a part that rerun cannot serialise raises instead of being dropped with a warning (strict mode is on from
:class:`SceneRecording`'s creation to its :meth:`~SceneRecording.close`).

Shapes: M boxes ``(M, 9)`` in the layout of :mod:`bevlabels.geometry`, P points ``(P, >=3)``, ``(H, W)`` a grid.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bevlabels import geometry as g
from bevlabels.datasets.base import Frame
from bevlabels.grid import GridSpec

#: how to get rerun, in every message that needs it
INSTALL_HINT = 'pip install -e ".[viz]" (or `make setup`, which installs it): rerun-sdk==0.23.1'

GT_COLOUR = (51, 221, 85)  # scripts/render_predictions.py's GT green
STATIC_COLOUR = (150, 150, 150)
DYNAMIC_COLOUR = (255, 127, 14)  # matplotlib's tab:orange, as viz.label_sheet draws dynamic points
SWEEP_COLOUR = (0, 200, 255)
EGO_COLOUR = (255, 255, 255)
UNKNOWN_COLOUR = (153, 153, 153)


def require_rerun():
    """The ``rerun`` module; an ``ImportError`` saying how to install it when it is missing."""
    try:
        import rerun
    except ImportError as e:
        raise ImportError(f"the scene viewer needs rerun, which is not installed: {INSTALL_HINT}") from e
    return rerun


def class_colour(name: str | None) -> tuple[int, int, int]:
    """The colour of a detection class: :data:`bevlabels.viz.ORACLE_COLOURS`' (grey for an unknown class)."""
    from matplotlib.colors import to_rgb

    from bevlabels.viz import ORACLE_COLOURS

    if name not in ORACLE_COLOURS:
        return UNKNOWN_COLOUR
    return tuple(int(round(255 * c)) for c in to_rgb(ORACLE_COLOURS[name]))


def id_colour(track_id: str) -> tuple[int, int, int]:
    """A track id's colour: matplotlib's ``tab20`` by the id's number (by a hash of an id that is not a number)."""
    from matplotlib import colormaps

    try:
        k = int(track_id)
    except ValueError:
        k = zlib.crc32(str(track_id).encode())
    return tuple(int(round(255 * c)) for c in colormaps["tab20"](k % 20)[:3])


def box_arrays(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """``rr.Boxes3D``'s ``centers (M, 3)``, ``half_sizes (M, 3)`` (along the box's length, width, height) and
    ``quaternions (M, 4)`` (x, y, z, w: rerun's order; a turn by the yaw about +z) of upright boxes ``(M, >=7)``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, g.BOX_DIM)
    wxyz = g.yaw_to_quat(boxes[:, g.YAW])  # (M, 4)
    return {
        "centers": boxes[:, [g.X, g.Y, g.Z]],
        "half_sizes": boxes[:, [g.L, g.W, g.H]] / 2,
        "quaternions": wxyz[:, [1, 2, 3, 0]],
    }


def bev_footprints(boxes_ego: np.ndarray, grid: GridSpec, image_hw: tuple[int, int]) -> list[np.ndarray]:
    """The bottom face of each of ``boxes_ego (M, >=7)`` (the keyframe's ego frame) as a closed ``(5, 2)`` pixel
    polyline on a BEV image of ``image_hw`` that spans ``grid``, rows flipped (+y up, as :meth:`SceneRecording.bev`
    logs it)."""
    if not len(boxes_ego):
        return []
    H, W = image_hw
    corners = g.box_corners(np.asarray(boxes_ego, dtype=np.float64))[:, [2, 3, 7, 6, 2], :2]  # (M, 5, 2) bottom face
    cell = grid.metric_to_cell(corners)  # (M, 5, 2) continuous (ix, iy)
    u = cell[..., 0] * (W / grid.nx)
    v = H - cell[..., 1] * (H / grid.ny)
    return list(np.stack([u, v], -1))


def _overlaps_image(edges: np.ndarray, width: int, height: int) -> bool:
    """Whether the pixel bounding box of a box's projected ``edges (12, 2, 2)`` meets a ``width x height`` image."""
    lo, hi = edges.reshape(-1, 2).min(0), edges.reshape(-1, 2).max(0)
    return bool(hi[0] >= 0 and lo[0] < width and hi[1] >= 0 and lo[1] < height)


def _strict_mode(on: bool | None = None) -> bool:
    """rerun's strict mode (a part it cannot serialise raises instead of being dropped with a warning): what it was,
    after setting it to ``on`` when given."""
    from rerun.error_utils import set_strict_mode, strict_mode

    before = strict_mode()
    if on is not None:
        set_strict_mode(on)
    return before


def media_type(path: str | Path) -> str:
    """The image media type of a file, by its suffix (``image/jpeg`` for ``.jpg``; ``image/png``)."""
    suffix = Path(path).suffix.lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(suffix, "image/jpeg")


def camera_order(names: Sequence[str]) -> list[str]:
    """The cameras as a driver sees them (:data:`bevlabels.viz.CAMERA_LAYOUT`, row by row) when they are nuScenes'
    six; otherwise as given."""
    from bevlabels.viz import CAMERA_LAYOUT

    layout = [c for row in CAMERA_LAYOUT for c in row]
    return layout if set(names) == set(layout) else list(names)


#: the kinds of boxes drawn on the camera images (``world/ego/cam/<CAM>/image/<kind>``)
BOX_KINDS = ("gt", "pred", "tracks")


def default_blueprint(camera_names: Sequence[str], bev: Sequence[str] = ("target", "teacher")):
    """The layout a recording opens with: the cameras in a grid above; below, the 3D world seen from the ego (it
    follows the ego as the time runs) and the BEV grids ``bev/<name>`` of ``bev``. The side panels start collapsed.

    The 3D view leaves out the boxes drawn on the images: rerun would draw them on each camera's image plane."""
    import rerun.blueprint as rrb

    cams = camera_order(camera_names)
    views = [rrb.Spatial2DView(origin=f"world/ego/cam/{c}", name=c) for c in cams]
    flat = [f"- /world/ego/cam/{c}/image/{k}" for c in cams for k in BOX_KINDS]
    below = [rrb.Spatial3DView(origin="world/ego", contents=["/world/**", *flat], name="world, seen from the ego")]
    below += [rrb.Spatial2DView(origin=f"bev/{b}", name=f"BEV {b}") for b in bev]
    return rrb.Blueprint(
        rrb.Vertical(
            rrb.Grid(*views, grid_columns=3),
            rrb.Horizontal(*below, column_shares=[2] + [1] * len(bev)),
            row_shares=[1, 2],
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="collapsed"),
    )


class SceneRecording:
    """A ``.rrd`` file being written, one keyframe at a time (the module docstring lists what is logged where).

    Call :meth:`keyframe` first for each keyframe (it sets the time and logs the ego, the cameras and the GT), then
    any of :meth:`lidar`, :meth:`sweep`, :meth:`detections`, :meth:`tracks`, :meth:`bev`, :meth:`warn`; then
    :meth:`close` (or use it as a context manager). A keyframe's cameras must have JPEG images on disk to be shown.
    """

    def __init__(
        self,
        path: str | Path,
        scene: str,
        camera_names: Sequence[str],
        bev: Sequence[str] = ("target", "teacher"),
        description: str = "",
        application_id: str = "bevlabels.view",
    ):
        self.rr = require_rerun()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.scene = scene
        self.rec = self.rr.RecordingStream(application_id)
        self._frame: Frame | None = None
        self._ego_path: list[np.ndarray] = []
        self._trails: dict[str, list[np.ndarray]] = {}
        self._live_tracks: set[str] = set()
        self._warned: set[str] = set()
        self.counts: dict[str, int] = {}  # entity -> how many keyframes logged it (a summary for the caller)
        self._strict_before = _strict_mode(True)  # until close(): archetypes are built before they are logged
        self.rec.save(self.path, default_blueprint=default_blueprint(camera_names, bev))
        self.rec.log("world", self.rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        if description:
            self.rec.log(
                "description", self.rr.TextDocument(description, media_type=self.rr.MediaType.MARKDOWN), static=True
            )

    # -- bookkeeping ------------------------------------------------------------------------------
    def __enter__(self) -> SceneRecording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> Path:
        """Flush and close the file; returns its path."""
        self.rec.flush(blocking=True)
        self.rec.disconnect()
        _strict_mode(self._strict_before)
        return self.path

    def _log(self, entity: str, *archetypes, static: bool = False) -> None:
        self.rec.log(entity, *archetypes, static=static)
        if not static:
            self.counts[entity] = self.counts.get(entity, 0) + 1

    @property
    def frame(self) -> Frame:
        if self._frame is None:
            raise RuntimeError("SceneRecording: call keyframe(frame) before logging a keyframe's data")
        return self._frame

    def warn(self, message: str, once: str | None = None) -> None:
        """A warning in the recording's ``log`` (at the current time); ``once``: only the first with that key."""
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        self._log("log", self.rr.TextLog(message, level=self.rr.TextLogLevel.WARN))

    # -- one keyframe -----------------------------------------------------------------------------
    def keyframe(self, frame: Frame, gt_labels: Sequence[str] | None = None) -> None:
        """Start keyframe ``frame``: the time, the ego pose and its path, the cameras and their images, the GT.

        ``gt_labels``: a label per GT box (default: its detection class, else its category)."""
        rr = self.rr
        self._frame = frame
        self.rec.set_time("keyframe", sequence=int(frame.index))
        self.rec.set_time("time", timestamp=np.datetime64(int(frame.timestamp), "us"))
        T = np.asarray(frame.global_from_ego, dtype=np.float64)
        self._log("world/ego", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3], axis_length=2.0))
        self._ego_path.append(T[:3, 3].copy())
        self._log(
            "world/ego_path",
            rr.LineStrips3D([np.stack(self._ego_path)], colors=[EGO_COLOUR], radii=rr.Radius.ui_points(2.0)),
        )
        for cam in frame.cameras:
            E = np.asarray(frame.key_ego_from_cam(cam), dtype=np.float64)
            base = f"world/ego/cam/{cam.name}"
            self._log(
                base,
                rr.Transform3D(translation=E[:3, 3], mat3x3=E[:3, :3]),
                rr.Pinhole(
                    image_from_camera=np.asarray(cam.K, dtype=np.float64),
                    resolution=[int(cam.width), int(cam.height)],
                    camera_xyz=rr.ViewCoordinates.RDF,
                    image_plane_distance=2.0,
                ),
            )
            if cam.has_image:
                self._log(
                    f"{base}/image",
                    rr.EncodedImage(contents=Path(cam.image_path).read_bytes(), media_type=media_type(cam.image_path)),
                )
            else:
                self.warn(f"{cam.name}: no image at {cam.image_path}", once=f"image:{cam.name}")
        boxes = frame.boxes
        labels = (
            list(gt_labels)
            if gt_labels is not None
            else [d or c for d, c in zip(boxes.detection_class, boxes.category)]
        )
        gt_global = g.transform_boxes(frame.global_from_ego, boxes.boxes) if len(boxes) else np.zeros((0, g.BOX_DIM))
        self._boxes("world/gt", "gt", gt_global, [GT_COLOUR] * len(gt_global), labels)

    def _boxes(self, entity: str, kind: str, boxes_global: np.ndarray, colours, labels) -> None:
        """Boxes3D at ``entity`` and their projected edges on every camera image (``.../image/<kind>``)."""
        rr = self.rr
        self._log(
            entity,
            rr.Boxes3D(
                **box_arrays(boxes_global), colors=np.asarray(colours, np.uint8).reshape(-1, 3), labels=list(labels)
            ),
        )
        self._project(kind, boxes_global, colours)

    def _project(self, kind: str, boxes_global: np.ndarray, colours) -> None:
        rr, frame = self.rr, self.frame
        for cam in frame.cameras:
            cam_from_global = g.invert_transform(frame.global_from_ego @ frame.key_ego_from_cam(cam))
            strips, strip_colours = [], []
            for edges, colour in zip(g.project_box_edges(boxes_global, cam_from_global, cam.K), colours):
                if edges is None or not _overlaps_image(edges, cam.width, cam.height):
                    continue
                strips += list(edges)  # 12 segments of (2, 2)
                strip_colours += [colour] * len(edges)
            self._log(
                f"world/ego/cam/{cam.name}/image/{kind}",
                rr.LineStrips2D(
                    strips, colors=np.asarray(strip_colours, np.uint8).reshape(-1, 3), radii=rr.Radius.ui_points(1.0)
                ),
            )

    def lidar(self, points_ego: np.ndarray, box_index: np.ndarray, static: bool = True) -> None:
        """The keyframe's accumulated cloud (:class:`~bevlabels.lidar.accumulate.AccumulatedCloud`'s ``points (P,
        >=3)`` in its ego frame and ``box_index (P,)``, -1 for static points), moved to the global frame.
        ``static=False`` leaves the static points out (a scene-wide static map the same at every keyframe is logged
        once, at the first)."""
        rr = self.rr
        pts = g.transform_points(self.frame.global_from_ego, np.asarray(points_ego)[:, :3].astype(np.float64))
        dyn = np.asarray(box_index) >= 0
        if static:
            self._log(
                "world/lidar/static",
                rr.Points3D(pts[~dyn].astype(np.float32), colors=[STATIC_COLOUR], radii=rr.Radius.ui_points(1.0)),
            )
        self._log(
            "world/lidar/dynamic",
            rr.Points3D(pts[dyn].astype(np.float32), colors=[DYNAMIC_COLOUR], radii=rr.Radius.ui_points(2.0)),
        )

    def sweep(self, points_global: np.ndarray) -> None:
        """The keyframe's own LiDAR sweep ``(P, >=3)``, already in the global frame."""
        rr = self.rr
        self._log(
            "world/lidar/sweep",
            rr.Points3D(
                np.asarray(points_global)[:, :3].astype(np.float32),
                colors=[SWEEP_COLOUR],
                radii=rr.Radius.ui_points(1.0),
            ),
        )

    def detections(self, boxes_global: np.ndarray, names: Sequence[str], scores: Sequence[float]) -> None:
        """Detected boxes ``(M, >=7)`` in the global frame, coloured by class ``names``, labelled with their scores."""
        labels = [f"{n} {s:.2f}" for n, s in zip(names, scores)]
        self._boxes("world/pred", "pred", boxes_global, [class_colour(n) for n in names], labels)

    def tracks(self, ids: Sequence[str], boxes_global: np.ndarray, names: Sequence[str]) -> None:
        """This keyframe's tracked boxes ``(K, >=7)`` (global frame) with their ids: each track's box and trail;
        tracks of earlier keyframes that are absent now are cleared."""
        rr = self.rr
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"keyframe {self.frame.token}: track ids {dup[:5]} appear more than once")
        for gone in sorted(self._live_tracks - set(ids)):
            self._log(f"world/tracks/{rr.escape_entity_path_part(gone)}", rr.Clear(recursive=True))
            self._trails.pop(gone, None)  # a track that comes back starts a new trail
        self._live_tracks = set(ids)
        colours = [id_colour(i) for i in ids]
        arrays = box_arrays(boxes_global)
        for k, tid in enumerate(ids):
            entity = f"world/tracks/{rr.escape_entity_path_part(tid)}"
            self._log(
                entity,
                rr.Boxes3D(
                    centers=arrays["centers"][k : k + 1],
                    half_sizes=arrays["half_sizes"][k : k + 1],
                    quaternions=arrays["quaternions"][k : k + 1],
                    colors=[colours[k]],
                    labels=[f"{tid} {names[k]}"],
                ),
            )
            trail = self._trails.setdefault(tid, [])
            trail.append(arrays["centers"][k].copy())
            self._log(
                f"{entity}/trail",
                rr.LineStrips3D([np.stack(trail)], colors=[colours[k]], radii=rr.Radius.ui_points(1.5)),
            )
        self._project("tracks", boxes_global, colours)

    def bev(self, name: str, rgb: np.ndarray, grid: GridSpec) -> None:
        """A BEV grid's colours ``(H, W, 3)`` in [0, 1] (rows along ego y, as stored) at ``bev/<name>``, shown with
        +y up, and the keyframe's GT footprints on it (the image spans ``grid``)."""
        rr = self.rr
        rgb = np.asarray(rgb)
        assert rgb.ndim == 3 and rgb.shape[-1] == 3, f"a BEV image is (H, W, 3); got {rgb.shape}"
        img = (np.clip(rgb[::-1], 0, 1) * 255 + 0.5).astype(np.uint8)  # row 0 at the top: +y up
        self._log(f"bev/{name}", rr.Image(img))
        boxes = self.frame.boxes.boxes
        self._log(
            f"bev/{name}/gt",
            rr.LineStrips2D(
                bev_footprints(boxes, grid, rgb.shape[:2]), colors=[GT_COLOUR], radii=rr.Radius.ui_points(1.0)
            ),
        )


__all__ = [
    "INSTALL_HINT",
    "SceneRecording",
    "bev_footprints",
    "box_arrays",
    "camera_order",
    "class_colour",
    "default_blueprint",
    "id_colour",
    "require_rerun",
]
