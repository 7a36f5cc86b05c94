"""The Argoverse 2 sensor rig of the synthetic world: the 7 ring cameras and one roof LiDAR.

Extrinsics (``egovehicle_SE3_sensor``), intrinsics and image sizes are the real ones of the AV2
sensor-dataset log ``val/7fab2350-7eaf-3b7e-a39d-6937a4c1bede`` (its ``calibration/*.feather``,
in ``../shared/realdata/av2-sensor``), copied here so that the generator needs no file at run time.
The real lens distortion (``k1, k2, k3``) is not modelled: the renders are ideal pinhole images and
the written ``intrinsics.feather`` says so (zeros).

Image size. AV2's ring cameras are 2048x1550 (``ring_front_center`` portrait, 1550x2048). A preset's
``image_width`` W sets the scale ``s = W / 2048``: landscape cameras are ``W x round(1550 s)``, the
portrait front camera ``round(1550 s) x W``, and ``K`` is the real one times ``s`` (focal lengths
and principal point; :func:`ring_camera`), exactly the intrinsics the images are rendered with.
Pixel convention as in the nuScenes writer: pixel ``(i, j)`` spans ``[i, i+1) x [j, j+1)`` of
``K``'s image plane (rays through ``i + 0.5``), so av2's ``uv = (K p)[:2] / z`` of a point equals
ours; av2 itself reads integer ``uv`` as pixel centres (the half-pixel offset that
``bevlabels.datasets.av2`` documents for real AV2 data).

Firing times. AV2's LiDAR spins at 10 Hz and triggers each 20 Hz ring camera as it sweeps past
it. The real log's pose table (a pose at every sensor timestamp) holds seven 20 Hz camera
clusters at -22.5, -17.5, -10, -2.5, +2.5, +12.5 and +17.5 ms from the nearest sweep; they are
the cameras' azimuths mapped to time, ``azimuth / 360 deg x 100 ms - 10 ms`` wrapped to
``[-25, 25)`` ms (the front camera at -10 ms, front-left at +2.5 ms, ...), which tells which
cluster is which camera. :data:`CAMERA_OFFSET_NS` holds them: each image lies within av2's
+-25 ms of its sweep.

The LiDAR. AV2 merges two stacked 32-beam LiDARs into one ego-frame sweep; the synthetic world
renders one spinning LiDAR (the preset's :class:`~bevlabels.synthetic.rig.LidarSpec`) mounted
where AV2's ``up_lidar`` is, and writes its points in the ego frame (``laser_number`` = its ring,
0 the lowest beam). The calibration lists ``down_lidar`` too (av2's ``Sweep.from_feather`` reads
both poses), though nothing is rendered from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevlabels.datasets.av2 import RING_CAMERAS
from bevlabels.geometry import transform_from_pose

#: AV2's landscape ring-camera image size (width, height); ``ring_front_center`` is (1550, 2048).
AV2_IMAGE_SIZE = (2048, 1550)
PORTRAIT_CAMERA = "ring_front_center"
LIDAR_NAME = "up_lidar"


@dataclass(frozen=True)
class AV2SensorCalib:
    """One sensor of the rig: pose in the ego frame (translation, rotation w, x, y, z) and, for a
    camera, its real intrinsics ``fx, fy, cx, cy`` and image size ``(width, height)``."""

    name: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    fxfycxcy: tuple[float, float, float, float] | None = None
    size: tuple[int, int] | None = None

    @property
    def ego_from_sensor(self) -> np.ndarray:
        """``(4, 4)`` ``egovehicle_SE3_sensor``."""
        return transform_from_pose(self.translation, self.rotation)


# AV2 sensor dataset, log val/7fab2350-7eaf-3b7e-a39d-6937a4c1bede (CC BY-NC-SA 4.0 data; calibration values only).
AV2_RIG: dict[str, AV2SensorCalib] = {
    "ring_front_center": AV2SensorCalib(
        "ring_front_center",
        (1.6350176513238963, 0.0026764466473251165, 1.3979667966613305),
        (0.5016454083000883, -0.49861992463738697, 0.5010700093854159, -0.4986570973931321),
        (1776.0414843455, 1776.0414843455, 777.9905731522801, 1013.5243245107571),
        (1550, 2048),
    ),
    "ring_front_left": AV2SensorCalib(
        "ring_front_left",
        (1.5457804598205394, 0.20369812501815315, 1.3942547233614708),
        (0.6370443421179737, -0.668888208122973, 0.276861731156097, -0.2647841631041512),
        (1687.5277831424328, 1687.5277831424328, 1031.4437114166703, 768.2538486428283),
        (2048, 1550),
    ),
    "ring_front_right": AV2SensorCalib(
        "ring_front_right",
        (1.551259573878562, -0.19923044066844628, 1.3979179552059033),
        (0.26402932593622547, -0.27728561086787995, 0.6702610722695515, -0.6357289517171294),
        (1685.8840901891408, 1685.8840901891408, 1028.006768314823, 766.1582232250313),
        (2048, 1550),
    ),
    "ring_side_left": AV2SensorCalib(
        "ring_side_left",
        (1.3055450433034086, 0.27568346854280557, 1.4074489240480248),
        (0.6877336618462229, -0.7214795406285526, -0.059285282990470756, 0.05454299257226344),
        (1688.195048553132, 1688.195048553132, 1027.7157091799895, 765.5452203336209),
        (2048, 1550),
    ),
    "ring_side_right": AV2SensorCalib(
        "ring_side_right",
        (1.305500263356305, -0.27879623228142614, 1.3959945222788004),
        (-0.05608575951139094, 0.05360200623431903, 0.723359075890559, -0.6860997448144425),
        (1686.7638467077434, 1686.7638467077434, 1028.958595729471, 764.8482765186745),
        (2048, 1550),
    ),
    "ring_rear_left": AV2SensorCalib(
        "ring_rear_left",
        (1.0901927612282827, 0.1261058854317256, 1.4187160692640517),
        (0.6018894923037899, -0.603460038324157, -0.36995572147209965, 0.36972663597602884),
        (1683.9427194028247, 1683.9427194028247, 1029.0437286531248, 765.7692585224911),
        (2048, 1550),
    ),
    "ring_rear_right": AV2SensorCalib(
        "ring_rear_right",
        (1.1005214781887618, -0.12716800711051623, 1.4150086218824551),
        (-0.3683557087809761, 0.3682228463383792, 0.603709017425702, -0.6035407438788373),
        (1689.2447690376894, 1689.2447690376894, 1027.0117714777393, 770.8190672087724),
        (2048, 1550),
    ),
    "up_lidar": AV2SensorCalib(
        "up_lidar", (1.35018, 0.0, 1.64042), (0.9999870714742982, 0.0, 0.0, -0.005084966495157445)
    ),
    # not rendered, but av2's Sweep.from_feather reads both LiDARs' poses from the calibration
    "down_lidar": AV2SensorCalib(
        "down_lidar",
        (1.3467614766959441, 0.0045669612308231996, 1.5254961741451358),
        (-0.0005378898980682196, -0.9949195814043752, 0.10067133271798985, -0.0001413555239330126),
    ),
}
LIDARS = ("up_lidar", "down_lidar")
assert tuple(n for n in AV2_RIG if n not in LIDARS) == RING_CAMERAS

#: each ring camera's firing time relative to its LiDAR sweep, nanoseconds (see the module docstring)
CAMERA_OFFSET_NS: dict[str, int] = {
    "ring_front_center": -10_000_000,
    "ring_front_left": 2_500_000,
    "ring_front_right": -22_500_000,
    "ring_side_left": 17_500_000,
    "ring_side_right": 12_500_000,
    "ring_rear_left": -17_500_000,
    "ring_rear_right": -2_500_000,
}


def image_size(camera: str, width: int) -> tuple[int, int]:
    """``(width, height)`` of ``camera``'s images for a preset's ``image_width``: AV2's aspect, front portrait."""
    w0, h0 = AV2_IMAGE_SIZE
    long_side, short_side = int(width), int(round(width * h0 / w0))
    return (short_side, long_side) if camera == PORTRAIT_CAMERA else (long_side, short_side)


def ring_camera(camera: str, width: int) -> tuple[np.ndarray, int, int]:
    """``(K (3, 3), width, height)`` of ``camera`` rendered for a preset's ``image_width``.

    ``K`` is the real one scaled by ``s = image_width / 2048`` (both focal lengths and the
    principal point); the image is the top-left ``width x height`` of the resized real image
    (``height`` rounded, so at most half a pixel of it is lost or added).
    """
    c = AV2_RIG[camera]
    fx, fy, cx, cy = c.fxfycxcy
    s = width / AV2_IMAGE_SIZE[0]
    K = np.array([[fx * s, 0.0, cx * s], [0.0, fy * s, cy * s], [0.0, 0.0, 1.0]])
    w, h = image_size(camera, width)
    return K, w, h
