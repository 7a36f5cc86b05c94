"""Geometry by hand-computed cases, round-trips and the nuScenes devkit's own box helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevlabels import geometry as g

RNG = np.random.default_rng(0)


def random_quats(n: int) -> np.ndarray:
    q = RNG.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def random_transforms(n: int) -> np.ndarray:
    return g.make_transform(random_quats(n), RNG.normal(scale=10, size=(n, 3)))


def random_boxes(n: int) -> np.ndarray:
    b = np.zeros((n, g.BOX_DIM))
    b[:, :3] = RNG.uniform(-20, 20, size=(n, 3))
    b[:, g.L : g.H + 1] = RNG.uniform(0.3, 8.0, size=(n, 3))
    b[:, g.YAW] = RNG.uniform(-np.pi, np.pi, size=n)
    b[:, g.VX : g.VY + 1] = RNG.normal(size=(n, 2))
    return b


# --- rotations --------------------------------------------------------------------------------


def test_quat_to_rotmat_hand_cases():
    # 90 deg about +z maps +x to +y (counter-clockwise seen from above).
    q = np.array([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    R = g.quat_to_rotmat(q)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(g.quat_to_yaw(q), math.pi / 2, atol=1e-12)
    # 180 deg about +x flips y and z.
    np.testing.assert_allclose(g.quat_to_rotmat([0, 1, 0, 0]), np.diag([1, -1, -1]), atol=1e-12)


def test_quat_matches_pyquaternion_and_roundtrips():
    from nuscenes.eval.common.utils import quaternion_yaw
    from pyquaternion import Quaternion

    qs = random_quats(64)
    R = g.quat_to_rotmat(qs)
    for q, r in zip(qs, R):
        np.testing.assert_allclose(r, Quaternion(q).rotation_matrix, atol=1e-12)
        # The devkit's eval heading: the rotated +x axis' angle (pyquaternion's yaw differs when tilted).
        assert g.quat_to_yaw(q) == pytest.approx(quaternion_yaw(Quaternion(q)), abs=1e-12)
    q_back = g.rotmat_to_quat(R)
    # q and -q are the same rotation; rotmat_to_quat returns w >= 0.
    np.testing.assert_allclose(q_back, qs * np.sign(qs[:, :1]), atol=1e-10)
    np.testing.assert_allclose(g.rotmat_to_quat(torch.as_tensor(R)).numpy(), q_back, atol=1e-10)


def test_rot_z_and_yaw_quat_agree():
    yaw = RNG.uniform(-np.pi, np.pi, 16)
    np.testing.assert_allclose(g.rot_z(yaw), g.quat_to_rotmat(g.yaw_to_quat(yaw)), atol=1e-12)
    np.testing.assert_allclose(g.rotmat_to_yaw(g.rot_z(yaw)), yaw, atol=1e-12)


def test_wrap_angle():
    np.testing.assert_allclose(
        g.wrap_angle(np.array([3 * np.pi / 2, -3 * np.pi / 2, 0.1])), [-np.pi / 2, np.pi / 2, 0.1]
    )


# --- transforms -------------------------------------------------------------------------------


def test_inverse_roundtrip_is_identity():
    T = random_transforms(32)
    np.testing.assert_allclose(T @ g.invert_transform(T), np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    np.testing.assert_allclose(g.invert_transform(T) @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    Tt = torch.as_tensor(T)
    np.testing.assert_allclose(g.invert_transform(Tt).numpy(), g.invert_transform(T), atol=1e-12)


def test_compose_order_is_right_to_left():
    # ego_from_lidar: a lidar 1 m above the ego origin, rotated 90 deg (lidar +x = ego +y).
    ego_from_lidar = g.make_transform(g.rot_z(np.pi / 2), [0, 0, 1.0])
    # global_from_ego: ego at (100, 50) facing global +x.
    global_from_ego = g.make_transform(np.eye(3), [100.0, 50.0, 0.0])
    global_from_lidar = g.compose(global_from_ego, ego_from_lidar)
    # A point 2 m along lidar +x is 2 m along ego +y, 1 m up; in global (100, 52, 1).
    np.testing.assert_allclose(
        g.transform_points(global_from_lidar, np.array([[2.0, 0, 0]])), [[100, 52, 1]], atol=1e-12
    )


def test_transform_from_pose_matches_devkit():
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    for q, t in zip(random_quats(8), RNG.normal(size=(8, 3))):
        np.testing.assert_allclose(g.transform_from_pose(t, q), transform_matrix(t, Quaternion(q)), atol=1e-12)
        np.testing.assert_allclose(
            g.transform_from_pose(t, q, inverse=True), transform_matrix(t, Quaternion(q), inverse=True), atol=1e-10
        )


def test_transform_points_keeps_extra_columns_and_dtype():
    pts = np.concatenate([RNG.normal(size=(10, 3)), np.arange(20).reshape(10, 2)], 1).astype(np.float32)
    T = random_transforms(1)[0]
    out = g.transform_points(T, pts)
    assert out.dtype == np.float32 and out.shape == (10, 5)
    np.testing.assert_array_equal(out[:, 3:], pts[:, 3:])
    np.testing.assert_allclose(
        out[:, :3], (T[:3, :3] @ pts[:, :3].T.astype(np.float64)).T + T[:3, 3], rtol=1e-5, atol=1e-4
    )
    out_t = g.transform_points(torch.as_tensor(T), torch.as_tensor(pts))
    assert out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-4)


# --- projection -------------------------------------------------------------------------------

K = np.array([[1000.0, 0, 800.0], [0, 1000.0, 450.0], [0, 0, 1]])


def test_project_known_point():
    # Camera at ego (1, 0, 1.5) looking along ego +x: cam z = ego x, cam x = -ego y, cam y = -ego z.
    R_ego_from_cam = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    ego_from_cam = g.make_transform(R_ego_from_cam, [1.0, 0.0, 1.5])
    pts_ego = np.array([[11.0, 0.0, 1.5], [11.0, 1.0, 1.5], [11.0, 0.0, 2.5], [-5.0, 0, 1.5], [11.0, 100.0, 1.5]])
    uv, depth, mask = g.project_points(pts_ego, g.invert_transform(ego_from_cam), K, (1600, 900))
    np.testing.assert_allclose(depth[:3], 10.0)
    np.testing.assert_allclose(uv[0], [800, 450])  # on the optical axis: the principal point
    np.testing.assert_allclose(uv[1], [700, 450])  # 1 m to the left at 10 m: 100 px left
    np.testing.assert_allclose(uv[2], [800, 350])  # 1 m up: 100 px up
    assert mask.tolist() == [True, True, True, False, False]  # behind; far outside the image
    uv_t, depth_t, mask_t = g.project_points(torch.as_tensor(pts_ego), g.invert_transform(ego_from_cam), K, (1600, 900))
    np.testing.assert_allclose(uv_t.numpy()[:3], uv[:3])
    assert mask_t.tolist() == mask.tolist()


def test_project_mask_image_bounds_are_half_open():
    cam_from_src = np.eye(4)
    # u = 1000 * x / z + 800 -> x chosen so that u = 0, 1599.999, 1600 exactly at z = 10.
    pts = np.array([[-8.0, 0, 10], [7.99999, 0, 10], [8.0, 0, 10]])
    _, _, mask = g.project_points(pts, cam_from_src, K, (1600, 900))
    assert mask.tolist() == [True, True, False]


def test_intrinsics_augmentation_equals_augmenting_pixels():
    pts = np.column_stack([RNG.uniform(-5, 5, 50), RNG.uniform(-3, 3, 50), RNG.uniform(2, 40, 50)])
    uv, _, _ = g.project_points(pts, np.eye(4), K, (1600, 900))
    s, (x0, y0) = 0.44, (10.0, 140.0)
    out_w = 704
    # Resize, crop, flip applied to pixel coordinates by hand ...
    u = s * uv[:, 0] - x0
    v = s * uv[:, 1] - y0
    expected = np.column_stack([out_w - u, v])
    # ... equal projecting with the augmented intrinsics.
    M = g.image_aug_matrix(scale=s, crop_xy=(x0, y0), flip=True, out_width=out_w)
    uv_aug, _, _ = g.project_points(pts, np.eye(4), g.augment_intrinsics(K, M), (out_w, 256))
    np.testing.assert_allclose(uv_aug, expected, atol=1e-9)
    # Flip twice is the identity.
    np.testing.assert_allclose(g.hflip_matrix(out_w) @ g.hflip_matrix(out_w), np.eye(3))


# --- boxes ------------------------------------------------------------------------------------


def test_box_corners_hand_case():
    box = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, np.pi / 2, 0, 0]])  # heading +y
    c = g.box_corners(box)[0]
    # First corner: +L/2 forward (now +y), +W/2 left (now -x), +H/2 up.
    np.testing.assert_allclose(c[0], [1 - 1.0, 2 + 2.0, 3.5], atol=1e-12)
    np.testing.assert_allclose(c.mean(0), [1, 2, 3], atol=1e-12)


def test_box_corners_match_devkit():
    boxes = random_boxes(20)
    ours = g.box_corners(boxes)
    for b, c in zip(boxes, ours):
        dev = g.box_to_nuscenes(b).corners().T  # devkit Box.corners(): (3, 8)
        np.testing.assert_allclose(c, dev, atol=1e-9)
    np.testing.assert_allclose(g.box_corners(torch.as_tensor(boxes)).numpy(), ours, atol=1e-9)


def test_project_box_edges_hand_case():
    """A 2 m cube centred 10 m along the optical axis (the source frame is the camera's): its corner 0 is at
    (+1, +1, 11), so it lands at u = v = 50 + 100 * 1/11; a box reaching behind the camera is not drawn."""
    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    ahead = np.array([[0.0, 0.0, 10.0, 2.0, 2.0, 2.0, 0.0, 0, 0]])
    behind = np.array([[0.0, 0.0, 0.5, 2.0, 2.0, 2.0, 0.0, 0, 0]])  # corners at z = -0.5 and 1.5
    edges, hidden = g.project_box_edges(np.concatenate([ahead, behind]), np.eye(4), K)
    assert hidden is None and edges.shape == (12, 2, 2)
    corner0 = g.box_corners(ahead)[0, 0]
    np.testing.assert_allclose(corner0, [1, 1, 11], atol=1e-12)
    np.testing.assert_allclose(edges[0, 0], [50 + 100 / 11, 50 + 100 / 11], atol=1e-9)  # edge (0, 1) starts at 0
    # every edge joins two projected corners, each corner on 3 edges
    ends = {tuple(np.round(p, 9)) for p in edges.reshape(-1, 2)}
    assert len(ends) == 8


def test_boxes_from_nuscenes_roundtrip():
    boxes = random_boxes(10)
    back = g.boxes_from_nuscenes([g.box_to_nuscenes(b) for b in boxes])
    np.testing.assert_allclose(back, boxes, atol=1e-9)


@pytest.mark.parametrize("scale", [1.0, 1.3])
def test_points_in_boxes_match_devkit(scale):
    from nuscenes.utils.geometry_utils import points_in_box

    boxes = random_boxes(12)
    # Points concentrated around the boxes so that both inside and outside cases are common.
    pts = np.concatenate([b[:3] + RNG.normal(scale=b[3:6].max() * 0.6, size=(400, 3)) for b in boxes])
    ours = g.points_in_boxes(pts, boxes, scale=scale)
    for m, b in enumerate(boxes):
        dev = points_in_box(g.box_to_nuscenes(b), pts.T, wlh_factor=scale)
        np.testing.assert_array_equal(ours[:, m], dev)
    assert 0.05 < ours.mean() * len(boxes) < 0.95  # both cases exercised
    ours_t = g.points_in_boxes(torch.as_tensor(pts), boxes, scale=scale)
    np.testing.assert_array_equal(ours_t.numpy(), ours)


def test_points_in_boxes_margin_hand_case():
    box = np.array([[0, 0, 0, 4.0, 2.0, 2.0, np.pi / 4, 0, 0]])
    along = np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0])
    across = np.array([-np.sin(np.pi / 4), np.cos(np.pi / 4), 0])
    pts = np.stack([along * 1.9, along * 2.1, across * 1.4, across * 0.9, np.array([0, 0, 1.2])])
    assert g.points_in_boxes(pts, box)[:, 0].tolist() == [True, False, False, True, False]
    assert g.points_in_boxes(pts, box, margin=0.5)[:, 0].tolist() == [True, True, True, True, True]


def test_points_box_index_lowest_index_and_chunks():
    boxes = np.array([[0, 0, 0, 2, 2, 2, 0, 0, 0], [0.5, 0, 0, 2, 2, 2, 0, 0, 0], [10, 0, 0, 1, 1, 1, 0, 0, 0]], float)
    pts = np.array([[0.2, 0, 0], [1.3, 0, 0], [10, 0, 0], [5, 5, 5]])
    idx = g.points_box_index(pts, boxes, chunk=3)  # chunk smaller than N: exercises the loop
    assert idx.tolist() == [0, 1, 2, -1]
    assert g.points_box_index(torch.as_tensor(pts), boxes, chunk=2).tolist() == [0, 1, 2, -1]
    assert g.points_box_index(pts, np.zeros((0, 9))).tolist() == [-1] * 4


@pytest.mark.parametrize("scale,margin", [(1.0, 0.0), (1.2, 0.0), (1.0, 0.4)])
def test_points_box_index_sweep_path_equals_dense_membership(scale, margin):
    boxes = random_boxes(40)
    boxes[2::3, :3] = boxes[1::3, :3][: len(boxes[2::3])] + 0.5  # overlapping pairs: the lowest index must win
    pts = np.concatenate([b[:3] + RNG.normal(scale=b[3:6].max() * 0.6, size=(200, 3)) for b in boxes])
    dense = g.points_in_boxes(pts, boxes, scale=scale, margin=margin)  # (N, M)
    expected = np.where(dense.any(1), dense.argmax(1), -1)
    np.testing.assert_array_equal(g.points_box_index(pts, boxes, scale=scale, margin=margin), expected)
    np.testing.assert_array_equal(
        g.points_box_index(torch.as_tensor(pts), boxes, scale=scale, margin=margin, chunk=500).numpy(), expected
    )
    assert (expected >= 0).mean() > 0.1 and len(np.unique(expected)) > 30 and (dense.sum(1) >= 2).sum() > 20


def test_transform_boxes_matches_devkit_moves():
    boxes = random_boxes(10)
    T = random_transforms(1)[0]
    # Keep it upright (only yaw) so the devkit's box and ours describe the same box.
    T[:3, :3] = g.rot_z(0.7)
    ours = g.transform_boxes(T, boxes)
    from pyquaternion import Quaternion

    for b, o in zip(boxes, ours):
        nb = g.box_to_nuscenes(b)
        nb.velocity = np.array([b[g.VX], b[g.VY], 0.0])  # the devkit rotates a 3D velocity; NaN vz would spread
        nb.rotate(Quaternion(matrix=T[:3, :3]))
        nb.translate(T[:3, 3])
        np.testing.assert_allclose(o[:3], nb.center, atol=1e-9)
        assert g.wrap_angle(o[g.YAW] - nb.orientation.yaw_pitch_roll[0]) == pytest.approx(0, abs=1e-9)
        np.testing.assert_allclose(o[g.VX : g.VY + 1], nb.velocity[:2], atol=1e-9)
    # Round trip through the inverse.
    np.testing.assert_allclose(g.transform_boxes(g.invert_transform(T), ours)[:, :6], boxes[:, :6], atol=1e-9)
