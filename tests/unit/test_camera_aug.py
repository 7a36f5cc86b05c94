"""Camera data: image and BEV augmentation keep boxes, cameras, depth targets and cached grids aligned.

Runs on the session's tiny synthetic world and its label store (``grid=near``, tests/conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevlabels import geometry as g
from bevlabels.cache import StoreMismatchError
from bevlabels.grid import GridSpec, resample_bev
from trainer.data.camera import (
    CameraDataModule,
    SceneStreamBatchSampler,
    depth_targets,
    sample_image_aug,
)
from trainer.data.common import augment_boxes, bev_aug_matrix

CLASSES = ["car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
           "traffic_cone", "barrier"]  # fmt: skip
NEAR = {"xbound": [-32.0, 32.0, 1.0], "ybound": [-32.0, 32.0, 1.0], "zbound": [-5.0, 3.0, 8.0]}


def make_dm(root, store, grid=NEAR, **kwargs) -> CameraDataModule:
    ds = {"name": "synthetic", "root": str(root), "version": "v1.0-mini"}
    ds["adapter"] = {
        "_target_": "bevlabels.datasets.nuscenes.NuScenesDataset",
        "root": str(root),
        "version": "v1.0-mini",
    }
    kwargs.setdefault("image_aug", {"final_hw": [128, 352]})
    return CameraDataModule(dataset=ds, grid=grid, class_names=CLASSES, label_store=str(store), **kwargs)


# -- pure functions ---------------------------------------------------------------------------------


def test_eval_image_aug_is_identity_when_sizes_match_and_train_aug_is_resize_crop_flip():
    aug = sample_image_aug((352, 128), (128, 352), train=False)
    assert np.allclose(aug["aug_from_img"], np.eye(3)) and not aug["flip"]
    import random

    aug = sample_image_aug((352, 128), (128, 352), train=True, resize_range=(1.25, 1.25), flip_prob=1.0,
                           rng=random.Random(0))  # fmt: skip
    (w, h), (x0, y0) = aug["resize_wh"], aug["crop_xy"]
    assert (w, h) == (440, 160) and y0 == 160 - 128 and 0 <= x0 <= 440 - 352  # bottom-anchored crop
    # pixel (u, v) -> resize by 1.25 -> crop -> mirror in a 352-wide image
    u, v = 100.0, 50.0
    expected = (352 - (1.25 * u - x0), 1.25 * v - y0)
    got = aug["aug_from_img"] @ np.array([u, v, 1.0])
    assert np.allclose(got[:2], expected)


def test_one_draw_serves_a_portrait_and_a_landscape_camera():
    """AV2's ring: the same draw realised per camera size; each K_aug maps a marked pixel onto the augmented image."""
    import random

    from PIL import Image

    from trainer.data.camera import apply_image_aug, draw_image_aug, realise_image_aug

    final_hw = (64, 176)
    draw = draw_image_aug(True, resize_range=(0.9, 1.1), bottom_crop_range=(0.2, 0.3), flip_prob=1.0,
                          rng=random.Random(4))  # fmt: skip
    assert draw["flip"]
    for wh, (u, v) in (((256, 194), (150.5, 100.5)), ((194, 256), (120.5, 150.5))):  # landscape, portrait
        aug = realise_image_aug(wh, final_hw, draw)
        W, H = wh
        fit = max(final_hw[0] / H, final_hw[1] / W)
        assert aug["resize_wh"] == (round(W * fit * draw["resize"]), round(H * fit * draw["resize"]))
        assert aug["resize_wh"][0] >= final_hw[1] * 0.9  # the portrait image is fitted by its width
        img = np.zeros((H, W, 3), np.uint8)
        img[int(v) - 4 : int(v) + 4, int(u) - 4 : int(u) + 4] = 255  # a bright 8 px square around (u, v)
        out = apply_image_aug(Image.fromarray(img), aug, final_hw)
        assert out.shape == (*final_hw, 3)
        q = aug["aug_from_img"] @ np.array([u, v, 1.0])
        ys, xs = np.nonzero(out[..., 0] > 128)
        assert len(xs) > 0, f"marker of the {W}x{H} image left the crop"
        assert abs(xs.mean() + 0.5 - q[0]) < 1.0 and abs(ys.mean() + 0.5 - q[1]) < 1.0


