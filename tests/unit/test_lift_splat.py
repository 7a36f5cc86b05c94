"""Lift-splat: frustum geometry against projection, BEV pooling against a brute-force loop (values and gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevlabels import geometry as g
from bevlabels.grid import GridSpec
from trainer.models.components.lift_splat import DepthBins, LiftSplat, bev_pool

# OpenCV camera (x right, y down, z forward) looking along ego +x: cam x -> ego -y, cam y -> ego -z, cam z -> ego x.
R_FRONT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

GRID = GridSpec((-8.0, 8.0, 1.0), (-8.0, 8.0, 1.0), (-3.0, 3.0, 3.0))  # 16 x 16 cells, two 3 m z slabs
DBOUND = (1.0, 9.0, 2.0)  # 4 bins, centres 2, 4, 6, 8 m
IMAGE_HW = (32, 48)
DOWNSAMPLE = 8  # feature map 4 x 6


def cameras(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``K (B, 2, 3, 3)`` and ``ego_from_cam (B, 2, 4, 4)``: a front and a left camera, the second sample BEV-augmented."""
    K = np.array([[20.0, 0, 24.0], [0, 20.0, 16.0], [0, 0, 1]])
    front = g.make_transform(R_FRONT, [0.5, 0.0, 1.5])
    left = g.make_transform(g.rot_z(np.pi / 2) @ R_FRONT, [0.0, 0.3, 1.2])
    ego_from_cam = np.stack([front, left])[None].repeat(batch, 0)  # (B, 2, 4, 4)
    # A BEV augmentation (rotation, scale 1.1, flip y) folded into the second sample's extrinsics.
    aug = g.make_transform(g.rot_z(0.3), [0, 0, 0]) @ np.diag([1.1, -1.1, 1.1, 1.0])
    Ks = np.broadcast_to(K, (batch, 2, 3, 3)).copy()
    if batch > 1:
        ego_from_cam[1] = aug @ ego_from_cam[1]
        Ks[1, 0] = g.image_aug_matrix(1.0, (0, 0), flip=True, out_width=IMAGE_HW[1]) @ K  # a flipped image
    return torch.tensor(Ks), torch.tensor(ego_from_cam)


def test_depth_bins_intervals_and_centres():
    bins = DepthBins(DBOUND)
    assert bins.num == 4
    assert torch.allclose(bins.centres(), torch.tensor([2.0, 4.0, 6.0, 8.0]))
    k, valid = bins.index(torch.tensor([0.0, 0.99, 1.0, 2.99, 3.0, 8.99, 9.0]))
    assert valid.tolist() == [False, False, True, True, True, True, False]  # bin k is [1 + 2k, 3 + 2k)
    assert k[valid].tolist() == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="whole number"):
        DepthBins((1.0, 8.0, 2.0))


def test_frustum_points_project_back_to_their_pixel_and_depth():
    """Every frustum point, seen by its camera through K, lands at its feature cell's centre pixel at its bin's depth."""
    ls = LiftSplat(GRID, DBOUND, DOWNSAMPLE)
    K, ego_from_cam = cameras()
    pts = ls.geometry(K, ego_from_cam, IMAGE_HW)  # (B, N, D, h, w, 3)
    assert pts.shape == (2, 2, 4, 4, 6, 3)
    fr = ls.frustum(IMAGE_HW, dtype=torch.float64)  # (D, h, w, 3)
    assert fr[0, 0, 0].tolist() == [4.0, 4.0, 2.0]  # cell (0, 0) covers pixels [0, 8): centre 4
    for b in range(2):
        for n in range(2):
            cam_from_ego = torch.linalg.inv(ego_from_cam[b, n])  # affine (scale, flip): not a rigid inverse
            uv, depth, _ = g.project_points(pts[b, n].reshape(-1, 3), cam_from_ego, K[b, n], IMAGE_HW[::-1])
            assert torch.allclose(uv, fr[..., :2].reshape(-1, 2), atol=1e-9)
            assert torch.allclose(depth, fr[..., 2].reshape(-1), atol=1e-9)


