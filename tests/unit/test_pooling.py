"""BEV pooling of camera features equals a brute-force per-point reference; occluded points take no feature."""

from __future__ import annotations

import numpy as np
import torch

from bevlabels import geometry as g
from bevlabels.grid import GridSpec
from bevlabels.lidar.project import CameraSet, VisibilityConfig, pool_bev

# A camera looking along ego +x from 1.5 m height: cam z = ego x, cam x = -ego y, cam y = -ego z.
R_EGO_FROM_CAM = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)


def two_cameras(width=64, height=32) -> CameraSet:
    K = np.array([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
    front = g.make_transform(R_EGO_FROM_CAM, [0.0, 0.0, 1.5])
    left = g.make_transform(g.rot_z(np.pi / 4) @ R_EGO_FROM_CAM, [0.0, 0.0, 1.5])  # overlaps the front one
    cam_from_ego = np.stack([g.invert_transform(front), g.invert_transform(left)])
    return CameraSet(cam_from_ego, np.stack([K, K]), np.array([[width, height]] * 2))


def bilinear_reference(feat: np.ndarray, u: float, v: float, width: int, height: int) -> np.ndarray:
    """Hand bilinear sampling: patch (i, j)'s centre sits at ((j + .5) W / w, (i + .5) H / h); edges clamp."""
    C, h, w = feat.shape
    x = u * w / width - 0.5
    y = v * h / height - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    ax, ay = x - x0, y - y0
    out = np.zeros(C)
    for dy, wy in ((0, 1 - ay), (1, ay)):
        for dx, wx in ((0, 1 - ax), (1, ax)):
            yy, xx = min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), w - 1)
            out += wy * wx * feat[:, yy, xx]
    return out