def test_depth_targets_keep_the_nearest_point_per_cell_and_drop_pixels_outside_the_crop():
    px = {
        "cam": np.array([0, 0, 0, 1, 1], dtype=np.uint8),
        "u": np.array([5.0, 7.0, 20.0, 3.0, 40.0], dtype=np.float32),
        "v": np.array([5.0, 1.0, 5.0, 3.0, 3.0], dtype=np.float32),
        "depth": np.array([10.0, 4.0, 6.0, 8.0, 9.0], dtype=np.float32),
        "obj": np.array([-1, 2, -1, 0, 1], dtype=np.int32),
    }
    aug = np.stack([np.eye(3), g.crop_matrix(0.0, 0.0)])  # camera 1 unchanged too; u=40 is outside a 32-wide image
    dmap, fg = depth_targets(px, aug, (16, 32), stride=8)
    assert dmap.shape == (2, 2, 4)
    assert dmap[0, 0, 0] == 4.0  # 10 m and 4 m share cell (0, 0): the nearest wins
    assert dmap[0, 0, 2] == 6.0 and dmap[1, 0, 0] == 8.0
    assert (dmap > 0).sum() == 3  # the point at u=40 left the image
    assert fg[:, 4].tolist() == [2.0, 0.0]  # obj >= 0 rows that stayed: cam, u, v, depth, obj


