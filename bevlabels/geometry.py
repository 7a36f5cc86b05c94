"""Frames, rigid transforms, camera projection and 3D boxes (numpy and torch alike).

Every function here takes numpy arrays or torch tensors and returns the same kind; nothing loops
over points in Python.

Frames
------
``global``  the dataset's map frame (nuScenes ``global``, AV2 ``city``); z up.
``ego``     the vehicle body at one timestamp: x forward, y left, z up, origin at the rear axle
            (nuScenes) or the vehicle origin (AV2).
``lidar``   the LiDAR sensor frame, as calibrated by the dataset.
``cam``     an OpenCV camera: x right, y down, z forward along the optical axis.
``img``     continuous pixel coordinates ``(u, v)``: u right, v down, pixel ``(i, j)`` covers
            ``[i, i+1) x [j, j+1)``, so resizing by ``s`` maps ``u -> s*u``, cropping at ``x0`` maps
            ``u -> u - x0`` and a horizontal flip of a ``W``-wide image maps ``u -> W - u``.
            Datasets' intrinsics are used unchanged (``u = fx x/z + cx``, exactly the devkits'
            pixels); their calibration puts pixel centres at integer u (OpenCV), so reading u as
            continuous is a half-pixel shift at the original resolution, accepted as BEVDepth
            and its successors accept it, in exchange for exact resize/crop/flip algebra.

Transforms
----------
4x4 homogeneous matrices acting on column vectors, named ``a_from_b`` (they map points expressed
in frame ``b`` to frame ``a``), composed right to left: ``cam_from_lidar = cam_from_ego @
ego_from_lidar``. Point clouds are stored as rows ``(N, 3)``; :func:`transform_points` applies
``p_a = R p_b + t`` to each row. Image augmentation is folded into the intrinsics:
``K_aug = aug_from_img @ K`` with the 3x3 matrices of :func:`image_aug_matrix`.

Quaternions are ``(w, x, y, z)``, scalar first, as in nuScenes, pyquaternion and AV2.

Boxes
-----
One layout, ``(M, 9)`` float: ``X, Y, Z`` the box *centre* (not the bottom), ``L`` extent along
the box's own x (heading) axis, ``W`` along its y axis, ``H`` along z, ``YAW`` the heading about
+z in the frame the box is expressed in, counter-clockwise from +x, in radians, and ``VX, VY`` the
velocity in m/s in that same frame (NaN when unknown). Only yaw is kept: boxes are upright.

Shapes: N points, M boxes, ``...`` any leading batch dimensions.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor

# Named box columns: the one box layout used everywhere in bevlabels.
X, Y, Z, L, W, H, YAW, VX, VY = range(9)
BOX_DIM = 9
BOX_COLUMNS = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")


# ---------------------------------------------------------------------------------------------
# numpy / torch dispatch


def _is_torch(a: Array) -> bool:
    return isinstance(a, torch.Tensor)


def _xp(a: Array):
    """Return the array namespace (``torch`` or ``numpy``) that ``a`` belongs to."""
    return torch if _is_torch(a) else np


def _eye(n: int, like: Array) -> Array:
    if _is_torch(like):
        return torch.eye(n, dtype=like.dtype, device=like.device)
    return np.eye(n, dtype=like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64)


def to_numpy(a: Array) -> np.ndarray:
    """A numpy array of a tensor (detached, on the host) or of anything ``np.asarray`` takes."""
    return a.detach().cpu().numpy() if _is_torch(a) else np.asarray(a)


def _asfloat(a: Array) -> Array:
    """Pass tensors/float arrays through; convert lists and integer arrays to float64 numpy."""
    if _is_torch(a):
        return a if a.is_floating_point() else a.double()
    a = np.asarray(a)
    return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Rotations and quaternions


def quat_to_rotmat(q: Array) -> Array:
    """Rotation matrices ``(..., 3, 3)`` from unit quaternions ``(..., 4)`` in ``(w, x, y, z)`` order.

    The quaternion is normalised first, so slightly drifted inputs (as stored in JSON) are fine.
    """
    q = _asfloat(q)
    xp = _xp(q)
    assert q.shape[-1] == 4, f"quaternion must be (..., 4) w,x,y,z; got {tuple(q.shape)}"
    norm = (q * q).sum(-1, keepdims=True) ** 0.5 if not _is_torch(q) else q.norm(dim=-1, keepdim=True)
    w, x, y, z = (q / norm)[..., 0], (q / norm)[..., 1], (q / norm)[..., 2], (q / norm)[..., 3]
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return xp.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Array) -> Array:
    """Unit quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w >= 0`` from rotation matrices ``(..., 3, 3)``.

    Uses the numerically stable branch (largest of w, x, y, z) per element.
    """
    R = _asfloat(R)
    xp = _xp(R)
    assert R.shape[-2:] == (3, 3), f"rotation must be (..., 3, 3); got {tuple(R.shape)}"
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # Four candidate solutions; each is accurate where its leading component is large.
    t = xp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cand = xp.stack(
        [
            xp.stack(
                [t[..., 0], R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
            ),
            xp.stack(
                [R[..., 2, 1] - R[..., 1, 2], t[..., 1], R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0]], -1
            ),
            xp.stack(
                [R[..., 0, 2] - R[..., 2, 0], R[..., 0, 1] + R[..., 1, 0], t[..., 2], R[..., 1, 2] + R[..., 2, 1]], -1
            ),
            xp.stack(
                [R[..., 1, 0] - R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], t[..., 3]], -1
            ),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    best = t.argmax(-1)
    if _is_torch(R):
        q = torch.take_along_dim(cand, best[..., None, None].expand(*best.shape, 1, 4), dim=-2)[..., 0, :]
        tb = torch.take_along_dim(t, best[..., None], dim=-1)
    else:
        q = np.take_along_axis(cand, best[..., None, None].repeat(4, -1), axis=-2)[..., 0, :]
        tb = np.take_along_axis(t, best[..., None], axis=-1)
    q = q / (2 * tb**0.5)
    sign = xp.where(q[..., :1] < 0, -1.0, 1.0)
    return q * sign


def rot_z(yaw: Array) -> Array:
    """Rotation matrices ``(..., 3, 3)`` about +z by ``yaw`` radians (counter-clockwise seen from above)."""
    yaw = _asfloat(yaw)
    xp = _xp(yaw)
    c, s = xp.cos(yaw), xp.sin(yaw)
    o, z = xp.ones_like(yaw), xp.zeros_like(yaw)
    return xp.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*yaw.shape, 3, 3)


def yaw_to_quat(yaw: Array) -> Array:
    """Quaternions ``(..., 4)`` ``(w, x, y, z)`` of a rotation by ``yaw`` about +z."""
    yaw = _asfloat(yaw)
    xp = _xp(yaw)
    z = xp.zeros_like(yaw)
    return xp.stack([xp.cos(yaw / 2), z, z, xp.sin(yaw / 2)], -1)


def rotmat_to_yaw(R: Array) -> Array:
    """Heading ``(...)`` of rotation matrices ``(..., 3, 3)``: the angle of the rotated +x axis in the xy plane.

    Equals the devkit's ``nuscenes.eval.common.utils.quaternion_yaw`` (which its evaluation uses);
    for tilted rotations it differs from pyquaternion's ``yaw_pitch_roll[0]``, another convention.
    """
    R = _asfloat(R)
    xp = _xp(R)
    return xp.arctan2(R[..., 1, 0], R[..., 0, 0])


def quat_to_yaw(q: Array) -> Array:
    """Heading ``(...)`` in radians of quaternions ``(..., 4)`` ``(w, x, y, z)``."""
    return rotmat_to_yaw(quat_to_rotmat(q))


def wrap_angle(a: Array) -> Array:
    """Angles wrapped to ``[-pi, pi)``."""
    return (a + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------------------------------
# Homogeneous transforms


def make_transform(rotation: Array, translation: Array) -> Array:
    """A 4x4 ``a_from_b`` ``(..., 4, 4)`` from a rotation ``(..., 3, 3)`` or quaternion ``(..., 4)`` and a translation ``(..., 3)``."""
    rotation, translation = _asfloat(rotation), _asfloat(translation)
    R = quat_to_rotmat(rotation) if rotation.shape[-1] == 4 and rotation.shape[-2:] != (4, 4) else rotation
    assert R.shape[-2:] == (3, 3), f"rotation must be (..., 3, 3) or (..., 4); got {tuple(rotation.shape)}"
    assert translation.shape[-1] == 3, f"translation must be (..., 3); got {tuple(translation.shape)}"
    batch = R.shape[:-2]
    if _is_torch(R):
        T = torch.zeros(*batch, 4, 4, dtype=R.dtype, device=R.device)
        translation = translation.to(R.dtype)
    else:
        T = np.zeros((*batch, 4, 4), dtype=np.result_type(R.dtype, translation.dtype))
    T[..., :3, :3] = R
    T[..., :3, 3] = translation
    T[..., 3, 3] = 1.0
    return T


def invert_transform(a_from_b: Array) -> Array:
    """The inverse ``b_from_a`` ``(..., 4, 4)`` of rigid transforms ``(..., 4, 4)``, using ``R^T`` (exact, no LU)."""
    a_from_b = _asfloat(a_from_b)
    assert a_from_b.shape[-2:] == (4, 4), f"transform must be (..., 4, 4); got {tuple(a_from_b.shape)}"
    R = a_from_b[..., :3, :3]
    t = a_from_b[..., :3, 3]
    Rt = R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)
    return make_transform(Rt, -(Rt @ t[..., None])[..., 0])


def compose(*transforms: Array) -> Array:
    """The product ``T1 @ T2 @ ... @ Tn``: ``compose(a_from_b, b_from_c) == a_from_c``."""
    assert transforms, "compose needs at least one transform"
    return reduce(lambda a, b: a @ b, transforms)


def transform_points(a_from_b: Array, points_b: Array) -> Array:
    """Points ``(..., N, 3)`` moved from frame b to frame a by ``a_from_b`` ``(..., 4, 4)``.

    Extra columns beyond the first three (intensity, ring, time) are carried through untouched.
    """
    assert a_from_b.shape[-2:] == (4, 4), f"transform must be (..., 4, 4); got {tuple(a_from_b.shape)}"
    assert points_b.shape[-1] >= 3, f"points must be (..., N, >=3); got {tuple(points_b.shape)}"
    xp = _xp(points_b)
    T = a_from_b
    if _is_torch(points_b) and not _is_torch(T):
        T = torch.as_tensor(T, dtype=points_b.dtype, device=points_b.device)
    elif _is_torch(points_b):
        T = T.to(points_b.dtype)
    else:
        T = np.asarray(T)
    R, t = T[..., :3, :3], T[..., None, :3, 3]
    Rt = R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)
    xyz = points_b[..., :3] @ Rt + t  # (..., N, 3): row form of R p + t
    if not _is_torch(xyz) and np.issubdtype(points_b.dtype, np.floating):
        xyz = xyz.astype(points_b.dtype, copy=False)  # keep float32 clouds float32
    if points_b.shape[-1] == 3:
        return xyz
    return xp.concatenate([xyz, points_b[..., 3:]], -1)


def transform_from_pose(translation: Array, rotation_wxyz: Array, inverse: bool = False) -> np.ndarray:
    """``a_from_b`` for a pose given as translation + quaternion (as nuScenes tables store them).

    ``inverse=True`` returns ``b_from_a``, like the devkit's ``transform_matrix(..., inverse=True)``.
    """
    T = make_transform(np.asarray(rotation_wxyz, dtype=np.float64), np.asarray(translation, dtype=np.float64))
    return invert_transform(T) if inverse else T


# ---------------------------------------------------------------------------------------------
# Projection and intrinsics


def project_points(
    points_src: Array,
    cam_from_src: Array,
    K: Array,
    image_size: tuple[int, int],
    min_depth: float = 1e-3,
) -> tuple[Array, Array, Array]:
    """Pixels, depths and a validity mask for points ``(N, >=3)`` in a source frame seen by one camera.

    Args:
        points_src: ``(N, >=3)`` points in the source frame (ego, lidar, ...).
        cam_from_src: ``(4, 4)`` transform from the source frame to the camera frame.
        K: ``(3, 3)`` intrinsics (``img_from_cam``), augmentation already folded in if any.
        image_size: ``(width, height)`` in pixels of the image K refers to.
        min_depth: points with camera z at or below this are "behind" (devkit uses 1.0 m for drawing).

    Returns:
        ``uv (N, 2)`` continuous pixel coordinates (garbage where the mask is False),
        ``depth (N,)`` the camera z in metres, and
        ``mask (N,)`` True where ``depth > min_depth`` and ``0 <= u < width``, ``0 <= v < height``.
    """
    assert points_src.ndim == 2 and points_src.shape[1] >= 3, f"points must be (N, >=3); got {tuple(points_src.shape)}"
    assert K.shape[-2:] == (3, 3), f"K must be (3, 3); got {tuple(K.shape)}"
    xp = _xp(points_src)
    if _is_torch(points_src):
        K = torch.as_tensor(K, dtype=points_src.dtype, device=points_src.device)
    pts_cam = transform_points(cam_from_src, points_src[:, :3])  # (N, 3)
    depth = pts_cam[:, 2]
    Kt = K.transpose(-1, -2) if _is_torch(K) else np.asarray(K).T
    uvw = pts_cam @ Kt  # (N, 3)
    safe = xp.where(xp.abs(depth) < 1e-9, 1e-9, depth)
    uv = uvw[:, :2] / safe[:, None]
    width, height = image_size
    mask = (depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv, depth, mask


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """3x3 ``aug_from_img`` for resizing an image by ``(sx, sy)``."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], dtype=np.float64)


