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

from bevlabels.grid import GridSpec
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
    grid = GridSpec.from_yaml(grid_name)
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
