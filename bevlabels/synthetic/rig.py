"""The nuScenes sensor rig of the synthetic world: six cameras and a 32-beam LIDAR_TOP.

Extrinsics, intrinsics and the cameras' firing offsets are the real ones of nuScenes v1.0-mini
scene-0061 (vehicle n015; the values of ``../shared/realdata/nuscenes-demo``, copied here so that
the generator needs no file at run time). Intrinsics are given for the real 1600x900 images and
mapped to a preset's resolution by :func:`camera_intrinsics` (resize, then crop the top, as
BEVDet-style pipelines do).

The LiDAR is a Velodyne HDL-32E as nuScenes mounts it: 32 rings spread evenly over
``[-30.67, +10.67]`` degrees of elevation, ~1084 azimuth steps per revolution at 20 Hz, points
``x, y, z, intensity, ring`` in the LIDAR_TOP frame (x to the ego's right, y forward, z up).

Shapes: R rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevlabels.geometry import image_aug_matrix, transform_from_pose

#: Camera channels in the usual nuScenes order.
CAMERA_NAMES = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR_NAME = "LIDAR_TOP"

#: Real image size of the nuScenes cameras (width, height); the intrinsics below refer to it.
NUSC_IMAGE_SIZE = (1600, 900)


@dataclass(frozen=True)
class SensorCalib:
    """One sensor's ``calibrated_sensor`` record: translation, rotation (w, x, y, z), K (cameras)."""

    channel: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    K: tuple[tuple[float, float, float], ...] | None = None
    #: firing time relative to the keyframe LiDAR timestamp, microseconds (scene-0061's offsets)
    offset_us: int = 0

    @property
    def ego_from_sensor(self) -> np.ndarray:
        """``(4, 4)`` calibration ``ego_from_<sensor>``."""
        return transform_from_pose(self.translation, self.rotation)


# nuScenes v1.0-mini, scene-0061, vehicle n015 (CC BY-NC-SA 4.0 data; calibration values only).
RIG: dict[str, SensorCalib] = {
    "LIDAR_TOP": SensorCalib(
        "LIDAR_TOP",
        (0.9437130093574524, 0.0, 1.8402299880981445),
        (0.7077955162816508, -0.006492242208333184, 0.01064621441113813, -0.7063073042356348),
    ),
    "CAM_FRONT": SensorCalib(
        "CAM_FRONT",
        (1.7007912397384644, 0.01594563201069832, 1.5109575986862183),
        (0.4998015550283196, -0.5030316162028607, 0.4997797976084801, -0.4973708270951752),
        ((1266.417203046554, 0.0, 816.2670197447984), (0.0, 1266.417203046554, 491.50706579294757), (0.0, 0.0, 1.0)),
        -35491,
    ),
    "CAM_FRONT_RIGHT": SensorCalib(
        "CAM_FRONT_RIGHT",
        (1.5508477687835693, -0.4934048056602478, 1.4957480430603027),
        (0.20603478850847173, -0.2026940523050441, 0.6824507803819122, -0.671361076840889),
        ((1260.8474446004698, 0.0, 807.968244525554), (0.0, 1260.8474446004698, 495.3344268742088), (0.0, 0.0, 1.0)),
        -27612,
    ),
    "CAM_FRONT_LEFT": SensorCalib(
        "CAM_FRONT_LEFT",
        (1.5238779783248901, 0.4946313500404358, 1.5093282461166382),
        (0.6757265024665337, -0.6736266502088498, 0.21214014434501835, -0.21122827045220982),
        ((1272.5979470598488, 0.0, 826.6154927353808), (0.0, 1272.5979470598488, 479.75165386361925), (0.0, 0.0, 1.0)),
        -43107,
    ),
    "CAM_BACK": SensorCalib(
        "CAM_BACK",
        (0.02832603082060814, 0.0034513676073402166, 1.5791034698486328),
        (0.5037872794680454, -0.4974024955259019, -0.49418502884491305, 0.5045496096013393),
        ((809.2209905677063, 0.0, 829.2196003259838), (0.0, 809.2209905677063, 481.77842384512485), (0.0, 0.0, 1.0)),
        -10426,
    ),
    "CAM_BACK_LEFT": SensorCalib(
        "CAM_BACK_LEFT",
        (1.0356910228729248, 0.4847950339317322, 1.5909701585769653),
        (0.6924185539528205, -0.7031619400016538, -0.11648343244956842, 0.11203317865825808),
        ((1256.7414812095406, 0.0, 792.1125740759628), (0.0, 1256.7414812095406, 492.7757465151356), (0.0, 0.0, 1.0)),
        -528,
    ),
    "CAM_BACK_RIGHT": SensorCalib(
        "CAM_BACK_RIGHT",
        (1.0148781538009644, -0.4805682301521301, 1.562395453453064),
        (0.12280980327545893, -0.13240084154796733, -0.7004305808062848, 0.6904960439070794),
        ((1259.5137405846733, 0.0, 807.2529053838625), (0.0, 1259.5137405846733, 501.19579884916527), (0.0, 0.0, 1.0)),
        -20058,
    ),
}


def camera_intrinsics(channel: str, width: int, height: int) -> np.ndarray:
    """``(3, 3)`` intrinsics of a camera rendered at ``width x height``.

    The real 1600x900 image is resized by ``width / 1600`` and then cropped: the top rows go when
    the resized image is taller than ``height`` (sky, as BEVDet crops 1600x900 to 704x256), an
    equal margin left and right when it is narrower than the requested aspect allows (then the
    resize follows the height instead).
    """
    K = np.asarray(RIG[channel].K, dtype=np.float64)
    w0, h0 = NUSC_IMAGE_SIZE
    scale = width / w0
    if h0 * scale >= height:  # wider aspect than 16:9 (or equal): crop the top
        crop = (0.0, h0 * scale - height)
    else:  # taller aspect: resize to the height, crop both sides
        scale = height / h0
        crop = ((w0 * scale - width) / 2.0, 0.0)
    return image_aug_matrix(scale=scale, crop_xy=crop) @ K


@dataclass(frozen=True)
class LidarSpec:
    """A spinning LiDAR: rings evenly spread over ``fov_deg`` elevation, ``azimuth_steps`` per turn."""

    beams: int = 32
    azimuth_steps: int = 1084
    fov_deg: tuple[float, float] = (-30.67, 10.67)
    max_range: float = 70.0
    min_range: float = 1.0

    def ray_directions(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit directions ``(R, 3)`` in the LiDAR frame and their ring index ``(R,)``, R = beams * azimuth_steps.

        Ordered as the sensor fires: azimuth-major (one column of all rings per step), ring 0 the
        lowest beam.
        """
        elev = np.deg2rad(np.linspace(self.fov_deg[0], self.fov_deg[1], self.beams))  # (beams,)
        azim = 2.0 * np.pi * np.arange(self.azimuth_steps) / self.azimuth_steps  # (A,)
        ce, se = np.cos(elev)[None, :], np.sin(elev)[None, :]
        ca, sa = np.cos(azim)[:, None], np.sin(azim)[:, None]
        dirs = np.stack([ce * ca, ce * sa, np.broadcast_to(se, (self.azimuth_steps, self.beams))], -1)  # (A, beams, 3)
        ring = np.broadcast_to(np.arange(self.beams), (self.azimuth_steps, self.beams))
        return dirs.reshape(-1, 3), ring.reshape(-1).astype(np.float32)