def crop_matrix(x0: float, y0: float) -> np.ndarray:
    """3x3 ``aug_from_img`` for cropping an image whose new top-left corner is pixel ``(x0, y0)``."""
    return np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)


def hflip_matrix(width: float) -> np.ndarray:
    """3x3 ``aug_from_img`` for a horizontal flip of an image ``width`` pixels wide (``u -> width - u``)."""
    return np.array([[-1, 0, width], [0, 1, 0], [0, 0, 1]], dtype=np.float64)


def image_aug_matrix(
    scale: float | tuple[float, float] = 1.0,
    crop_xy: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
    out_width: float | None = None,
) -> np.ndarray:
    """3x3 ``aug_from_img`` for resize, then crop, then (optionally) horizontal flip.

    ``out_width`` is the width after cropping, needed for the flip. ``K_aug = aug_from_img @ K``.
    """
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    M = crop_matrix(*crop_xy) @ scale_matrix(sx, sy)
    if flip:
        assert out_width is not None, "a flip needs out_width (image width after crop)"
        M = hflip_matrix(out_width) @ M
    return M


def augment_intrinsics(K: Array, aug_from_img: Array) -> Array:
    """Intrinsics ``(..., 3, 3)`` of the augmented image: ``aug_from_img @ K``."""
    if _is_torch(K):
        aug_from_img = torch.as_tensor(aug_from_img, dtype=K.dtype, device=K.device)
    return aug_from_img @ K


