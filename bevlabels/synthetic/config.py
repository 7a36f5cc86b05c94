"""What to generate: :class:`SynthConfig`, a plain frozen dataclass validated on construction.

The presets (``tiny``, ``small``, ``medium``) live only in ``conf/preset/*.yaml``; the library reads
them with :meth:`SynthConfig.from_preset` (plain YAML, no Hydra), the Hydra entry point
``pipelines.synth`` composes the same files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bevlabels.conf import CONF_DIR
from bevlabels.datasets.nuscenes import VERSION_SPLITS
from bevlabels.synthetic.rig import CAMERA_NAMES, LidarSpec

CONF_PRESET_DIR = CONF_DIR / "preset"

#: nuScenes versions the generator can write; their scene names come from the devkit splits of
#: :data:`bevlabels.datasets.nuscenes.VERSION_SPLITS`
VERSIONS = ("v1.0-mini", "v1.0-trainval")


class SynthConfigError(ValueError):
    """A synthetic-world parameter is impossible; the message names the field."""


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic dataset; the same config and seed give the same bytes.

    Scenes are named from the devkit's splits of ``version`` (``train_scenes`` names from its train
    split, ``val_scenes`` from its val split), so ``DetectionEval``/``TrackingEval`` find them.
    """

    name: str = "custom"
    version: str = "v1.0-mini"
    train_scenes: int = 8
    val_scenes: int = 2
    keyframes: int = 20  # per scene, at 2 Hz
    sweeps_per_keyframe: int = 10  # LiDAR sweeps per keyframe interval: 10 = 20 Hz
    image_width: int = 704
    image_height: int = 256
    cameras: tuple[str, ...] = CAMERA_NAMES
    lidar: LidarSpec = field(default_factory=LidarSpec)
    jpeg_quality: int = 90
    traffic_density: float = 1.0  # scales moving agents and parked vehicles; 0: none, and no ten-class guarantee
    annotation_range: float = 80.0  # metres (xy) from the ego within which objects are annotated
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if isinstance(self.lidar, dict):
            object.__setattr__(self, "lidar", _lidar_from_dict(self.lidar))
        self.validate()

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SynthConfigError` naming the first impossible field."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SynthConfigError(f"synthetic world: {what}")

        need(self.version in VERSIONS, f"version={self.version!r}: must be one of {sorted(VERSIONS)}")
        for f in ("train_scenes", "val_scenes", "keyframes", "sweeps_per_keyframe", "image_width", "image_height",
                  "jpeg_quality", "seed"):  # fmt: skip
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool), f"{f}={v!r}: must be an integer")
        need(self.train_scenes >= 0 and self.val_scenes >= 0, f"train_scenes={self.train_scenes}, val_scenes="
             f"{self.val_scenes}: scene counts cannot be negative")  # fmt: skip
        need(self.train_scenes + self.val_scenes >= 1, "train_scenes + val_scenes must be at least 1")
        need(self.keyframes >= 2, f"keyframes={self.keyframes}: a scene needs at least 2 keyframes (velocities)")
        need(self.sweeps_per_keyframe >= 1, f"sweeps_per_keyframe={self.sweeps_per_keyframe}: must be >= 1")
        need(self.image_width >= 16 and self.image_height >= 16,
             f"image size {self.image_width}x{self.image_height}: width and height must be >= 16 pixels")  # fmt: skip
        need(self.image_width <= 3200 and self.image_height <= 1800,
             f"image size {self.image_width}x{self.image_height}: at most 3200x1800")  # fmt: skip
        need(len(self.cameras) >= 1, "cameras is empty: at least one camera is needed")
        unknown = [c for c in self.cameras if c not in CAMERA_NAMES]
        need(not unknown, f"cameras: unknown channel(s) {unknown}; known: {list(CAMERA_NAMES)}")
        need(len(set(self.cameras)) == len(self.cameras), f"cameras={list(self.cameras)}: listed twice")
        need(1 <= self.jpeg_quality <= 95, f"jpeg_quality={self.jpeg_quality}: must be in [1, 95]")
        need(self.traffic_density >= 0, f"traffic_density={self.traffic_density}: cannot be negative")
        need(self.annotation_range > 0, f"annotation_range={self.annotation_range}: must be > 0")
        need(self.seed >= 0, f"seed={self.seed}: must be >= 0")
        li = self.lidar
        need(li.beams >= 1 and li.azimuth_steps >= 1, f"lidar beams={li.beams}, azimuth_steps={li.azimuth_steps}: "
             "must be >= 1")  # fmt: skip
        need(
            -90 <= li.fov_deg[0] < li.fov_deg[1] <= 90,
            f"lidar fov_deg={list(li.fov_deg)}: need -90 <= low < high <= 90",
        )
        need(0 < li.min_range < li.max_range, f"lidar min_range={li.min_range}, max_range={li.max_range}: need "
             "0 < min_range < max_range")  # fmt: skip
        from nuscenes.utils.splits import create_splits_scenes

        train_split, val_split = VERSION_SPLITS[self.version]
        splits = create_splits_scenes()
        for n, split in ((self.train_scenes, train_split), (self.val_scenes, val_split)):
            need(n <= len(splits[split]), f"{self.version} has {len(splits[split])} scene names in split {split!r}; "
                 f"{n} were asked for")  # fmt: skip

    # -- derived --------------------------------------------------------------------------------------
    def scene_names(self) -> list[tuple[str, str]]:
        """``(scene name, split)`` for every scene, train scenes first, names from the devkit splits."""
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        train_split, val_split = VERSION_SPLITS[self.version]
        return [(n, train_split) for n in sorted(splits[train_split])[: self.train_scenes]] + [
            (n, val_split) for n in sorted(splits[val_split])[: self.val_scenes]
        ]

    @property
    def val_split(self) -> str:
        """The devkit split name that evaluation uses for this dataset (``mini_val`` or ``val``)."""
        return VERSION_SPLITS[self.version][1]

    def to_dict(self) -> dict:
        """A JSON-able dict that :meth:`from_dict` reads back."""
        d = dataclasses.asdict(self)
        d["cameras"] = list(self.cameras)
        d["lidar"]["fov_deg"] = list(self.lidar.fov_deg)
        return d

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: Any, **overrides) -> SynthConfig:
        """From a mapping (a Hydra ``preset`` node, a preset YAML); unknown keys are an error."""
        cfg = {**dict(cfg), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise SynthConfigError(f"synthetic world: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**cfg)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SynthConfig:
        """The preset ``conf/preset/<name>.yaml`` (``tiny``, ``small``, ``medium``), with field overrides."""
        import yaml

        path = CONF_PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise SynthConfigError(f"unknown synthetic-world preset {name!r}; known presets: {preset_names()}")
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        return cls.from_dict(cfg, **overrides)


def preset_names() -> list[str]:
    """The presets in ``conf/preset/``."""
    return sorted(p.stem for p in CONF_PRESET_DIR.glob("*.yaml"))


def _lidar_from_dict(d: dict) -> LidarSpec:
    known = {f.name for f in dataclasses.fields(LidarSpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise SynthConfigError(f"synthetic world: unknown lidar parameter(s) {unknown}; known: {sorted(known)}")
    d = dict(d)
    if "fov_deg" in d:
        d["fov_deg"] = tuple(float(v) for v in d["fov_deg"])
        if len(d["fov_deg"]) != 2:
            raise SynthConfigError(f"synthetic world: lidar fov_deg={list(d['fov_deg'])} must be [low, high]")
    return LidarSpec(**d)
