"""The label store's schema, version 2: every array's name, dtype and shape, as data, in one place.

A label store is one zarr v3 group on a local or shared filesystem. Letters: ``S`` keyframes (all
keyframes of the dataset, in scene order), ``C`` foundation-feature channels, ``H, W`` the BEV grid
(``GridSpec.shape``), ``R`` the rows of one keyframe's ``lidar_px`` table, ``C_t, H_t, W_t`` the
teacher map's channels and size.

================  ===================  ========  ========================================================
path              shape                dtype     meaning
================  ===================  ========  ========================================================
attrs                                            ``format``, ``schema_version``, ``grid``
                                                 (``GridSpec.to_dict()``), ``dataset`` (name, version,
                                                 root), ``feature_model`` (name, weights provenance
                                                 ``pretrained:<id>``, ``random-init`` or ``oracle:<what>``,
                                                 channels, ...),
                                                 ``params`` (label parameters that change the values),
                                                 ``config`` (resolved), ``versions`` (libraries),
                                                 ``created``, ``failures`` (``{stage: {scene: reason}}``),
                                                 ``stages`` (per stage: done flag, arrays, tables, identity)
``sample_token``  (S,)                 str       keyframe token, in scene order
``scene``         (S,)                 str       scene name of each keyframe
``done``          (S,)                 bool      written last, per keyframe: the resume marker
``dino/feat``     (S, C, H, W)         float16   mean foundation feature per BEV cell (0 where empty)
``dino/count``    (S, H, W)            uint16    number of visible accumulated points pooled in the cell
``lidar_px/{s}``  (R, 5) per keyframe  float32   columns ``cam, u, v, depth, obj``: every LiDAR point of
                                                 keyframe ``s`` projected into every camera it lands in,
                                                 at the original image resolution; ``obj`` is the index
                                                 of the GT box it lies in, -1 for none
``teacher/bev``   (S, C_t, H_t, W_t)   float16   the LiDAR teacher's BEV feature map (teacher stage)
``teacher/done``  (S,)                 bool      the teacher stage's resume marker
================  ===================  ========  ========================================================

Axis convention of the BEV arrays (``bevlabels.grid``): the last two axes ``(H, W)`` are rows
along the ego **y** axis and columns along the ego **x** axis, row 0 at the most negative y,
column 0 at the most negative x: ``dino_count[s, iy, ix]``.

Stages. The label stage (``LABELS``) writes ``done``, ``dino/*`` and ``lidar_px``; a later stage
(``TEACHER``) adds its own arrays and its own done flags with the same rules. A stage is a
:class:`StageSpec`; the store records each stage it holds in ``attrs["stages"]``, and writers and
readers take array names, shapes and table columns from there.

Chunks and codecs. Per-keyframe arrays have one keyframe per chunk (``(1, C, H, W)``,
``(1, H, W)``, ``(1,)`` for done flags), so a task writing keyframe ``s`` touches only its own
chunk files. Codecs are zarr's defaults for v3 (``bytes`` then ``zstd`` level 0, i.e. zstd's
default level, no checksum); chunks equal to the fill value are not written (zarr's default), and
read back as the fill value.

``lidar_px`` layout. One float32 array ``lidar_px/{s:06d}`` of shape ``(R, 5)`` per keyframe, one
chunk, created by the task that writes keyframe ``s`` (re-created on a rerun): a ragged table with
one writer per keyframe needs no shared offsets, and a single dtype keeps it one array, so the
integer columns ``cam`` (0..255) and ``obj`` (-1..) are stored as float32, which holds every integer
of magnitude up to 2**24 exactly; the writer checks that bound and the reader casts back
(``cam`` uint8, ``obj`` int32). ``R`` may be 0.

Strings. ``sample_token`` and ``scene`` are fixed-width unicode (numpy ``<U{n}``, zarr's
``fixed_length_utf32``; ``n`` is the longest string), chunked as one chunk. zarr 3.1's
variable-length ``str`` (``vlen-utf8``) warns on every read of the array's metadata; the fixed-width
type warns only when created, which the writer silences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

#: 2 (issue 32): the label stage's visibility test became occlusion-correct (the keyframe's GT boxes as solid
#: occluders, a 2 px z-buffer, the ground under an object unlabelled); ``params.visibility`` records the method.
#: A version-1 store's ``dino/*`` leak object features onto the ground behind objects: it is refused.
SCHEMA_VERSION = 2
STORE_FORMAT = "bevlabels-label-store"  # attrs["format"]: tells a label store from another zarr group

SAMPLE_TOKEN = "sample_token"
SCENE = "scene"

# float32 holds every integer of magnitude <= 2**24 exactly.
FLOAT32_EXACT_INT = 2**24


@dataclass(frozen=True)
class ArraySpec:
    """A per-keyframe array ``(S, *shape)``: ``shape`` names its per-keyframe axes by letters."""

    name: str
    dtype: str
    shape: tuple[str, ...]
    fill_value: float | int | bool = 0
    meaning: str = ""

    def keyframe_shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The shape of one keyframe's slice, letters resolved through ``dims``."""
        missing = [d for d in self.shape if d not in dims]
        if missing:
            raise KeyError(f"{self.name}: dims {missing} not given (have {dict(dims)})")
        return tuple(int(dims[d]) for d in self.shape)