def test_front_camera_centre_ray_lands_straight_ahead():
    """The front camera's centre column sees the ego x axis: bin d lands at x = 0.5 + d, y ~ 0, in the expected cell."""
    ls = LiftSplat(GRID, DBOUND, DOWNSAMPLE)
    K, ego_from_cam = cameras(batch=1)
    K[0, 0, 0, 2], K[0, 0, 1, 2] = 28.0, 20.0  # principal point on the centre of cell (y 2, x 3): (3.5 * 8, 2.5 * 8)
    pts = ls.geometry(K, ego_from_cam, IMAGE_HW)[0, 0, :, 2, 3]  # (D, 3)
    assert torch.allclose(pts[:, 0], torch.tensor([2.5, 4.5, 6.5, 8.5], dtype=pts.dtype))
    assert torch.allclose(pts[:, 1:], torch.tensor([0.0, 1.5], dtype=pts.dtype).expand(4, 2))
    vox = ls.voxel_index(ls.geometry(K, ego_from_cam, IMAGE_HW))[0, 0, :, 2, 3]
    H, W = GRID.shape
    # x 2.5 -> ix 10, y 0 -> iy 8, z 1.5 -> slab 1 (of [-3, 0), [0, 3)); x 8.5 is off the grid.
    assert vox.tolist() == [(1 * H + 8) * W + 10, (1 * H + 8) * W + 12, (1 * H + 8) * W + 14, -1]


def brute_force_splat(depth, context, points, grid: GridSpec, nz: int) -> torch.Tensor:
    """The reference: a Python loop over every frustum point, differentiable through plain indexing."""
    B, N, D, h, w = depth.shape
    C = context.shape[2]
    H, W = grid.shape
    out = [[[torch.zeros(H, W, dtype=depth.dtype) for _ in range(C)] for _ in range(nz)] for _ in range(B)]
    z0, _, dz = grid.zbound
    for b in range(B):
        for n in range(N):
            for d in range(D):
                for y in range(h):
                    for x in range(w):
                        px, py, pz = (float(v) for v in points[b, n, d, y, x])
                        ix = int(np.floor((px - grid.xbound[0]) / grid.xbound[2]))
                        iy = int(np.floor((py - grid.ybound[0]) / grid.ybound[2]))
                        iz = int(np.floor((pz - z0) / dz))
                        if not (0 <= ix < W and 0 <= iy < H and 0 <= iz < nz):
                            continue
                        for c in range(C):
                            cell = torch.zeros(H, W, dtype=depth.dtype)
                            cell[iy, ix] = 1.0
                            out[b][iz][c] = out[b][iz][c] + cell * depth[b, n, d, y, x] * context[b, n, c, y, x]
    # (B, Z*C, H, W), z-slab-major like LiftSplat
    return torch.stack([torch.stack([out[b][z][c] for z in range(nz) for c in range(C)]) for b in range(B)])


def test_bev_pool_equals_brute_force_values_and_gradients():
    torch.manual_seed(0)
    ls = LiftSplat(GRID, DBOUND, DOWNSAMPLE)
    K, ego_from_cam = cameras()
    B, N, D, h, w, C = 2, 2, 4, 4, 6, 3
    depth = torch.rand(B, N, D, h, w, dtype=torch.float64).softmax(2).requires_grad_(True)
    context = torch.randn(B, N, C, h, w, dtype=torch.float64).requires_grad_(True)
    out = ls(depth, context, K, ego_from_cam)  # (B, Z*C, H, W)
    assert out.shape == (B, 2 * C, 16, 16)
    points = ls.geometry(K, ego_from_cam, IMAGE_HW)
    ref = brute_force_splat(depth, context, points, GRID, ls.nz)
    assert torch.allclose(out, ref, atol=1e-12)
    kept = (ls.voxel_index(points) >= 0).sum().item()
    assert 0 < kept < B * N * D * h * w  # some points fall off the grid, most do not
    assert (out.abs().sum((1,)) > 0).sum() > 10  # and they spread over many cells
    weight = torch.randn_like(out)  # a random upstream gradient
    g_depth, g_ctx = torch.autograd.grad((out * weight).sum(), (depth, context))
    r_depth, r_ctx = torch.autograd.grad((ref * weight).sum(), (depth, context))
    assert torch.allclose(g_depth, r_depth, atol=1e-12)
    assert torch.allclose(g_ctx, r_ctx, atol=1e-12)
    assert g_depth.abs().sum() > 0 and g_ctx.abs().sum() > 0


