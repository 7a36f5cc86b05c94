"""The sparse head's keypoint geometry on the real nuScenes keyframe, against the devkit's boxes and GridSpec.

Boxes come from the adapter (keyframe ego frame), become anchors (``boxes_to_anchors``), and their
centre keypoint (``KeypointGenerator``, fixed point 0) is projected by the PV aggregation's own
``project_to_cameras`` with ``img_from_ego = K (4x4) @ cam_from_key_ego``, and placed on the grid by the
BEV aggregation's own ``bev_sample_coords`` + grid_sample path. The devkit decides independently
which cameras see each box (``box_in_image`` with ``BoxVisibility.ANY``, on its own camera-frame boxes
from ``get_sample_data``) and where its corners land (``view_points``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevlabels.conf import load_grid
from trainer.models.components.sparse.aggregation import bev_sample_coords, bilinear_sample, project_to_cameras
from trainer.models.components.sparse.anchors import boxes_to_anchors
from trainer.models.components.sparse.keypoints import KeypointGenerator

pytestmark = pytest.mark.realdata

SCENE = "scene-0061"
MIN_POINTS = 5


@pytest.fixture(scope="module")
def ds(nuscenes_demo):
    pytest.importorskip("nuscenes")
    from bevlabels.datasets.nuscenes import NuScenesDataset

    return NuScenesDataset(nuscenes_demo, version="v1.0-mini")


@pytest.fixture(scope="module")
def frame(ds):
    (f,) = ds.keyframes(SCENE)
    return f


@pytest.fixture(scope="module")
def centre_keypoints(frame) -> tuple[np.ndarray, torch.Tensor]:
    """Indices ``(M,)`` of the boxes with >= 5 LiDAR points and their centre keypoints ``(1, M, 1, 3)`` float64."""
    keep = np.flatnonzero(frame.boxes.num_lidar_pts >= MIN_POINTS)
    boxes = torch.tensor(np.nan_to_num(frame.boxes.boxes[keep]), dtype=torch.float64)  # (M, 9), no velocity here
    kp = KeypointGenerator(embed_dims=8, num_learned=6).double()(boxes_to_anchors(boxes)[None])  # (1, M, 7, 3)
    return keep, kp[:, :, :1]


def test_centre_keypoint_projects_inside_the_devkit_box_in_a_camera_that_sees_it(ds, frame, centre_keypoints):
    from nuscenes.utils.geometry_utils import BoxVisibility, box_in_image, view_points

    keep, kp = centre_keypoints
    n_cams = len(frame.cameras)
    i_from_e = np.zeros((1, n_cams, 4, 4))
    for n, cam in enumerate(frame.cameras):
        k4 = np.eye(4)
        k4[:3, :3] = cam.K
        i_from_e[0, n] = k4 @ frame.cam_from_key_ego(n)
    sizes = {(c.height, c.width) for c in frame.cameras}
    assert len(sizes) == 1
    (image_hw,) = sizes
    uv, depth, valid = project_to_cameras(kp, torch.tensor(i_from_e), image_hw)  # (1, N, M, 1, ...)
    uv, valid = uv[0, :, :, 0].numpy(), valid[0, :, :, 0].numpy()  # (N, M, 2), (N, M)

    token_to_row = {t: i for i, t in enumerate(np.asarray(frame.boxes.token)[keep])}
    seen_by = {i: [] for i in range(len(keep))}  # box row -> [(camera, clipped 2D extent)]
    for n, cam in enumerate(frame.cameras):
        _, dk_boxes, cam_K = ds.nusc.get_sample_data(cam.token, box_vis_level=BoxVisibility.NONE)
        for box in dk_boxes:
            row = token_to_row.get(box.token)
            if row is None or not box_in_image(box, cam_K, (cam.width, cam.height), BoxVisibility.ANY):
                continue
            corners = view_points(box.corners(), cam_K, normalize=True)[:2]  # (2, 8); ANY => all in front
            lo = np.clip(corners.min(1), 0, [cam.width, cam.height])
            hi = np.clip(corners.max(1), 0, [cam.width, cam.height])
            seen_by[row].append((n, lo, hi))

    checked = 0
    for row, views in seen_by.items():
        assert views, f"box {frame.boxes.token[keep[row]]} (>= {MIN_POINTS} LiDAR points) is in no camera"
        hits = []
        for n, lo, hi in views:
            if valid[n, row]:  # a camera that sees the box and the centre: the centre lies in the box's extent
                assert (uv[n, row] >= lo - 1e-6).all() and (uv[n, row] <= hi + 1e-6).all(), (
                    f"box {row} in {frame.cameras[n].name}: centre at {uv[n, row]} outside [{lo}, {hi}]"
                )
                hits.append(n)
                checked += 1
        assert hits, f"box {row}: its centre is in none of the cameras that see it ({[v[0] for v in views]})"
    assert len(seen_by) >= 20 and checked >= len(seen_by)


@pytest.mark.parametrize("grid_name", ["default", "near"])
def test_bev_keypoint_lands_in_the_gridspec_cell_of_the_box_centre(frame, centre_keypoints, grid_name):
    grid = load_grid(grid_name)
    _, kp = centre_keypoints  # (1, M, 1, 3)
    centres = kp[0, :, 0]  # (M, 3)
    ix, iy, inside = grid.cell_index(centres)
    coords, valid = bev_sample_coords(kp, grid)  # (1, M, 1, 2), (1, M, 1)
    assert valid[0, :, 0].tolist() == inside.tolist()
    assert inside.sum() >= 10 and (not inside.all() or grid_name == "default")
    # A map holding each cell's continuous centre reads back the keypoint's continuous cell; floor -> its cell.
    H, W = grid.shape
    rows, cols = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    ramp = torch.stack([cols + 0.5, rows + 0.5])[None]  # (1, 2, H, W)
    got = bilinear_sample(ramp, coords)[0, :, :, 0].T  # (M, 2)
    cell = grid.metric_to_cell(centres)  # (M, 2)
    interior = inside & (cell >= 0.5).all(-1) & (cell <= torch.tensor([W - 0.5, H - 0.5], dtype=torch.float64)).all(-1)
    assert interior.sum() >= 10
    torch.testing.assert_close(got[interior], cell[interior], rtol=0, atol=1e-9)
    assert torch.equal(got[interior].floor().long(), torch.stack([ix, iy], -1)[interior])


def test_a_carried_static_anchor_stays_put_in_the_global_frame_between_real_ego_poses(ds, frame):
    """The instance bank's projection between two real ego poses of the keyframe (LIDAR_TOP's and CAM_FRONT's, 33 cm
    and 35 ms apart,
    read and composed by the devkit's own ``transform_matrix``), under a held BEV augmentation: every GT box
    carried as a static anchor (velocity 0) lands where the devkit puts it in the second ego frame (1 cm), and a
    moving one is displaced by its velocity x dt."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    from trainer.data.common import augment_boxes, bev_aug_matrix
    from trainer.models.components.sparse.anchors import anchors_to_boxes
    from trainer.models.components.sparse.instance_bank import project_anchors

    nusc = ds.nusc
    sample = nusc.get("sample", frame.token)
    poses, stamps = [], []
    for channel in ("LIDAR_TOP", "CAM_FRONT"):
        sd = nusc.get("sample_data", sample["data"][channel])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        poses.append(transform_matrix(ep["translation"], Quaternion(ep["rotation"]), inverse=False))
        stamps.append(sd["timestamp"])
    g_from_a, g_from_b = (torch.as_tensor(p, dtype=torch.float64) for p in poses)
    assert not torch.allclose(g_from_a, g_from_b), "the two sample_data records must have different ego poses"
    dt = (stamps[1] - stamps[0]) / 1e6
    aug = bev_aug_matrix(rot=0.3, scale=1.0, flip_y=True).double()
    boxes_a = torch.as_tensor(frame.boxes.boxes, dtype=torch.float64)  # the keyframe (LIDAR_TOP) ego frame
    boxes_a[:, 7:] = 0.0  # static
    cur_from_prev = (aug @ torch.linalg.inv(g_from_b)) @ torch.linalg.inv(aug @ torch.linalg.inv(g_from_a))
    got = anchors_to_boxes(project_anchors(boxes_to_anchors(augment_boxes(boxes_a, aug)), cur_from_prev, dt))
    # the devkit's way: global box centres, then into ego frame b with its inverse transform_matrix
    b_from_g = torch.as_tensor(
        transform_matrix(*_pose_args(nusc, sample, "CAM_FRONT"), inverse=True), dtype=torch.float64
    )
    centres_g = (g_from_a[:3, :3] @ boxes_a[:, :3].T).T + g_from_a[:3, 3]
    want_b = (b_from_g[:3, :3] @ centres_g.T).T + b_from_g[:3, 3]
    want = augment_boxes(torch.cat([want_b, boxes_a[:, 3:]], 1), aug)
    assert (got[:, :3] - want[:, :3]).norm(dim=1).max() < 0.01
    # the check can fail: leaving the ego motion out misses by the poses' 30 cm
    still = anchors_to_boxes(boxes_to_anchors(augment_boxes(boxes_a, aug)))
    assert (still[:, :3] - want[:, :3]).norm(dim=1).min() > 0.2
    # a moving box: displaced by v dt in the global frame
    v_a = torch.tensor([5.0, -1.0, 0.0], dtype=torch.float64)  # in ego frame a
    moving = boxes_a[:1].clone()
    moving[0, 7:] = v_a[:2]
    got_m = anchors_to_boxes(project_anchors(boxes_to_anchors(augment_boxes(moving, aug)), cur_from_prev, dt))
    centre_g = g_from_a[:3, :3] @ (moving[0, :3] + v_a * dt) + g_from_a[:3, 3]
    want_m = augment_boxes(torch.cat([(b_from_g[:3, :3] @ centre_g + b_from_g[:3, 3])[None], moving[:, 3:]], 1), aug)
    assert (got_m[0, :3] - want_m[0, :3]).norm() < 0.01 and abs(dt) > 0.01


def _pose_args(nusc, sample, channel):
    from pyquaternion import Quaternion

    sd = nusc.get("sample_data", sample["data"][channel])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    return ep["translation"], Quaternion(ep["rotation"])
