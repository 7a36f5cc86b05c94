"""Label-scarce training (``data.box_fraction``): the per-sample detection mask and the seeded choice of box scenes.

A sample whose boxes are withheld must add exactly zero detection loss (an empty box list is not "no objects"),
its gradient must come from the depth and distillation losses only, and the normalisers must count labelled
samples only: each masked loss equals the same loss on the labelled samples alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bevlabels import geometry as G
from trainer.data.common import choose_box_scenes
from trainer.models.components.sparse.anchors import boxes_to_anchors
from trainer.models.losses import gaussian_focal_loss, sparse_detection_loss

K = 3


def box(x, y, z=0.0, l=4.0, w=2.0, h=1.5, yaw=0.0, vx=0.0, vy=0.0):
    return [x, y, z, l, w, h, yaw, vx, vy]


def _layers(g, B, Q, layers=2):
    return [
        {
            "anchor": torch.randn(B, Q, 11, generator=g, dtype=torch.float64).requires_grad_(),
            "cls": torch.randn(B, Q, K, generator=g, dtype=torch.float64).requires_grad_(),
            "quality": torch.randn(B, Q, 2, generator=g, dtype=torch.float64).requires_grad_(),
        }
        for _ in range(layers)
    ]


# ---------------------------------------------------------------------------------------------
# The dense head's focal loss


def test_masked_focal_loss_is_the_loss_of_the_labelled_samples_alone():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 0.9
    target[0, 1, 4, 4] = 1.0  # one object in sample 0; sample 1 has none (its boxes are withheld)
    masked = gaussian_focal_loss(logits, target, 1, sample_mask=torch.tensor([True, False]))
    alone = gaussian_focal_loss(logits[:1], target[:1], 1)
    torch.testing.assert_close(masked, alone)
    (grad,) = torch.autograd.grad(masked, logits)
    assert grad[1].abs().max() == 0 and grad[0].abs().max() > 0
    # no sample labelled: an exact zero, still in the graph
    none = gaussian_focal_loss(logits, target, 0, sample_mask=torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad
    # the default (no mask) is unchanged: every sample counts
    full = gaussian_focal_loss(logits, target, 1)
    both = gaussian_focal_loss(logits, target, 1, sample_mask=torch.tensor([True, True]))
    torch.testing.assert_close(full, both)


# ---------------------------------------------------------------------------------------------
# The sparse head: unlabelled samples are not matched and get no classification target


def test_masked_sparse_loss_is_the_loss_of_the_labelled_samples_alone():
    g = torch.Generator().manual_seed(5)
    B, Q, D = 2, 6, 4
    gt_boxes = [
        torch.tensor([box(1, 2, yaw=0.5, vx=1.0), box(-4, 3)], dtype=torch.float64),
        torch.zeros(0, 9, dtype=torch.float64),  # withheld: empty, but it must not teach "no objects"
    ]
    gt_labels = [torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long)]
    layers = _layers(g, B, Q)
    dn_gt = torch.cat([boxes_to_anchors(gt_boxes[0]), boxes_to_anchors(gt_boxes[0])])[None].repeat(B, 1, 1)
    dn = {
        "layers": _layers(g, B, D),
        "gt_anchor": dn_gt,
        "labels": torch.tensor([[2, 0, -1, -1], [-1, -1, -1, -1]]),
        # sample 1's background denoising queries marked valid on purpose: the mask must drop them all the same
        "valid": torch.tensor([[True, True, True, True], [False, False, True, True]]),
    }
    mask = torch.tensor([True, False])
    out = sparse_detection_loss(layers, gt_boxes, gt_labels, dn=dn, sample_mask=mask)

    sub = [{k: v[:1] for k, v in layer.items()} for layer in layers]
    sub_dn = {
        "layers": [{k: v[:1] for k, v in layer.items()} for layer in dn["layers"]],
        "gt_anchor": dn_gt[:1],
        "labels": dn["labels"][:1],
        "valid": dn["valid"][:1],
    }
    alone = sparse_detection_loss(sub, gt_boxes[:1], gt_labels[:1], dn=sub_dn)
    assert set(out) == set(alone)
    for k in out:
        torch.testing.assert_close(out[k], alone[k], msg=k)

    params = [t for layer in layers + dn["layers"] for t in layer.values()]
    grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
    for grad in grads:
        if grad is not None:
            assert grad[1].abs().max() == 0, "a sample without boxes got a detection gradient"
    assert any(grad is not None and grad[0].abs().max() > 0 for grad in grads)

    # without the mask, the same empty list pushes every query of sample 1 to background: the bug the mask fixes
    unmasked = sparse_detection_loss(layers, gt_boxes, gt_labels, dn=dn)
    (g1,) = torch.autograd.grad(unmasked["loss"], [layers[0]["cls"]])
    assert g1[1].abs().max() > 0


def test_sparse_loss_with_no_labelled_sample_is_an_exact_zero_in_the_graph():
    g = torch.Generator().manual_seed(6)
    layers = _layers(g, 2, 4, layers=1)
    gt_boxes = [torch.tensor([box(0, 0)], dtype=torch.float64), torch.zeros(0, 9, dtype=torch.float64)]
    gt_labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    out = sparse_detection_loss(layers, gt_boxes, gt_labels, sample_mask=torch.tensor([False, False]))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    # DDP: every prediction stays in the graph, with a zero gradient
    assert all(t.grad is not None and t.grad.abs().max() == 0 for t in layers[0].values())


# ---------------------------------------------------------------------------------------------
# A tiny BEVDepth: detection masked per sample, depth and distillation not


# OpenCV camera looking along ego +x (cam x -> ego -y, cam y -> ego -z, cam z -> ego x)
R_FRONT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _camera_batch(B: int = 2, hw=(64, 176)) -> dict:
    """Front and back cameras over the near grid, random images, a car ahead of sample 0; sample 1 withheld."""
    K = np.array([[80.0, 0, hw[1] / 2], [0, 80.0, hw[0] / 2], [0, 0, 1]])
    front = G.make_transform(R_FRONT, [1.0, 0.0, 1.5])
    back = G.make_transform(G.rot_z(np.pi) @ R_FRONT, [-1.0, 0.0, 1.5])
    g = torch.Generator().manual_seed(1)
    return {
        "images": torch.randint(0, 255, (B, 2, 3, *hw), generator=g, dtype=torch.uint8),
        "K": torch.tensor(K, dtype=torch.float32).expand(B, 2, 3, 3).clone(),
        "ego_from_cam": torch.tensor(np.stack([front, back]), dtype=torch.float32).expand(B, 2, 4, 4).clone(),
        "gt_boxes": [torch.tensor([box(10.0, 1.0)], dtype=torch.float32), torch.zeros(0, 9)],
        "gt_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)],
        "has_boxes": torch.tensor([True, False]),
    }


def test_tiny_bevdepth_masks_detection_per_sample_but_not_depth_or_distillation(compose_train, tmp_path):
    """Sample 1 has no boxes: its detection loss and gradient are zero; depth and distillation reach it.

    In eval mode: training-mode BatchNorm couples the samples through the batch statistics, which is not a loss
    term's gradient (the detection loss itself is still zero for the unlabelled sample there).
    """
    from conftest import TINY_CAMERA_MODEL
    from hydra.utils import instantiate

    cfg = compose_train(
        ["experiment=bevdepth_dino", "grid=near", f"run_dir={tmp_path}", "model.detector.distill_channels=8"]
        + TINY_CAMERA_MODEL
    )
    module = instantiate(cfg.model)
    det = module.detector.eval()
    torch.manual_seed(0)
    batch = _camera_batch()
    images = batch["images"].float().requires_grad_()  # (B, N, 3, H, W): every image feature derives from them
    out = det(images, batch["K"], batch["ego_from_cam"])
    B, H, W = 2, *det.grid.shape
    depth_map = torch.zeros(B, 2, *out["depth_logits"].shape[-2:])
    depth_map[:, :, 2:, :] = 12.0  # LiDAR depth in the lower rows of every camera
    dino_feat = torch.randn(B, 8, H, W)
    dino_count = torch.ones(B, H, W, dtype=torch.int32)
    kw = dict(depth_weight=3.0, distill_weight=7.0)
    losses = det.loss(
        out, batch["gt_boxes"], batch["gt_labels"], depth_map, dino_feat, dino_count, has_boxes=batch["has_boxes"], **kw
    )
    # sample 1's detection loss is zero: the masked batch's detection loss is sample 0's alone
    out0 = det(images[:1].detach(), batch["K"][:1], batch["ego_from_cam"][:1])
    alone = det.detection_loss(out0, batch["gt_boxes"][:1], batch["gt_labels"][:1])
    torch.testing.assert_close(losses["det"], alone["loss"])
    (g_det,) = torch.autograd.grad(losses["det"], images, retain_graph=True)
    assert g_det[1].abs().max() == 0 and g_det[0].abs().max() > 0
    for name in ("depth", "distill"):
        (g,) = torch.autograd.grad(losses[name], images, retain_graph=True)
        assert g[1].abs().max() > 0, f"{name} does not reach the unlabelled sample"
    # the total is det + 3 depth + 7 distill, the default (no has_boxes) unchanged by the new argument
    torch.testing.assert_close(losses["loss"], losses["det"] + 3.0 * losses["depth"] + 7.0 * losses["distill"])
    full = det.loss(out, batch["gt_boxes"], batch["gt_labels"], depth_map, dino_feat, dino_count, **kw)
    ones = det.loss(
        out,
        batch["gt_boxes"],
        batch["gt_labels"],
        depth_map,
        dino_feat,
        dino_count,
        has_boxes=torch.ones(2, dtype=bool),
        **kw,
    )
    torch.testing.assert_close(full["loss"], ones["loss"])
    assert full["det"] > losses["det"]  # without the mask, sample 1's empty map teaches "no objects"


# ---------------------------------------------------------------------------------------------
# Which scenes keep their boxes


SCENES = [f"scene-{i:04d}" for i in range(20)]


def test_box_scene_choice_is_seeded_sized_and_in_split_order():
    a = choose_box_scenes(SCENES, 0.25, seed=7)
    assert a == choose_box_scenes(SCENES, 0.25, seed=7)  # the seed alone decides
    assert len(a) == 5 and a == sorted(a, key=SCENES.index) and set(a) <= set(SCENES)
    assert any(choose_box_scenes(SCENES, 0.25, seed=s) != a for s in range(8, 12))
    assert choose_box_scenes(SCENES, 1.0, seed=7) == SCENES  # today's behaviour
    assert choose_box_scenes(SCENES, 0.0, seed=7) == []
    assert len(choose_box_scenes(SCENES, 0.01, seed=7)) == 1  # at least one scene when the fraction is positive
    # a numpy Generator seeded with the seed: the record can be checked against it anywhere
    expected = sorted(np.random.default_rng(7).choice(20, size=5, replace=False).tolist())
    assert a == [SCENES[i] for i in expected]
    with pytest.raises(ValueError, match="box_fraction"):
        choose_box_scenes(SCENES, 1.5, seed=0)


def test_data_module_withholds_the_other_scenes_and_the_run_records_its_choice(tmp_path, monkeypatch):
    from trainer.data.camera import CameraDataModule
    from trainer.train import record_box_scenes

    def module(fraction, seed=3):
        dm = CameraDataModule(
            dataset={"name": "synthetic", "version": "v1.0-mini", "adapter": {"_target_": "x"}},
            grid={"xbound": [-32, 32, 1.0], "ybound": [-32, 32, 1.0], "zbound": [-5, 3, 8]},
            class_names=["car"],
            label_store=None,
            image_aug={"final_hw": [64, 176]},
            box_fraction=fraction,
            box_fraction_seed=seed,
        )
        monkeypatch.setattr(dm, "scenes", lambda split: list(SCENES))
        monkeypatch.setattr(dm, "prepare_data", lambda: None)
        return dm

    dm = module(0.3)
    chosen = dm.box_scenes
    assert chosen == choose_box_scenes(SCENES, 0.3, seed=3) and len(chosen) == 6
    assert sorted(dm.withheld_scenes() + chosen) == SCENES

    class Logger:
        logged: dict = {}

        def log_hyperparams(self, params):
            self.logged.update(params)

    logger = Logger()
    record = record_box_scenes(dm, tmp_path, [logger])
    saved = json.loads(Path(tmp_path / "box_scenes.json").read_text())
    assert saved == record and saved["box_scenes"] == chosen and saved["box_fraction_seed"] == 3
    assert saved["train_scenes"] == 20 and logger.logged["data/box_scenes"] == chosen

    full = module(1.0)
    assert full.box_scenes is None and full.withheld_scenes() == []
    assert record_box_scenes(full, tmp_path / "none", []) is None  # today's runs write nothing new
