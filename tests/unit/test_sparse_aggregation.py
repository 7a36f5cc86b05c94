"""Sparse head keypoints and deformable aggregation against brute-force per-keypoint loops (values and gradients).

The references below derive every sampling position independently of ``grid_sample``'s normalisation:
a continuous coordinate ``c`` (BEV cell or level pixel, sample k covering ``[k, k+1)``) is read by
explicit bilinear interpolation between the samples ``floor(c - 0.5)`` and ``floor(c - 0.5) + 1``,
zeros outside the map; softmaxes are explicit ``exp / sum`` over the valid samples of each group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bevlabels import geometry as geo
from bevlabels.grid import GridSpec
from trainer.models.components.sparse.aggregation import (
    BEVDeformableAggregation,
    PVDeformableAggregation,
    bev_sample_coords,
    bilinear_sample,
    gather_bilinear,
    pixels_to_grid_coords,
    project_to_cameras,
)
from trainer.models.components.sparse.anchors import COS, LOG_H, LOG_L, LOG_W, SIN, boxes_to_anchors
from trainer.models.components.sparse.keypoints import DEFAULT_FIX_SCALE, KeypointGenerator

C, G = 8, 2
GRID = GridSpec((-8.0, 8.0, 1.0), (-6.0, 6.0, 0.5))  # nx = 16, ny = 24: unequal sizes catch x/y swaps
IMAGE_HW = (64, 96)  # H, W
K = np.array([[40.0, 0.0, 48.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]])
# OpenCV camera looking along ego +x (cam x -> ego -y, cam y -> ego -z), and one looking along -x.
R_FRONT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
R_BACK = geo.rot_z(np.pi) @ R_FRONT


def img_from_ego(batch: int) -> torch.Tensor:
    """``(B, 2, 4, 4)`` float64: a front and a back camera at 1.5 m; the second sample's K resized by 0.9."""
    out = []
    for b in range(batch):
        k4 = np.eye(4)
        k4[:3, :3] = geo.image_aug_matrix(scale=1.0 - 0.1 * b) @ K
        cams = [
            k4 @ geo.invert_transform(geo.make_transform(R, t))
            for R, t in ((R_FRONT, [0.5, 0.0, 1.5]), (R_BACK, [-0.5, 0.0, 1.5]))
        ]
        out.append(np.stack(cams))
    return torch.tensor(np.stack(out))