@dataclass(frozen=True)
class TableSpec:
    """A per-keyframe table of ``R`` rows, stored as one float32 array ``{name}/{s:06d}`` ``(R, len(columns))``.

    ``columns`` are ``(name, dtype)`` pairs: the dtype the reader returns. Integer columns must lie in
    ``[-2**24, 2**24]`` (exact in float32) and in their dtype's range.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    meaning: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def key(self, s: int) -> str:
        """The array path of keyframe ``s``'s table, e.g. ``lidar_px/000012``."""
        return table_key(self.name, s)


@dataclass(frozen=True)
class StageSpec:
    """A stage's per-keyframe outputs: arrays and tables, and the done flags it writes last."""

    name: str
    done: str
    arrays: tuple[ArraySpec, ...]
    tables: tuple[TableSpec, ...] = ()
    coverage: str | None = None  # a count array (S, H, W): summary() reports the share of cells > 0
    meaning: str = ""
    dims: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.dims:
            letters = []
            for a in self.arrays:
                letters += [d for d in a.shape if d not in letters]
            object.__setattr__(self, "dims", tuple(letters))

    @property
    def paths(self) -> tuple[str, ...]:
        """Every store path the stage owns (done flags, arrays, table groups)."""
        return (self.done, *(a.name for a in self.arrays), *(t.name for t in self.tables))


def table_key(name: str, s: int) -> str:
    """The array path of keyframe ``s``'s table ``name``: ``{name}/{s:06d}``."""
    return f"{name}/{int(s):06d}"


LIDAR_PX = TableSpec(
    "lidar_px",
    columns=(("cam", "uint8"), ("u", "float32"), ("v", "float32"), ("depth", "float32"), ("obj", "int32")),
    meaning="LiDAR points projected into the cameras: camera index, pixel (u, v) at the original "
    "image resolution, depth along the camera's z (m), index of the GT box holding the point or -1",
)

LABELS = StageSpec(
    name="labels",
    done="done",
    arrays=(
        ArraySpec("dino/feat", "float16", ("C", "H", "W"), 0, "mean foundation feature per BEV cell (0 where empty)"),
        ArraySpec("dino/count", "uint16", ("H", "W"), 0, "visible accumulated points pooled in the cell"),
    ),
    tables=(LIDAR_PX,),
    coverage="dino/count",
    meaning="foundation-model BEV maps and projected LiDAR pixels (pipelines.labels)",
)

TEACHER = StageSpec(
    name="teacher",
    done="teacher/done",
    arrays=(ArraySpec("teacher/bev", "float16", ("C_t", "H_t", "W_t"), 0, "the LiDAR teacher's BEV feature map"),),
    meaning="a trained LiDAR teacher's BEV maps (pipelines.teacher)",
)

STAGES: dict[str, StageSpec] = {s.name: s for s in (LABELS, TEACHER)}


def string_dtype(values) -> np.dtype:
    """The fixed-width unicode dtype ``<U{n}`` that holds every string of ``values`` (``n >= 1``)."""
    return np.dtype(f"<U{max([len(v) for v in values] + [1])}")


def stage_entry(stage: StageSpec, dims: Mapping[str, int], identity: Mapping, created: str) -> dict:
    """The JSON record of a stage in ``attrs["stages"]``: what it wrote, with which shapes, from what."""
    return {
        "done": stage.done,
        "arrays": {a.name: {"dtype": a.dtype, "shape": list(a.shape)} for a in stage.arrays},
        "tables": {t.name: {"columns": [list(c) for c in t.columns]} for t in stage.tables},
        "dims": {d: int(dims[d]) for d in stage.dims},
        "coverage": stage.coverage,
        "identity": dict(identity),
        "created": created,
    }