# ---------------------------------------------------------------------------------------------
# Boxes


def _box_axes(boxes: Array) -> tuple[Array, Array, Array]:
    assert boxes.shape[-1] >= 7, f"boxes must be (..., >=7) [x y z l w h yaw ...]; got {tuple(boxes.shape)}"
    return boxes[..., :3], boxes[..., 3:6], boxes[..., YAW]


def box_corners(boxes: Array) -> Array:
    """Corners ``(M, 8, 3)`` of boxes ``(M, >=7)``, in the order of the devkit's ``Box.corners()``.

    The first four corners face forward (+L/2 along the heading), the last four face backward;
    within each face: top-left, top-right... as the devkit orders them (y: +,-,-,+; z: +,+,-,-).
    """
    boxes = _asfloat(boxes)
    centre, lwh, yaw = _box_axes(boxes)
    signs = np.array(
        [[1, 1, 1, 1, -1, -1, -1, -1], [1, -1, -1, 1, 1, -1, -1, 1], [1, 1, -1, -1, 1, 1, -1, -1]],
        dtype=np.float64,
    ).T  # (8, 3)
    if _is_torch(boxes):
        signs = torch.as_tensor(signs, dtype=boxes.dtype, device=boxes.device)
    local = signs * (lwh[..., None, :] / 2)  # (M, 8, 3)
    R = rot_z(yaw)  # (M, 3, 3)
    Rt = R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)
    return local @ Rt + centre[..., None, :]