def make_anchors(boxes: list[list[float]], batch: int = 2) -> torch.Tensor:
    """Anchors ``(B, Q, 11)`` float64 of boxes ``[x, y, z, l, w, h, yaw]``, yaw shifted per sample."""
    rows = []
    for b in range(batch):
        bx = torch.tensor([[*x[:6], x[6] + 0.3 * b, 0.0, 0.0] for x in boxes], dtype=torch.float64)
        rows.append(boxes_to_anchors(bx))
    return torch.stack(rows)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (the zero-initialised logits would hide the attention weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


# ---------------------------------------------------------------------------------------------
# Brute-force references


def bf_keypoints(kp: KeypointGenerator, anchor: torch.Tensor, feat: torch.Tensor, b: int, q: int) -> list:
    """The P keypoints (each a (3,) tensor) of query (b, q), one at a time."""
    a = anchor[b, q]
    size = torch.stack([a[LOG_L].exp(), a[LOG_W].exp(), a[LOG_H].exp()])
    local = [torch.tensor(s, dtype=a.dtype) * size for s in kp.fix_scale.tolist()]
    if kp.learned_fc is not None:
        raw = kp.learned_fc.weight @ feat[b, q] + kp.learned_fc.bias
        for j in range(kp.num_learned):
            local.append((torch.sigmoid(raw[3 * j : 3 * j + 3]) - 0.5) * size)
    out = []
    for lp in local:
        x = a[COS] * lp[0] - a[SIN] * lp[1] + a[0]
        y = a[SIN] * lp[0] + a[COS] * lp[1] + a[1]
        out.append(torch.stack([x, y, lp[2] + a[2]]))
    return out


def bf_bilinear(fmap: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """``(C,)`` of ``fmap (C, h, w)`` at continuous coordinates (sample k covers [k, k+1)), zeros outside."""
    x, y = cx - 0.5, cy - 0.5  # index space: sample k at k
    x0, y0 = math.floor(x.item()), math.floor(y.item())
    out = fmap.new_zeros(fmap.shape[0])
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < fmap.shape[2] and 0 <= yi < fmap.shape[1]:
                out = out + wx * wy * fmap[:, yi, xi]
    return out


def bf_group_softmax(logits: list, valid: list) -> list:
    """Explicit softmax of scalar tensors over the valid entries; 0 for invalid ones."""
    kept = [lg for lg, v in zip(logits, valid) if v]
    if not kept:
        return [None] * len(logits)
    m = max(lg.item() for lg in kept)
    den = sum(torch.exp(lg - m) for lg in kept)
    return [torch.exp(lg - m) / den if v else None for lg, v in zip(logits, valid)]


def bf_finish(mod, groups: list, any_valid: bool) -> torch.Tensor:
    if not any_valid:
        return mod.output_proj.bias.new_zeros(mod.embed_dims)
    return mod.output_proj.weight @ torch.cat(groups) + mod.output_proj.bias


def bf_bev(mod: BEVDeformableAggregation, feat, anchor, embed, bev) -> torch.Tensor:
    B, Q = feat.shape[:2]
    P, cg = mod.num_points, mod.group_dims
    out = []
    for b in range(B):
        for q in range(Q):
            kps = bf_keypoints(mod.keypoints, anchor, feat, b, q)
            samples, valid = [], []
            for p in kps:
                ix = (p[0] - GRID.xbound[0]) / GRID.xbound[2]
                iy = (p[1] - GRID.ybound[0]) / GRID.ybound[2]
                ok = 0 <= ix.item() < GRID.nx and 0 <= iy.item() < GRID.ny
                valid.append(ok)
                samples.append(bf_bilinear(bev[b], ix, iy) if ok else None)
            raw = mod.weights_fc.weight @ (feat[b, q] + embed[b, q]) + mod.weights_fc.bias  # layout (P, G)
            groups = []
            for g in range(G):
                w = bf_group_softmax([raw[p * G + g] for p in range(P)], valid)
                acc = feat.new_zeros(cg)
                for p in range(P):
                    if valid[p]:
                        acc = acc + w[p] * samples[p][g * cg : (g + 1) * cg]
                groups.append(acc)
            out.append(bf_finish(mod, groups, any(valid)))
    return torch.stack(out).reshape(B, Q, -1)


def bf_pv(mod: PVDeformableAggregation, feat, anchor, embed, feats, i_from_e) -> torch.Tensor:
    B, Q = feat.shape[:2]
    N, L, P, cg = mod.num_cams, mod.num_levels, mod.num_points, mod.group_dims
    H, W = IMAGE_HW
    out = []
    for b in range(B):
        if mod.camera_encoder is not None:
            scale = i_from_e.new_tensor([[W], [H], [1.0]])
            cams = [mod.camera_encoder((i_from_e[b, n, :3] / scale).reshape(12)) for n in range(N)]
        for q in range(Q):
            kps = bf_keypoints(mod.keypoints, anchor, feat, b, q)
            keys, samples, valid, logits = [], {}, {}, {}
            for n in range(N):
                if mod.camera_encoder is not None:  # one Linear for every camera, on query + camera embedding
                    raw = mod.weights_fc.weight @ (feat[b, q] + embed[b, q] + cams[n]) + mod.weights_fc.bias
                else:  # one wide Linear, camera n's (L, P, G) logits in its n-th slice
                    raw = (mod.weights_fc.weight @ (feat[b, q] + embed[b, q]) + mod.weights_fc.bias)[
                        n * L * P * G : (n + 1) * L * P * G
                    ]  # layout (L, P, G)
                for p, pt in enumerate(kps):
                    uvd = i_from_e[b, n] @ torch.cat([pt, pt.new_ones(1)])
                    d = uvd[2]
                    u, v = uvd[0] / d, uvd[1] / d
                    ok = d.item() > mod.min_depth and 0 <= u.item() < W and 0 <= v.item() < H
                    for lv in range(L):
                        key = (n, lv, p)
                        keys.append(key)
                        valid[key] = ok
                        logits[key] = raw[(lv * P + p) * G : (lv * P + p + 1) * G]
                        if ok:
                            fmap = feats[lv][b, n]
                            samples[key] = bf_bilinear(fmap, u * fmap.shape[2] / W, v * fmap.shape[1] / H)
            groups = []
            for g in range(G):
                w = bf_group_softmax([logits[k][g] for k in keys], [valid[k] for k in keys])
                acc = feat.new_zeros(cg)
                for k, wk in zip(keys, w):
                    if valid[k]:
                        acc = acc + wk * samples[k][g * cg : (g + 1) * cg]
                groups.append(acc)
            out.append(bf_finish(mod, groups, any(valid.values())))
    return torch.stack(out).reshape(B, Q, -1)


def compare(fast_fn, ref_fn, inputs: list[torch.Tensor], module: nn.Module, seed: int = 1) -> torch.Tensor:
    """Equal outputs and equal gradients w.r.t. ``inputs`` and every parameter of ``module``; returns the output."""
    fast, ref = fast_fn(), ref_fn()
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)
    r = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed), dtype=fast.dtype)
    wrt = [*inputs, *module.parameters()]
    g_fast = torch.autograd.grad((fast * r).sum(), wrt)
    g_ref = torch.autograd.grad((ref * r).sum(), wrt, allow_unused=True)
    names = [f"input {i}" for i in range(len(inputs))] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, g_fast, g_ref):
        b = torch.zeros_like(a) if b is None else b
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, name=name: f"grad of {name}: {m}")
    return fast


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# BEV aggregation