def test_bev_pool_sums_points_of_one_voxel_and_drops_negative_indices():
    depth = torch.tensor([0.25, 0.75, 1.0]).view(1, 1, 3, 1, 1)  # (B, N, D, h, w)
    context = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1)  # (B, N, C, h, w)
    voxel = torch.tensor([4, 4, -1]).view(1, 1, 3, 1, 1)  # bins 0 and 1 into voxel 4, bin 2 dropped
    out = bev_pool(depth, context, voxel, 6)
    expected = torch.zeros(6, 2)
    expected[4] = torch.tensor([2.0, -1.0])  # (0.25 + 0.75) * context
    assert torch.equal(out, expected)


# -- the model around lift-splat: losses, depth metrics, wiring --------------------------------------


def test_depth_metrics_hand_case():
    """Predicting twice the LiDAR depth everywhere: AbsRel 1, log10 = log10(2), SILog 0 (a constant log ratio)."""
    from trainer.metrics_depth import DepthMetrics, pixel_pairs

    gt = torch.tensor([2.0, 4.0, 10.0])
    m = DepthMetrics()
    m.update(2 * gt, gt)
    out = m.compute()
    assert out["pixels"] == 3 and math.isclose(out["abs_rel"], 1.0) and math.isclose(out["log10"], math.log10(2))
    assert math.isclose(out["silog"], 0.0, abs_tol=1e-4)  # sqrt of a float64 cancellation, times 100
    assert math.isclose(out["rmse"], math.sqrt((4 + 16 + 100) / 3)) and math.isclose(out["sq_rel"], (2 + 4 + 10) / 3)
    # pixel_pairs reads the expected depth at each pixel's feature cell, keeping in-range foreground depths only
    expected = torch.arange(2 * 2 * 3, dtype=torch.float32).view(1, 2, 2, 3)  # (B, N, h, w)
    fg = torch.tensor([[1, 17.0, 9.0, 5.0, 0], [0, 1.0, 1.0, 50.0, 2]])  # cam 1 cell (1, 2); a 50 m pixel
    pred, g_ = pixel_pairs(expected, [fg], stride=8, depth_range=(1.0, 45.0))
    assert pred.tolist() == [expected[0, 1, 1, 2].item()] and g_.tolist() == [5.0]


def tiny_camera_bev(context: int = 8, channels_last: bool = False, out_strides=(16,)):
    from trainer.models.components.bev_encoder import BEVEncoder
    from trainer.models.components.camera_bev import CameraBEV
    from trainer.models.components.depth_net import DepthNet
    from trainer.models.components.fpn import FPN
    from trainer.models.components.image_backbone import ResNetBackbone

    backbone = ResNetBackbone(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 32, 64), embedding_size=8, out_stages=(3, 4))
    return CameraBEV(
        backbone,
        FPN(backbone.out_channels, 16, backbone.out_strides, out_strides=list(out_strides)),
        DepthNet(16, 16, context, depth_bins=4, num_res_blocks=1, aspp=False),
        LiftSplat(GRID, DBOUND, DOWNSAMPLE * 2),
        BEVEncoder(8 * 2, channels=(8,), num_blocks=(1,), strides=(1,), out_channels=8),  # two z slabs x 8
        channels_last=channels_last,
    )


def tiny_bevdepth(context: int = 8, distill: int | None = None, channels_last: bool = False):
    from trainer.models.bevdepth import BEVDepth
    from trainer.models.components.center_head import CenterHead

    return BEVDepth(
        tiny_camera_bev(context, channels_last),
        CenterHead(8, share_conv_channels=8, head_channels=8),
        distill_channels=distill,
    )


def test_bevdepth_forward_shapes_and_channel_checks():
    model = tiny_bevdepth(distill=5)
    K, ego_from_cam = cameras()
    images = torch.randint(0, 255, (2, 2, 3, *IMAGE_HW), dtype=torch.uint8)
    out = model(images, K.float(), ego_from_cam.float())
    assert out["bev"].shape == (2, 8, 16, 16) and model.distill_map(out["bev"]).shape == (2, 5, 16, 16)
    assert out["depth_logits"].shape == (2, 2, 4, 2, 3)  # stride 16 on 32 x 48 images
    assert out["preds"][0]["hm"].shape == (2, 1, 16, 16)
    assert [tuple(f.shape) for f in out["img_feats"]] == [(2, 2, 16, 2, 3)]
    with pytest.raises(ValueError, match="bev_encoder.in_channels"):
        tiny_bevdepth(context=6)


