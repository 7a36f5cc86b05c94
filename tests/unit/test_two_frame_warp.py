"""Two-frame BEV fusion's warp (issue 36): the previous keyframe's BEV map moved into the current ego frame.

:func:`bevlabels.grid.resample_bev` with a batch of transforms is checked against a brute-force per-cell loop
(bilinear, zeros outside) for ego motions of translation and yaw, under BEV augmentations with flips; a static point
lines up after the warp and a moving one is displaced by velocity x dt; :class:`CameraBEV` with ``frames=2`` hands
the previous map to the BEV encoder without gradient, and without a previous keyframe uses the current map.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevlabels.grid import GridSpec, resample_bev

GRID = GridSpec(xbound=(-8.0, 8.0, 1.0), ybound=(-6.0, 6.0, 0.75), name="warp-test")


def pose(x: float, y: float, yaw: float) -> torch.Tensor:
    """A ``(4, 4)`` float64 pose: rotation ``yaw`` about z, translation ``(x, y, 0)``."""
    c, s = math.cos(yaw), math.sin(yaw)
    T = torch.eye(4, dtype=torch.float64)
    T[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    T[:2, 3] = torch.tensor([x, y], dtype=torch.float64)
    return T


def bev_aug(rot: float, scale: float, flip_x: bool, flip_y: bool) -> torch.Tensor:
    """A BEV augmentation ``aug_from_ego`` as the data module draws one: flips, then rotation and scale."""
    A = pose(0.0, 0.0, rot)
    A[:3, :3] *= scale
    F = torch.diag(torch.tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0], dtype=torch.float64))
    return A @ F


def brute_force_warp(bev: torch.Tensor, dst_from_src: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """The bilinear resampling of one map ``(C, H, W)``, one output cell at a time: the cell centre moved back to the
    source frame, the four source cells around it weighted by distance, cells outside the grid reading 0."""
    C, H, W = bev.shape
    out = torch.zeros_like(bev, dtype=torch.float64)
    src_from_dst = torch.linalg.inv(dst_from_src.double())
    dx, dy = grid.cell_size
    for iy in range(H):
        for ix in range(W):
            x = grid.xbound[0] + (ix + 0.5) * dx
            y = grid.ybound[0] + (iy + 0.5) * dy
            q = src_from_dst @ torch.tensor([x, y, 0.0, 1.0], dtype=torch.float64)
            u = (q[0].item() - grid.xbound[0]) / dx - 0.5  # column of the source, centres at integers
            v = (q[1].item() - grid.ybound[0]) / dy - 0.5
            u0, v0 = math.floor(u), math.floor(v)
            for jy, wy in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
                for jx, wx in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
                    if 0 <= jx < W and 0 <= jy < H:
                        out[:, iy, ix] += wx * wy * bev[:, jy, jx].double()
    return out


MOTIONS = [  # (previous pose, current pose) in the global frame, and a BEV augmentation
    (pose(10.0, 5.0, 0.3), pose(13.5, 6.0, 0.3), bev_aug(0.0, 1.0, False, False)),  # translation
    (pose(0.0, 0.0, 0.0), pose(2.0, -1.0, 0.25), bev_aug(0.2, 1.0, True, False)),  # translation + yaw, flip x
    (pose(-4.0, 3.0, 1.2), pose(-3.0, 5.5, 1.0), bev_aug(-0.35, 1.04, True, True)),  # both flips, scale
]


def cur_from_prev_of(prev: torch.Tensor, cur: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """What the data module computes: the previous augmented ego frame to the current augmented one."""
    return A @ torch.linalg.inv(cur) @ prev @ torch.linalg.inv(A)


@pytest.mark.parametrize("motion", range(len(MOTIONS)))
def test_the_batched_warp_is_the_per_cell_loop(motion):
    prev, cur, A = MOTIONS[motion]
    g = torch.Generator().manual_seed(motion)
    bev = torch.rand(2, 3, *GRID.shape, generator=g)
    T = torch.stack([cur_from_prev_of(prev, cur, A), torch.eye(4, dtype=torch.float64)])
    out = resample_bev(bev, GRID, dst_from_src=T, mode="bilinear")
    torch.testing.assert_close(out[0].double(), brute_force_warp(bev[0], T[0], GRID), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], bev[1])  # no motion: the map itself
    # one map at a time through the unbatched path: the same numbers
    torch.testing.assert_close(out[0], resample_bev(bev[0], GRID, dst_from_src=T[0], mode="bilinear"))
    near = resample_bev(bev, GRID, dst_from_src=T, mode="nearest")
    torch.testing.assert_close(near[0], resample_bev(bev[0], GRID, dst_from_src=T[0], mode="nearest"))


def point_map(xy: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """A ``(1, H, W)`` map with 1 in the cell holding the metric point ``xy``."""
    m = torch.zeros(1, *grid.shape)
    ix, iy, inside = grid.cell_index(xy.float())
    assert inside, f"{xy.tolist()} is off the test grid"
    m[0, iy, ix] = 1.0
    return m


def peak(m: torch.Tensor, grid: GridSpec) -> np.ndarray:
    """The metric centre of mass of a ``(1, H, W)`` map."""
    w = m[0].double()
    centres = torch.as_tensor(grid.cell_centres())
    return ((centres * w[..., None]).sum((0, 1)) / w.sum()).numpy()


@pytest.mark.parametrize("motion", range(len(MOTIONS)))
def test_a_static_point_lines_up_and_a_moving_one_is_displaced_by_velocity_times_dt(motion):
    prev, cur, A = MOTIONS[motion]
    T = cur_from_prev_of(prev, cur, A)[None]
    dt, v = 0.5, torch.tensor([4.0, -2.0, 0.0], dtype=torch.float64)  # a moving object's global velocity (m/s)

    def in_aug(G: torch.Tensor, p_global: torch.Tensor) -> torch.Tensor:
        return (A @ torch.linalg.inv(G) @ torch.cat([p_global, p_global.new_ones(1)]))[:2]

    static = (cur @ torch.tensor([1.5, 0.5, 0.0, 1.0], dtype=torch.float64))[:3]  # near the current ego
    warped = resample_bev(point_map(in_aug(prev, static), GRID)[None], GRID, dst_from_src=T)[0]
    assert np.abs(peak(warped, GRID) - in_aug(cur, static).numpy()).max() < 0.6  # within a cell

    start = static - v * dt  # where the moving object was a keyframe ago
    warped = resample_bev(point_map(in_aug(prev, start), GRID)[None], GRID, dst_from_src=T)[0]
    now = in_aug(cur, start + v * dt).numpy()
    displacement = now - peak(warped, GRID)
    v_aug = (A[:3, :3] @ torch.linalg.inv(cur)[:3, :3] @ v)[:2].numpy()  # the velocity in the augmented frame
    np.testing.assert_allclose(displacement, v_aug * dt, atol=0.6)  # within a cell of v x dt


def test_camera_bev_two_frames_concatenates_the_warped_previous_map_without_gradient():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import trainer  # noqa: F401  (the config resolvers)
    from trainer.tiny import TINY_CAMERA

    cfg = OmegaConf.load("conf/model/camera_bev/default.yaml")
    cfg.lift_splat.grid = {"xbound": [-8.0, 8.0, 1.0], "ybound": [-6.0, 6.0, 0.75], "zbound": [-5.0, 3.0, 8.0]}
    for item in TINY_CAMERA:
        key, value = item.split("=", 1)
        if key.startswith("model.detector.camera_bev."):
            OmegaConf.update(cfg, key.removeprefix("model.detector.camera_bev."), OmegaConf.create(f"v: {value}").v)
    cfg.frames = 2
    net = instantiate(cfg).eval()
    assert net.bev_encoder.in_channels == 2 * net.lift_splat.nz * net.depth_net.context_channels
    g = torch.Generator().manual_seed(0)
    B, N = 1, 2
    images = torch.randint(0, 255, (B, N, 3, 64, 176), generator=g).float()
    K = torch.tensor([[100.0, 0, 88], [0, 100.0, 32], [0, 0, 1]]).expand(B, N, 3, 3)
    ego_from_cam = torch.eye(4).expand(B, N, 4, 4).clone()
    ego_from_cam[..., :3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # looking along +x
    ego_from_cam[:, 1, :3, :3] = torch.tensor([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])  # along -x

    captured = {}
    net.bev_encoder.register_forward_hook(lambda m, inp, out: captured.__setitem__("x", inp[0]))
    images.requires_grad_(True)
    cur_from_prev = pose(1.0, 0.0, 0.1)[None].float()
    prev = {"images": images.detach().flip(-1), "K": K, "ego_from_cam": ego_from_cam, "cur_from_prev": cur_from_prev}
    net(images, K, ego_from_cam, prev)
    x = captured["x"]
    half = x.shape[1] // 2
    cur_splat = net._splat(images, K, ego_from_cam)[2]
    torch.testing.assert_close(x[:, :half], cur_splat)
    expected = resample_bev(net._splat(prev["images"], K, ego_from_cam)[2], net.grid, dst_from_src=cur_from_prev)
    torch.testing.assert_close(x[:, half:], expected)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(x[:, half:].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads), "the previous map must carry no gradient"
    grads = torch.autograd.grad(x[:, :half].sum(), params, allow_unused=True)
    assert any(g is not None and g.any() for g in grads)
    # without a previous keyframe (a scene's start): the current map, twice (zero motion)
    net(images, K, ego_from_cam, None)
    torch.testing.assert_close(captured["x"][:, half:], captured["x"][:, :half])


def test_a_pre_encoder_prepares_both_frames_before_the_warp():
    """BEVDet4D's per-frame pre-process: the fusion reads pre_encoder(current splat) and warp(pre_encoder(previous
    splat)), the latter without gradient; refused with one frame or with the wrong channel count."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import trainer  # noqa: F401  (the config resolvers)
    from trainer.models.components.bev_encoder import BEVPreEncoder
    from trainer.tiny import TINY_CAMERA

    cfg = OmegaConf.load("conf/model/camera_bev/default.yaml")
    cfg.lift_splat.grid = {"xbound": [-8.0, 8.0, 1.0], "ybound": [-6.0, 6.0, 0.75], "zbound": [-5.0, 3.0, 8.0]}
    for item in TINY_CAMERA:
        key, value = item.split("=", 1)
        if key.startswith("model.detector.camera_bev."):
            OmegaConf.update(cfg, key.removeprefix("model.detector.camera_bev."), OmegaConf.create(f"v: {value}").v)
    cfg.frames = 2
    C = int(cfg.depth_net.context_channels)
    cfg.pre_encoder = {"_target_": "trainer.models.components.bev_encoder.BEVPreEncoder", "channels": C}
    torch.manual_seed(0)
    net = instantiate(cfg).eval()
    with torch.no_grad():  # BN's default statistics make a fresh pre-encoder close to the identity: move them
        for m in net.pre_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (1, 2, 3, 64, 176), generator=g).float().requires_grad_(True)
    K = torch.tensor([[100.0, 0, 88], [0, 100.0, 32], [0, 0, 1]]).expand(1, 2, 3, 3)
    ego_from_cam = torch.eye(4).expand(1, 2, 4, 4).clone()
    ego_from_cam[..., :3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    captured = {}
    net.bev_encoder.register_forward_hook(lambda m, inp, out: captured.__setitem__("x", inp[0]))
    cur_from_prev = pose(1.0, 0.5, 0.2)[None].float()
    prev = {"images": images.detach().flip(-1), "K": K, "ego_from_cam": ego_from_cam, "cur_from_prev": cur_from_prev}
    net(images, K, ego_from_cam, prev)
    x, half = captured["x"], C
    raw_cur = net._splat(images, K, ego_from_cam)[2]
    torch.testing.assert_close(x[:, :half], net.pre_encoder(raw_cur))
    assert not torch.allclose(x[:, :half], raw_cur, atol=1e-3)  # the pre-encoder did something
    raw_prev = net._splat(prev["images"], K, ego_from_cam)[2]
    expected = resample_bev(net.pre_encoder(raw_prev), net.grid, dst_from_src=cur_from_prev)
    torch.testing.assert_close(x[:, half:], expected)
    params = list(net.pre_encoder.parameters())
    grads = torch.autograd.grad(x[:, half:].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads), "the previous map must carry no gradient"
    grads = torch.autograd.grad(x[:, :half].sum(), params, allow_unused=True)
    assert all(g is not None and g.any() for g in grads), "the current frame trains the pre-encoder"

    cfg1 = cfg.copy()
    cfg1.frames = 1
    from hydra.errors import InstantiationException  # Hydra wraps the constructor's ValueError

    with pytest.raises(InstantiationException, match="pre_encoder prepares each frame"):
        instantiate(cfg1)
    cfg.pre_encoder.channels = C + 1
    with pytest.raises(InstantiationException, match="pre_encoder.channels"):
        instantiate(cfg)
    with pytest.raises(ValueError, match="num_blocks"):
        BEVPreEncoder(4, num_blocks=0)