BEV_BOXES = [
    [1.3, -0.7, 0.8, 4.0, 2.0, 1.6, 0.4],  # well inside
    [6.9, 1.1, 0.8, 5.0, 2.0, 1.5, 0.1],  # straddles the +x edge: some keypoints off the grid
    [100.0, 100.0, 0.5, 1.0, 1.0, 1.0, 0.0],  # off the grid entirely: no valid keypoint
    [-7.6, -5.7, 0.5, 2.0, 1.6, 1.2, -2.0],  # near the (-x, -y) corner: partly off, zero-padded taps
]


def bev_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mod = randomise(BEVDeformableAggregation(C, GRID, num_groups=G, num_learned=6).double(), seed)
    B, Q = 2, len(BEV_BOXES)
    anchor = leaf(make_anchors(BEV_BOXES, B))
    feat = leaf(torch.randn(B, Q, C, generator=gen, dtype=torch.float64))
    embed = leaf(torch.randn(B, Q, C, generator=gen, dtype=torch.float64))
    bev = leaf(torch.randn(B, C, *GRID.shape, generator=gen, dtype=torch.float64))
    return mod, anchor, feat, embed, bev


def test_bev_aggregation_matches_brute_force():
    mod, anchor, feat, embed, bev = bev_case()
    _, valid = bev_sample_coords(mod.keypoints(anchor, feat), GRID)  # (B, Q, P)
    # The cases are what they claim to be.
    assert valid[:, 0].all() and valid[:, 1].any() and not valid[:, 1].all()
    assert not valid[:, 2].any() and valid[:, 3].any() and not valid[:, 3].all()
    out = compare(
        lambda: mod(feat, anchor, embed, bev),
        lambda: bf_bev(mod, feat, anchor, embed, bev),
        [bev, feat, embed, anchor],
        mod,
    )
    assert out.shape == (2, len(BEV_BOXES), C)
    assert (out[:, 2] == 0).all() and (out[:, [0, 1, 3]] != 0).all()