def brute_force(points, feats, cams: CameraSet, grid: GridSpec, cfg: VisibilityConfig):
    """Per point, per camera, by hand: projection, z-buffer, bilinear sample; then per-cell mean."""
    H, W = grid.shape
    C = feats[0].shape[0]
    P = len(points)
    proj = {}  # (n, p) -> (u, v, depth)
    for n in range(len(cams)):
        width, height = cams.sizes[n]
        for p in range(P):
            pc = cams.cam_from_ego[n] @ np.append(points[p], 1.0)
            if pc[2] <= cfg.min_depth:
                continue
            uvw = cams.K[n] @ pc[:3]
            u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
            if 0 <= u < width and 0 <= v < height:
                proj[n, p] = (u, v, pc[2])
    zmin = {}
    for (n, _p), (u, v, d) in proj.items():
        key = (n, int(v // cfg.zbuffer_px), int(u // cfg.zbuffer_px))
        zmin[key] = min(zmin.get(key, np.inf), d)
    sums, counts = np.zeros((H, W, C)), np.zeros((H, W))
    for p in range(P):
        ix = int(np.floor((points[p, 0] - grid.xbound[0]) / grid.xbound[2]))
        iy = int(np.floor((points[p, 1] - grid.ybound[0]) / grid.ybound[2]))
        if not (0 <= ix < W and 0 <= iy < H):
            continue
        fs = []
        for n in range(len(cams)):
            if (n, p) not in proj:
                continue
            u, v, d = proj[n, p]
            z = zmin[n, int(v // cfg.zbuffer_px), int(u // cfg.zbuffer_px)]
            if d <= z + max(cfg.abs_tol, cfg.rel_tol * z):
                fs.append(bilinear_reference(feats[n], u, v, *cams.sizes[n]))
        if fs:
            sums[iy, ix] += np.mean(fs, axis=0)
            counts[iy, ix] += 1
    feat = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], 0.0)
    return feat.transpose(2, 0, 1), counts


def test_pool_bev_equals_brute_force():
    rng = np.random.default_rng(0)
    grid = GridSpec((0.0, 16.0, 1.0), (-8.0, 8.0, 1.0), (-2.0, 4.0, 6.0))
    cams = two_cameras()
    # Points spread in front of and beside the cameras, some outside the grid or behind.
    points = np.column_stack([rng.uniform(-2, 18, 600), rng.uniform(-9, 9, 600), rng.uniform(-1, 3, 600)])
    feats = torch.as_tensor(rng.normal(size=(2, 5, 4, 8)), dtype=torch.float32)  # (N, C, h, w)
    cfg = VisibilityConfig(
        zbuffer_px=2, abs_tol=0.5, rel_tol=0.05, min_depth=0.5, chunk=50, box_occluders=False
    )  # small chunks: the loop runs
    pooled = pool_bev(points, feats, cams, grid, cfg)
    ref_feat, ref_count = brute_force(points, feats.numpy().astype(np.float64), cams, grid, cfg)
    np.testing.assert_array_equal(pooled.count.numpy(), ref_count)
    np.testing.assert_allclose(pooled.feat.numpy(), ref_feat, atol=1e-5)
    assert ref_count.sum() > 100  # the case is not vacuous: many points pooled...
    assert (pooled.n_visible_cams == 2).sum() > 10  # ...some seen by both cameras (averaged)
    assert (ref_count == 0).sum() > 0  # ...and some cells empty (feature 0)
    assert (pooled.feat.numpy()[:, ref_count == 0] == 0).all()


def test_pool_bev_cameras_of_different_sizes_equals_brute_force():
    """AV2's rig: a portrait camera beside a landscape one, each with its own patch grid."""
    rng = np.random.default_rng(3)
    grid = GridSpec((0.0, 16.0, 1.0), (-8.0, 8.0, 1.0), (-2.0, 4.0, 6.0))
    land = two_cameras(64, 32)
    K_portrait = np.array([[40.0, 0, 16.0], [0, 40.0, 32.0], [0, 0, 1]])  # 32 x 64, portrait
    cams = CameraSet(land.cam_from_ego, np.stack([K_portrait, land.K[1]]), np.array([[32, 64], [64, 32]]))
    points = np.column_stack([rng.uniform(-2, 18, 600), rng.uniform(-9, 9, 600), rng.uniform(-1, 3, 600)])
    feats = [  # per camera (C, h, w): a portrait patch grid and a landscape one
        torch.as_tensor(rng.normal(size=(5, 8, 4)), dtype=torch.float32),
        torch.as_tensor(rng.normal(size=(5, 4, 8)), dtype=torch.float32),
    ]
    cfg = VisibilityConfig(zbuffer_px=2, min_depth=0.5, chunk=50, box_occluders=False)
    pooled = pool_bev(points, feats, cams, grid, cfg)
    ref_feat, ref_count = brute_force(points, [f.numpy().astype(np.float64) for f in feats], cams, grid, cfg)
    np.testing.assert_array_equal(pooled.count.numpy(), ref_count)
    np.testing.assert_allclose(pooled.feat.numpy(), ref_feat, atol=1e-5)
    assert ref_count.sum() > 100 and (pooled.n_visible_cams == 2).sum() > 10
    # Sampling the portrait map with the landscape geometry would differ: the check can fail.
    swapped = [feats[0].reshape(5, 4, 8), feats[1]]
    assert not np.allclose(pool_bev(points, swapped, cams, grid, cfg).feat.numpy(), ref_feat, atol=1e-3)


def test_point_hidden_behind_an_object_takes_no_feature():
    grid = GridSpec((0.0, 32.0, 1.0), (-16.0, 16.0, 1.0), (-2.0, 4.0, 6.0))
    cams = two_cameras()
    cams = CameraSet(cams.cam_from_ego[:1], cams.K[:1], cams.sizes[:1])
    # A wall of points 10 m ahead, dense enough to fill every z-buffer cell it covers ...
    ys, zs = np.meshgrid(np.linspace(-1.5, 1.5, 40), np.linspace(0.5, 2.5, 40))
    wall = np.column_stack([np.full(ys.size, 10.0), ys.ravel(), zs.ravel()])
    # ... and one point straight behind it on the camera's optical axis, 20 m ahead.
    hidden = np.array([[20.0, 0.0, 1.5]])
    feats = torch.ones(1, 3, 4, 8)
    pooled = pool_bev(
        np.concatenate([wall, hidden]), feats, cams, grid, VisibilityConfig(zbuffer_px=4, box_occluders=False)
    )
    assert pooled.n_visible_cams[-1] == 0  # occluded
    assert pooled.n_visible_cams[:-1].all()  # the wall itself is seen
    assert pooled.count[int(0 + 16), 20] == 0  # its cell (y=0 -> row 16, x=20 -> col 20) stays empty
    # Without the wall the same point is seen.
    alone = pool_bev(hidden, feats, cams, grid, VisibilityConfig(zbuffer_px=4, box_occluders=False))
    assert alone.n_visible_cams.tolist() == [1] and alone.count[16, 20] == 1


def test_bilinear_taps_reproduce_sample_features():
    from bevlabels.features.base import sample_features
    from bevlabels.lidar.project import bilinear_taps

    rng = np.random.default_rng(1)
    feats = torch.as_tensor(rng.normal(size=(7, 5, 9)), dtype=torch.float32)  # (C, h, w)
    width, height = 90, 50
    # Inside the image, on its very edges and corners (where border clamping matters).
    uv = torch.as_tensor(
        np.concatenate([rng.uniform([0, 0], [width, height], size=(300, 2)), [[0, 0], [89.99, 49.99], [0.2, 49.0]]]),
        dtype=torch.float32,
    )
    taps, w = bilinear_taps(uv, (width, height), feats.shape[1:])
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, atol=1e-6)
    by_taps = (feats.reshape(7, -1).T[taps] * w[..., None]).sum(1)  # (p, C)
    np.testing.assert_allclose(by_taps.numpy(), sample_features(feats, uv, (width, height)).numpy(), atol=1e-5)