#: the 12 edges of a box as pairs of :func:`box_corners` indices: front face, back face, then front to back
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def project_box_edges(boxes: np.ndarray, cam_from_src: np.ndarray, K: np.ndarray, min_depth: float = 0.2) -> list:
    """Per box ``(M, >=7)`` in a source frame, its 12 edges (:data:`BOX_EDGES`) as ``(12, 2, 2)`` pixel segments
    ``[edge, end, (u, v)]`` through ``cam_from_src (4, 4)`` and ``K (3, 3)``; ``None`` for a box with a corner less
    than ``min_depth`` metres in front of the camera (drawn whole or not at all: a clipped box misleads)."""
    out = []
    for corners in box_corners(np.asarray(boxes, dtype=np.float64)):  # (8, 3) per box; boxes are few
        pc = transform_points(np.asarray(cam_from_src, dtype=np.float64), corners)  # (8, 3) camera frame
        if (pc[:, 2] < min_depth).any():
            out.append(None)
            continue
        uv = (pc @ np.asarray(K, dtype=np.float64).T)[:, :2] / pc[:, 2:]  # (8, 2)
        out.append(uv[np.array(BOX_EDGES)])  # (12, 2, 2)
    return out


def points_in_boxes(points: Array, boxes: Array, scale: float = 1.0, margin: float = 0.0) -> Array:
    """Membership ``(N, M)`` bool: point n lies inside box m (boundary included, as the devkit).

    Each box is enlarged before the test: dimensions multiplied by ``scale`` (the devkit's
    ``wlh_factor``), then ``margin`` metres added on every side.
    """
    assert points.ndim == 2 and points.shape[1] >= 3, f"points must be (N, >=3); got {tuple(points.shape)}"
    boxes = _asfloat(boxes)
    if _is_torch(points):
        boxes = torch.as_tensor(boxes, dtype=points.dtype, device=points.device)
    centre, lwh, yaw = _box_axes(boxes)
    xp = _xp(points)
    half = lwh * (scale / 2) + margin  # (M, 3)
    d = points[:, None, :3] - centre[None]  # (N, M, 3)
    c, s = xp.cos(yaw), xp.sin(yaw)
    # Rotate the offset into each box's frame (R^T d): along heading, across, up.
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    return (xp.abs(lx) <= half[:, 0]) & (xp.abs(ly) <= half[:, 1]) & (xp.abs(d[..., 2]) <= half[:, 2])