def test_bev_all_masked_gives_zero_and_finite_gradients():
    mod, anchor, feat, embed, bev = bev_case()
    far = leaf(anchor.detach()[:, 2:3].repeat(1, 3, 1))  # every query off the grid
    out = mod(feat[:, :3], far, embed[:, :3], bev)
    assert (out == 0).all()
    grads = torch.autograd.grad(
        out.square().sum() + out.sum(), [bev, feat, embed, far, *mod.parameters()], allow_unused=True
    )
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_bev_sampling_lands_on_gridspec_cells():
    """A BEV map holding each cell's own continuous centre reads back ``metric_to_cell`` exactly."""
    H, W = GRID.shape
    iy, ix = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    ramp = torch.stack([ix + 0.5, iy + 0.5])[None]  # (1, 2, H, W)
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(1, 50, 1, 2, generator=gen, dtype=torch.float64)
    lo = torch.tensor([GRID.xbound[0] + 0.5, GRID.ybound[0] + 0.25], dtype=torch.float64)  # half a cell in
    hi = torch.tensor([GRID.xbound[1] - 0.5, GRID.ybound[1] - 0.25], dtype=torch.float64)
    pts = torch.cat([lo + xy * (hi - lo), torch.zeros(1, 50, 1, 1, dtype=torch.float64)], -1)  # (1, 50, 1, 3)
    coords, inside = bev_sample_coords(pts, GRID)
    assert inside.all()
    got = bilinear_sample(ramp, coords)[0, :, :, 0].T  # (50, 2)
    torch.testing.assert_close(got, GRID.metric_to_cell(pts[0, :, 0]), rtol=0, atol=1e-12)
    ix_, iy_, _ = GRID.cell_index(pts[0, :, 0])
    assert torch.equal(got.floor().long(), torch.stack([ix_, iy_], -1))
    # ``inside`` is GridSpec.cell_index's own test, also at the edges and beyond.
    edge = torch.tensor([[-8.0, 0.0, 0], [7.999, 0, 0], [8.0, 0, 0], [0, -6.0, 0], [0, 6.0, 0], [-8.001, 0, 0]])
    assert bev_sample_coords(edge.double(), GRID)[1].tolist() == GRID.cell_index(edge.double())[2].tolist()


def test_bev_rejects_a_map_of_another_grid():
    mod, anchor, feat, embed, bev = bev_case()
    with pytest.raises(AssertionError, match="bev must be"):
        mod(feat, anchor, embed, bev[..., :-1])


# ---------------------------------------------------------------------------------------------
# PV aggregation


PV_BOXES = [
    [8.0, 1.0, 1.0, 4.0, 2.0, 1.6, 0.3],  # front camera; behind the back camera
    [5.0, 6.0, 1.0, 4.0, 2.0, 1.6, 1.0],  # in front of the front camera, partly off its image
    [0.5, 20.0, 1.0, 0.6, 0.6, 0.6, 0.0],  # beside the car: off both images (depth ~ 0) -> all masked
    [-10.0, -2.0, 0.5, 4.5, 1.9, 1.5, -0.5],  # back camera only
]
LEVELS = ((16, 24), (8, 12), (5, 7))  # (h, w); the last one does not divide the image


def pv_case(seed: int = 0, use_camera_embed: bool = True):
    gen = torch.Generator().manual_seed(seed)
    mod = PVDeformableAggregation(
        C, num_levels=len(LEVELS), num_cams=2, num_groups=G, num_learned=6, use_camera_embed=use_camera_embed
    )
    mod = randomise(mod.double(), seed)
    B, Q = 2, len(PV_BOXES)
    anchor = leaf(make_anchors(PV_BOXES, B))
    feat = leaf(torch.randn(B, Q, C, generator=gen, dtype=torch.float64))
    embed = leaf(torch.randn(B, Q, C, generator=gen, dtype=torch.float64))
    feats = [leaf(torch.randn(B, 2, C, h, w, generator=gen, dtype=torch.float64)) for h, w in LEVELS]
    return mod, anchor, feat, embed, feats, img_from_ego(B)


def test_pv_aggregation_matches_brute_force():
    mod, anchor, feat, embed, feats, i_from_e = pv_case()
    _, depth, valid = project_to_cameras(mod.keypoints(anchor, feat), i_from_e, IMAGE_HW)  # (B, N, Q, P)
    # The cases are what they claim to be.
    assert (depth[:, 1, 0] < 0).all() and valid[:, 0, 0].any()  # query 0: behind the back camera, seen in front
    assert ((depth[:, 0, 1] > 1) & ~valid[:, 0, 1]).any() and valid[:, 0, 1].any()  # query 1: partly off-image
    assert not valid[:, :, 2].any()  # query 2: nothing valid
    assert valid[:, 1, 3].any() and not valid[:, 0, 3].any()  # query 3: back camera only
    out = compare(
        lambda: mod(feat, anchor, embed, feats, i_from_e, IMAGE_HW),
        lambda: bf_pv(mod, feat, anchor, embed, feats, i_from_e),
        [*feats, feat, embed, anchor],
        mod,
    )
    assert (out[:, 2] == 0).all() and (out[:, [0, 1, 3]] != 0).all()