@pytest.mark.parametrize("seed", range(6))
def test_resample_bev_nearest_gather_equals_grid_sample(seed):
    """The nearest path (a gather in the map's dtype) reads the very cells F.grid_sample's nearest mode reads."""
    grid = GridSpec(**{k: tuple(v) for k, v in NEAR.items()})
    rng = np.random.default_rng(seed)
    aug = bev_aug_matrix(rng.uniform(-0.6, 0.6), rng.uniform(0.9, 1.1), bool(seed % 2), bool(seed // 3))
    aug[:2, 3] = torch.tensor(rng.uniform(6, 8, 2) * rng.choice([-1, 1], 2))  # and a shift: cells from outside
    bev = torch.randn(3, *grid.shape, generator=torch.Generator().manual_seed(seed))
    ego_from_aug = torch.linalg.inv(aug.double())
    xy = torch.from_numpy(grid.cell_centres()) @ ego_from_aug[:2, :2].T + ego_from_aug[:2, 3]
    lo = torch.tensor([grid.xbound[0], grid.ybound[0]], dtype=torch.float64)
    hi = torch.tensor([grid.xbound[1], grid.ybound[1]], dtype=torch.float64)
    norm = (2 * (xy - lo) / (hi - lo) - 1).float()
    ref = torch.nn.functional.grid_sample(bev[None], norm[None], mode="nearest", align_corners=False)[0]
    out = resample_bev(bev, grid, dst_from_src=aug, mode="nearest")
    assert torch.equal(out, ref) and (out == 0).any()  # some cells come from outside the grid
    half = resample_bev(bev.half(), grid, dst_from_src=aug, mode="nearest")
    assert half.dtype == torch.float16 and torch.equal(half, ref.half())


def test_resample_bev_moves_a_marked_cell_with_the_augmentation():
    """A one-cell blob at ego point p is found, after augmentation, at the cell of aug_from_ego @ p."""
    grid = GridSpec(**{k: tuple(v) for k, v in NEAR.items()})
    p = np.array([10.5, -6.5])  # a cell centre
    ix, iy, _ = grid.cell_index(p)
    bev = torch.zeros(2, *grid.shape)
    bev[:, iy, ix] = torch.tensor([1.0, 5.0])
    for rot, flip_x, flip_y in [(math.pi / 2, True, False), (-math.pi / 2, False, True), (math.pi, True, True)]:
        aug = bev_aug_matrix(rot, 1.0, flip_x, flip_y)
        out = resample_bev(bev, grid, dst_from_src=aug, mode="nearest")
        q = (aug[:2, :2].double() @ torch.tensor(p)).numpy()
        jx, jy, inside = grid.cell_index(q)
        assert inside and out[:, jy, jx].tolist() == [1.0, 5.0]
        assert out.sum() == 6.0  # a right-angle rotation of a centred grid is a permutation of cells
    # A general angle and scale move it to within a cell of the mapped point.
    aug = bev_aug_matrix(0.37, 1.08, True, False)
    out = resample_bev(bev[:1], grid, dst_from_src=aug, mode="nearest")[0]
    q = (aug[:2, :2].double() @ torch.tensor(p)).numpy()
    hit = torch.nonzero(out)
    centres = grid.cell_centres()[hit[:, 0], hit[:, 1]]
    assert len(hit) >= 1 and np.abs(centres - q).max() <= 1.0


def test_scene_stream_batch_sampler_keeps_each_slot_in_scene_order():
    scenes = ["a", "a", "a", "b", "b", "c"]
    sampler = SceneStreamBatchSampler(scenes, batch_size=2)
    batches = list(sampler)
    assert batches == [[0, 3], [1, 4], [2, 5]] and len(sampler) == 3  # slot 0: a; slot 1: b then c
    shuffled = SceneStreamBatchSampler(scenes, batch_size=2, shuffle=True, seed=3)
    for epoch in range(3):
        shuffled.set_epoch(epoch)
        flat = sorted(i for b in shuffled for i in b)
        assert flat == list(range(6))
        for slot in shuffled.streams():
            for s in set(scenes[i] for i in slot):
                idx = [i for i in slot if scenes[i] == s]
                assert idx == sorted(idx) and idx == list(range(idx[0], idx[0] + len(idx)))  # contiguous, in order


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_scene_stream_batch_sampler_gives_each_rank_whole_scenes_each_once_in_lockstep(epoch):
    from torch.utils.data import BatchSampler, DistributedSampler

    lengths = [5, 3, 4, 4, 2, 6, 3]  # seven scenes of unequal length
    scenes = [f"s{i}" for i, n in enumerate(lengths) for _ in range(n)]
    ranks = [SceneStreamBatchSampler(scenes, 2, shuffle=True, seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    assert isinstance(ranks[0], BatchSampler)  # so Lightning rebuilds it under DDP instead of refusing it
    for r in ranks:
        r.set_epoch(epoch)
    batches = [list(r) for r in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1]) > 0  # lockstep: no DDP hang
    seen = [[i for b in rank for i in b] for rank in batches]
    scenes_of = [{scenes[i] for i in idx} for idx in seen]
    assert not scenes_of[0] & scenes_of[1], "a scene went to both ranks"
    flat = seen[0] + seen[1]
    assert len(flat) == len(set(flat)), "a keyframe was read twice in one epoch"
    assert len(flat) + ranks[0].dropped() == len(scenes) and ranks[0].dropped() < max(lengths)
    for rank in ranks:  # every slot walks whole scenes from their first keyframe, in order
        for slot in rank.streams():
            for sc in {scenes[i] for i in slot}:
                idx = [i for i in slot if scenes[i] == sc]
                assert idx == list(range(idx[0], idx[0] + len(idx))) and scenes.index(sc) == idx[0]
    # Lightning's DistributedSampler hands over the rank and world size; one rank drops nothing.
    ds = list(range(len(scenes)))
    via = SceneStreamBatchSampler(scenes, 2, True, 7, sampler=DistributedSampler(ds, num_replicas=2, rank=1))
    via.set_epoch(epoch)
    assert list(via) == batches[1]
    one = SceneStreamBatchSampler(scenes, 2, shuffle=True, seed=7)
    one.set_epoch(epoch)
    assert sorted(i for b in one for i in b) == list(range(len(scenes))) and one.dropped() == 0
    with pytest.raises(ValueError, match="3 ranks"):
        SceneStreamBatchSampler(["a", "b"], 1, num_replicas=3, rank=0)


# -- on the tiny synthetic world ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def augmented(synth_tiny, synth_tiny_store):
    """A training sample with every augmentation on and fixed (resize 1.2, crop, image flip, rotation, scale, x flip)."""
    dm = make_dm(
        synth_tiny,
        synth_tiny_store,
        image_aug={"final_hw": [112, 320], "resize_range": [1.2, 1.2], "flip_prob": 1.0},
        bev_aug={"rot_range": [0.5, 0.5], "scale_range": [1.1, 1.1], "flip_x_prob": 1.0, "flip_y_prob": 0.0},
        load_dino=True,
        dino_interp="nearest",
    )
    dm.setup("fit")
    ds = dm.make_dataset(dm.frames("train"), train=True)
    return dm, ds, ds.frames[1], ds[1]


def test_projected_box_corners_enclose_their_depth_pixels_after_augmentation(augmented):
    """Each box, augmented, projected with the augmented K and extrinsics, encloses its LiDAR pixels (also augmented)."""
    _, _, frame, sample = augmented
    assert sample["images"].shape == (6, 3, 112, 320)
    boxes = augment_boxes(torch.as_tensor(frame.boxes.boxes, dtype=torch.float64), sample["aug_from_ego"].double())
    corners = g.box_corners(boxes).numpy()  # (M, 8, 3) augmented ego frame
    fg = sample["fg_px"].numpy()
    checked = 0
    for n in range(6):
        cam_from_ego = np.linalg.inv(sample["ego_from_cam"][n].double().numpy())  # affine: scale and flip inside
        K = sample["K"][n].double().numpy()
        for m in np.unique(fg[fg[:, 0] == n, 4]).astype(int):
            rows = fg[(fg[:, 0] == n) & (fg[:, 4] == m)]
            pc = g.transform_points(cam_from_ego, corners[m])  # (8, 3)
            if len(rows) < 5 or (pc[:, 2] < 0.5).any():
                continue  # few pixels, or a box crossing the image plane (its projection is unbounded)
            uv = (pc @ K.T)[:, :2] / pc[:, 2:]
            tol = 1.0  # pixels: LiDAR returns lie on the surface, within the box up to float error
            assert (rows[:, 1] >= uv[:, 0].min() - tol).all() and (rows[:, 1] <= uv[:, 0].max() + tol).all()
            assert (rows[:, 2] >= uv[:, 1].min() - tol).all() and (rows[:, 2] <= uv[:, 1].max() + tol).all()
            # inv(aug_from_ego @ ego_from_cam) undoes the BEV scale: pc is in the camera's own metres, as LiDAR depth.
            z = pc[:, 2]
            assert (rows[:, 3] >= z.min() - 0.05).all() and (rows[:, 3] <= z.max() + 0.05).all()
            checked += 1
    assert checked >= 5, f"only {checked} (camera, box) pairs checked"


def test_augmented_cached_grids_follow_the_boxes(augmented):
    """Object points pooled into dino/count sit inside their boxes in the augmented frame as in the ego frame."""
    dm, ds, frame, sample = augmented
    grid = dm.grid
    s = ds.reader.index_of(frame.token)
    count0 = torch.from_numpy(ds.reader.dino_count(s).astype(np.int32))
    count1 = sample["dino_count"]
    assert sample["dino_feat"].shape == (32, *grid.shape) and count1.shape == grid.shape

    def occupancy_in_boxes(count, boxes):
        inside = g.points_in_boxes(
            np.concatenate([grid.cell_centres().reshape(-1, 2), np.zeros((grid.nx * grid.ny, 1))], 1),
            np.concatenate(
                [boxes[:, :2], np.zeros((len(boxes), 1)), boxes[:, 3:5], np.full((len(boxes), 1), 10.0), boxes[:, 6:7]],
                1,
            ),  # fmt: skip
        )  # (H*W, M): cell centre inside the box footprint
        occ = (count.reshape(-1, 1) > 0).numpy() & inside
        return occ.sum(0), inside.sum(0)

    boxes0 = frame.boxes.boxes
    boxes1 = augment_boxes(torch.as_tensor(boxes0), sample["aug_from_ego"].double()).numpy()
    occ0, cells0 = occupancy_in_boxes(count0, boxes0)
    occ1, cells1 = occupancy_in_boxes(count1, boxes1)
    big = (cells0 >= 6) & (occ0 >= 4)  # boxes covering several cells with pooled points
    assert big.sum() >= 3
    # The same boxes are occupied after augmentation, at a similar fraction of their cells.
    frac0, frac1 = occ0[big] / cells0[big], occ1[big] / np.maximum(cells1[big], 1)
    assert np.abs(frac1 - frac0).mean() < 0.2, (frac0, frac1)
    # And the grid as a whole keeps its occupied area (scale 1.1 changes it by ~20% at most).
    assert abs(int((count1 > 0).sum()) - int((count0 > 0).sum())) < 0.3 * int((count0 > 0).sum())


def test_image_flip_mirrors_images_and_depth_targets(synth_tiny, synth_tiny_store):
    plain = make_dm(synth_tiny, synth_tiny_store, image_aug={"final_hw": [128, 352]})
    flipped = make_dm(synth_tiny, synth_tiny_store, image_aug={"final_hw": [128, 352], "flip_prob": 1.0})
    plain.setup("fit")
    flipped.setup("fit")
    a = plain.make_dataset(plain.frames("train")[:1], train=False)[0]
    b = flipped.make_dataset(flipped.frames("train")[:1], train=True)[0]
    assert torch.equal(b["images"], a["images"].flip(-1))
    same = (b["depth_map"] == a["depth_map"].flip(-1)).float().mean()
    assert same > 0.99  # all but pixels exactly on a cell edge, which a mirror moves to the neighbour
    assert torch.allclose(b["K"][:, 0, 0], -a["K"][:, 0, 0])  # K_aug = flip @ K: fx changes sign


def test_data_module_refuses_a_missing_store_and_another_grid(synth_tiny, synth_tiny_store, tmp_path):
    dm = make_dm(synth_tiny, tmp_path / "absent.zarr")
    dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="make labels"):
        dm.check_inputs()
    default_grid = {"xbound": [-51.2, 51.2, 0.8], "ybound": [-51.2, 51.2, 0.8], "zbound": [-5.0, 3.0, 8.0]}
    dm = make_dm(synth_tiny, synth_tiny_store, grid=default_grid)
    dm.setup("fit")
    with pytest.raises(StoreMismatchError, match="grid"):
        dm.check_inputs()
    ok = make_dm(synth_tiny, synth_tiny_store)
    ok.setup("fit")
    ok.check_inputs()
    assert ok.dino_channels == 32


def test_sequential_scenes_stream_keyframes_in_order_with_the_previous_pose(synth_tiny, synth_tiny_store):
    dm = make_dm(synth_tiny, synth_tiny_store, image_aug={"final_hw": [64, 176]}, sequential_scenes=True, batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b["frame_index"].tolist() for b in batches] == [[0], [1], [2], [3]]  # one train scene: one slot
    assert torch.equal(batches[0]["prev_global_from_ego"], batches[0]["global_from_ego"])  # a scene starts
    for prev, cur in zip(batches[:-1], batches[1:]):
        assert torch.equal(cur["prev_global_from_ego"], prev["global_from_ego"])


def test_bilinear_dino_resampling_ignores_empty_cells():
    """Bilinear resampling averages occupied neighbours only: a constant feature stays constant at the edges."""
    from trainer.data.camera import resample_dino

    grid = GridSpec(**{k: tuple(v) for k, v in NEAR.items()})
    count = torch.zeros(grid.shape, dtype=torch.int32)
    count[20:40, 10:30] = 3
    feat = torch.zeros(4, *grid.shape, dtype=torch.float16)
    feat[:, 20:40, 10:30] = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float16).view(4, 1, 1)
    aug = bev_aug_matrix(0.3, 1.05, False, True)
    f, c = resample_dino(feat, count, aug, grid, "bilinear")
    occupied = c > 0
    assert occupied.sum() > 300 and f.dtype == torch.float16
    assert torch.allclose(f[:, occupied].float(), feat[:, 25, 15:16].float(), atol=1e-2)  # no dilution by zeros
    assert (f[:, ~occupied] == 0).all()