def test_camera_bev_returns_every_fpn_level_and_each_one_is_used():
    """A camera BEV network for a head that reads the pyramid: both levels come back, and every parameter is reached."""
    cam = tiny_camera_bev(out_strides=(16, 32))
    K, ego_from_cam = cameras()
    out = cam(torch.randint(0, 255, (2, 2, 3, *IMAGE_HW), dtype=torch.uint8), K.float(), ego_from_cam.float())
    assert [tuple(f.shape) for f in out["img_feats"]] == [(2, 2, 16, 2, 3), (2, 2, 16, 1, 2)]
    (out["bev"].sum() + out["depth_logits"].sum() + sum(f.sum() for f in out["img_feats"])).backward()
    assert not [n for n, p in cam.named_parameters() if p.grad is None]
    with pytest.raises(ValueError, match="out_strides"):  # BEVDepth's CenterHead would leave stride 32 unused
        from trainer.models.bevdepth import BEVDepth
        from trainer.models.components.center_head import CenterHead

        BEVDepth(cam, CenterHead(8, share_conv_channels=8, head_channels=8))


@pytest.mark.parametrize("channels_last", [False, True])
def test_camera_bev_lays_out_the_bev_map_by_its_own_setting(channels_last):
    """The BEV map the encoder sees follows ``channels_last``, whatever layout lift-splat's scatter produces
    (a ``(B, H, W, C)`` buffer permuted: channels-last strides), so the setting alone picks the kernels."""
    m = tiny_bevdepth(channels_last=channels_last)
    seen = []
    m.camera_bev.bev_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    K, ego_from_cam = cameras()
    m(torch.randint(0, 255, (2, 2, 3, *IMAGE_HW), dtype=torch.uint8), K.float(), ego_from_cam.float())
    assert seen[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert seen[0].is_contiguous() == (not channels_last)


def test_fpn_returns_only_the_levels_asked_for_and_refuses_a_lateral_nothing_reads():
    from trainer.models.components.fpn import FPN

    fpn = FPN([8, 16, 32], 4, [8, 16, 32], out_strides=[8, 32])
    feats = [torch.randn(1, c, 32 // (2**i), 32 // (2**i)) for i, c in enumerate([8, 16, 32])]
    out = fpn(feats)
    assert [o.shape[-1] for o in out] == [32, 8] and fpn.level_of_stride(32) == 1
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in fpn.parameters()), "a parameter of the FPN is unused"
    with pytest.raises(ValueError, match=r"stride \[8\] are finer"):
        FPN([8, 16], 4, [8, 16], out_strides=[16])


def test_bevdepth_channels_last_computes_the_same_outputs_and_survives_a_state_dict():
    torch.manual_seed(0)
    plain = tiny_bevdepth(distill=5).eval()
    torch.manual_seed(1)
    fast = tiny_bevdepth(distill=5, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    conv = fast.camera_bev.backbone.resnet.embedder.embedder.convolution.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # loading kept the format
    K, ego_from_cam = cameras()
    images = torch.randint(0, 255, (2, 2, 3, *IMAGE_HW), dtype=torch.uint8)
    with torch.no_grad():
        a, b = plain(images, K.float(), ego_from_cam.float()), fast(images, K.float(), ego_from_cam.float())
    assert torch.allclose(a["bev"], b["bev"], atol=1e-4) and torch.allclose(
        a["depth_logits"], b["depth_logits"], atol=1e-4
    )
    assert torch.allclose(a["preds"][0]["hm"], b["preds"][0]["hm"], atol=1e-4)


def test_resnet_backbone_loads_a_local_save_pretrained_directory(tmp_path):
    from trainer.models.components.image_backbone import ResNetBackbone

    a = ResNetBackbone(depths=(1, 1), hidden_sizes=(8, 16), embedding_size=8, out_stages=(1, 2))
    a.resnet.save_pretrained(tmp_path / "resnet")
    b = ResNetBackbone(out_stages=(1, 2), pretrained_path=str(tmp_path / "resnet"))
    a.eval(), b.eval()
    x = torch.rand(1, 3, 32, 32) * 255
    assert all(torch.equal(u, v) for u, v in zip(a(x), b(x))) and b.out_strides == [4, 8]
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        ResNetBackbone(pretrained_path=str(tmp_path / "nothing"))