def test_pv_without_camera_embed_matches_brute_force():
    mod, anchor, feat, embed, feats, i_from_e = pv_case(seed=4, use_camera_embed=False)
    assert mod.camera_encoder is None
    compare(
        lambda: mod(feat, anchor, embed, feats, i_from_e, IMAGE_HW),
        lambda: bf_pv(mod, feat, anchor, embed, feats, i_from_e),
        [*feats, feat, embed, anchor],
        mod,
    )


def test_pv_all_masked_gives_zero_and_finite_gradients():
    mod, anchor, feat, embed, feats, i_from_e = pv_case()
    beside = leaf(anchor.detach()[:, 2:3].repeat(1, 3, 1))  # every query off both images
    out = mod(feat[:, :3], beside, embed[:, :3], feats, i_from_e, IMAGE_HW)
    assert (out == 0).all()
    wrt = [*feats, feat, embed, beside, *mod.parameters()]
    grads = torch.autograd.grad(out.square().sum() + out.sum(), wrt, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_pv_projection_matches_geometry_and_level_alignment():
    """Pixels and mask equal ``geometry.project_points``; every level reads back the pixel it is asked for."""
    gen = torch.Generator().manual_seed(5)
    pts = (torch.rand(1, 40, 2, 3, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([40.0, 20.0, 4.0]).double()
    i_from_e = img_from_ego(1)
    uv, depth, valid = project_to_cameras(pts, i_from_e, IMAGE_HW)  # (1, 2, 40, 2, 2)
    H, W = IMAGE_HW
    for n, (R, t) in enumerate(((R_FRONT, [0.5, 0.0, 1.5]), (R_BACK, [-0.5, 0.0, 1.5]))):
        cam_from_ego = geo.invert_transform(geo.make_transform(R, t))
        uv_g, d_g, m_g = geo.project_points(pts.reshape(-1, 3).numpy(), cam_from_ego, K, (W, H))
        assert valid[0, n].reshape(-1).numpy().tolist() == m_g.tolist()
        np.testing.assert_allclose(uv[0, n].reshape(-1, 2).numpy()[m_g], uv_g[m_g], rtol=0, atol=1e-9)
        np.testing.assert_allclose(depth[0, n].reshape(-1).numpy(), d_g, rtol=0, atol=1e-9)
    assert valid.any() and not valid.all()
    # A level holding each cell's continuous pixel centre ((x + 0.5) W / w) reads back u, for any level size.
    u = torch.linspace(W / 5 / 2 + 0.01, W - W / 5 / 2 - 0.01, 30, dtype=torch.float64)  # half a coarse cell in
    v = torch.linspace(H / 5 / 2 + 0.01, H - H / 5 / 2 - 0.01, 30, dtype=torch.float64)
    px = torch.stack([u, v], -1)[None, :, None]  # (1, 30, 1, 2)
    for h, w in LEVELS:
        yy, xx = torch.meshgrid(
            torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
        )
        ramp = torch.stack([(xx + 0.5) * W / w, (yy + 0.5) * H / h])[None]  # (1, 2, h, w)
        got = bilinear_sample(ramp, pixels_to_grid_coords(px, IMAGE_HW))[0, :, :, 0].T  # (30, 2)
        torch.testing.assert_close(got, px[0, :, 0], rtol=0, atol=1e-12)


def test_gather_bilinear_equals_grid_sample_values_and_gradients():
    """The PV path's row gather equals grid_sample (zero padding, align_corners=False), off-map points included."""
    gen = torch.Generator().manual_seed(7)
    M, Cc, h, w, E = 3, 5, 6, 9, 200
    maps = leaf(torch.randn(M, Cc, h, w, generator=gen, dtype=torch.float64))
    m = torch.randint(0, M, (E,), generator=gen)
    x = leaf(torch.rand(E, generator=gen, dtype=torch.float64) * (w + 2) - 1)  # up to a cell off each side
    y = leaf(torch.rand(E, generator=gen, dtype=torch.float64) * (h + 2) - 1)
    table = maps.permute(0, 2, 3, 1).reshape(-1, Cc)
    got = gather_bilinear(table, m * (h * w), x, y, h, w)  # (E, C)
    coords = torch.stack([2 * x / w - 1, 2 * y / h - 1], -1)  # (E, 2)
    ref = torch.stack(
        [bilinear_sample(maps[m[e] : m[e] + 1], coords[e].view(1, 1, 1, 2))[0, :, 0, 0] for e in range(E)]
    )
    far = (x < -0.5) | (x > w + 0.5) | (y < -0.5) | (y > h + 0.5)  # every tap off the map
    assert far.any() and (got[far] == 0).all() and (got[~far] != 0).all()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    up = torch.randn(E, Cc, generator=gen, dtype=torch.float64)
    g_got = torch.autograd.grad((got * up).sum(), [maps, x, y])
    g_ref = torch.autograd.grad((ref * up).sum(), [maps, x, y])
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)
    assert gather_bilinear(table, m[:0], x[:0], y[:0], h, w).shape == (0, Cc)


def test_pv_rejects_bad_shapes():
    mod, anchor, feat, embed, feats, i_from_e = pv_case()
    with pytest.raises(AssertionError, match="img_feats must hold 3 levels"):
        mod(feat, anchor, embed, feats[:2], i_from_e, IMAGE_HW)
    with pytest.raises(AssertionError, match=r"img_feats\[1\]"):
        mod(feat, anchor, embed, [feats[0], feats[1][:, :1], feats[2]], i_from_e, IMAGE_HW)
    with pytest.raises(AssertionError, match="img_from_ego must be"):
        mod(feat, anchor, embed, feats, i_from_e[:, :, :3], IMAGE_HW)


# ---------------------------------------------------------------------------------------------
# Keypoints


def test_fixed_keypoints_survive_every_initialisation():
    """Sparse4D's issue #34: its init overwrote the fixed scales. Here they are a buffer no init reaches."""
    kp = KeypointGenerator(C, num_learned=6)
    assert "fix_scale" not in dict(kp.named_parameters()) and "fix_scale" not in kp.state_dict()
    kp.init_weights()
    for m in kp.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    with torch.no_grad():
        for p in kp.parameters():
            nn.init.normal_(p)
    kp.load_state_dict(kp.state_dict())
    for mod in (BEVDeformableAggregation(C, GRID, num_groups=G), PVDeformableAggregation(C, 2, 2, num_groups=G)):
        mod.init_weights()
        assert torch.equal(mod.keypoints.fix_scale, torch.tensor(DEFAULT_FIX_SCALE, dtype=torch.float64))
    size = torch.tensor([4.2, 1.9, 1.6])
    anchor = boxes_to_anchors(torch.tensor([[0.0, 0.0, 0.0, *size.tolist(), 0.0, 0.0, 0.0]]))[None]  # (1, 1, 11)
    feat = torch.randn(1, 1, C)
    fixed = torch.tensor(DEFAULT_FIX_SCALE) * anchor[..., None, LOG_L : LOG_H + 1].exp()  # (1, 1, 7, 3)
    with_feat = kp(anchor, feat)
    assert with_feat.shape == (1, 1, 13, 3)
    assert torch.equal(with_feat[:, :, :7], fixed) and torch.equal(kp(anchor), fixed)
    # Learned points stay inside the box, |offset| < size / 2 along each box axis.
    assert (with_feat[0, 0, 7:].abs() < size / 2).all()


def test_keypoint_rotation_matches_box_corners():
    boxes = torch.tensor(
        [[3.0, -2.0, 0.9, 4.5, 1.9, 1.6, 0.7, 0.0, 0.0], [-12.0, 5.0, 1.2, 10.0, 2.8, 3.4, -2.4, 1.0, 0.5]],
        dtype=torch.float64,
    )
    pts = KeypointGenerator(C, num_learned=0).double()(boxes_to_anchors(boxes)[None])[0]  # (2, 7, 3)
    corners = geo.box_corners(boxes)  # (2, 8, 3), devkit order: front face 0-3; y + at 0,3,4,7; z + at 0,1,4,5
    centre = boxes[:, None, :3]
    faces = {
        1: [0, 1, 2, 3],  # +0.45 L: front face
        2: [4, 5, 6, 7],
        3: [0, 3, 4, 7],  # +0.45 W: left face
        4: [1, 2, 5, 6],
        5: [0, 1, 4, 5],  # +0.45 H: top face
        6: [2, 3, 6, 7],
    }
    torch.testing.assert_close(pts[:, 0], boxes[:, :3], rtol=0, atol=1e-12)
    for k, idx in faces.items():
        face_centre = corners[:, idx].mean(1, keepdim=True)  # (2, 1, 3)
        torch.testing.assert_close(pts[:, k : k + 1], centre + 0.9 * (face_centre - centre), rtol=0, atol=1e-12)