def points_box_index(
    points: Array, boxes: Array, scale: float = 1.0, margin: float = 0.0, chunk: int = 262144
) -> Array:
    """Index ``(N,)`` of the box each point lies in (the lowest index when boxes overlap), -1 for none.

    numpy input takes a sweep-and-prune path: points are sorted by x once, and each box tests only
    the points within its bounding circle's x-slab (``O(M log N + candidates)``, a loop over boxes,
    never over points). torch input is tested densely in chunks of ``chunk`` points
    (memory ``O(chunk * M)``), which suits a GPU.
    """
    n = points.shape[0]
    if _is_torch(points):
        out = torch.full((n,), -1, dtype=torch.int64, device=points.device)
        if boxes.shape[0] == 0 or n == 0:
            return out
        for start in range(0, n, chunk):  # loop over chunks of points, not points
            inside = points_in_boxes(points[start : start + chunk], boxes, scale, margin)  # (n_c, M)
            first = inside.to(torch.uint8).argmax(1)
            out[start : start + chunk] = torch.where(inside.any(1), first, -1)
        return out
    out = np.full((n,), -1, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[0] == 0 or n == 0:
        return out
    order = np.argsort(points[:, 0], kind="stable")
    xs = points[order, 0]
    half = boxes[:, 3:6] * (scale / 2) + margin  # (M, 3)
    radius = np.hypot(half[:, 0], half[:, 1])  # bounding circle in the xy plane
    lo = np.searchsorted(xs, boxes[:, X] - radius, side="left")
    hi = np.searchsorted(xs, boxes[:, X] + radius, side="right")
    c, s = np.cos(boxes[:, YAW]), np.sin(boxes[:, YAW])
    for m in range(len(boxes)):  # boxes are few; each sees only the points of its x-slab
        cand = order[lo[m] : hi[m]]
        cand = cand[out[cand] < 0]  # the lowest box index wins, as in the dense path
        d = points[cand, :3] - boxes[m, :3]
        ok = np.abs(d[:, 1]) <= radius[m]
        cand, d = cand[ok], d[ok]
        lx = d[:, 0] * c[m] + d[:, 1] * s[m]
        ly = -d[:, 0] * s[m] + d[:, 1] * c[m]
        inside = (np.abs(lx) <= half[m, 0]) & (np.abs(ly) <= half[m, 1]) & (np.abs(d[:, 2]) <= half[m, 2])
        out[cand[inside]] = m
    return out


def transform_boxes(a_from_b: Array, boxes_b: Array) -> Array:
    """Boxes ``(M, 9)`` moved from frame b to frame a: centres transformed, yaw and velocity rotated.

    Only the rotation's heading is applied to yaw (boxes stay upright); velocity (vx, vy, 0) is
    rotated by the full rotation and its xy kept.
    """
    boxes_b = _asfloat(boxes_b)
    assert boxes_b.shape[-1] == BOX_DIM, f"boxes must be (M, {BOX_DIM}); got {tuple(boxes_b.shape)}"
    T = a_from_b if not _is_torch(boxes_b) else torch.as_tensor(a_from_b, dtype=boxes_b.dtype, device=boxes_b.device)
    out = boxes_b.copy() if not _is_torch(boxes_b) else boxes_b.clone()
    out[:, :3] = transform_points(T, boxes_b[:, :3])
    out[:, YAW] = wrap_angle(boxes_b[:, YAW] + rotmat_to_yaw(T[:3, :3]))
    v = boxes_b[:, VX : VY + 1]
    out[:, VX] = T[0, 0] * v[:, 0] + T[0, 1] * v[:, 1]
    out[:, VY] = T[1, 0] * v[:, 0] + T[1, 1] * v[:, 1]
    return out


def boxes_from_nuscenes(nusc_boxes: list) -> np.ndarray:
    """Our ``(M, 9)`` float64 layout from devkit ``nuscenes.utils.data_classes.Box`` objects.

    The devkit stores size as ``wlh`` (width, length, height); we store ``L, W, H``. Velocity is
    the box's ``velocity[:2]`` in the box's frame (NaN when the devkit could not estimate it).
    """
    out = np.zeros((len(nusc_boxes), BOX_DIM), dtype=np.float64)
    for i, b in enumerate(nusc_boxes):  # one row per annotation; boxes are few
        w, l, h = b.wlh
        out[i, :3] = b.center
        out[i, L], out[i, W], out[i, H] = l, w, h
        out[i, YAW] = quat_to_yaw(np.asarray(b.orientation.elements, dtype=np.float64))
        out[i, VX : VY + 1] = np.asarray(b.velocity, dtype=np.float64)[:2]
    return out


def box_to_nuscenes(box: np.ndarray, **kwargs):
    """A devkit ``Box`` from one row of our layout (extra kwargs: ``label``, ``score``, ``name``, ``token``)."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    return Box(
        center=[float(box[X]), float(box[Y]), float(box[Z])],
        size=[float(box[W]), float(box[L]), float(box[H])],
        orientation=Quaternion(axis=[0.0, 0.0, 1.0], angle=float(box[YAW])),
        velocity=(float(box[VX]), float(box[VY]), float("nan")),
        **kwargs,
    )


def boxes_from_av2_cuboids(cuboids) -> np.ndarray:
    """Our ``(M, 9)`` layout from av2 cuboids (a ``CuboidList`` or an iterable of ``Cuboid``).

    AV2's cuboid pose ``dst_SE3_object`` places the box centre; its object frame has x along the
    length, y along the width, z up, so yaw is the heading of that rotation. Velocity is unknown
    here (NaN): the adapter estimates it from the track.
    """
    cub = list(cuboids.cuboids) if hasattr(cuboids, "cuboids") else list(cuboids)
    out = np.full((len(cub), BOX_DIM), np.nan, dtype=np.float64)
    if not cub:
        return out
    R = np.stack([c.dst_SE3_object.rotation for c in cub])  # (M, 3, 3)
    out[:, :3] = np.stack([c.dst_SE3_object.translation for c in cub])
    out[:, L] = [c.length_m for c in cub]
    out[:, W] = [c.width_m for c in cub]
    out[:, H] = [c.height_m for c in cub]
    out[:, YAW] = rotmat_to_yaw(R)
    return out
