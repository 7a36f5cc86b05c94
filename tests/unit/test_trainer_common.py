"""The trainer's shared pieces on hand-made inputs: BEV augmentation, collation, nuScenes result boxes, teacher-map resampling, checkpoint checks."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from bevlabels import geometry as g
from bevlabels.conf import load_grid
from bevlabels.grid import GridSpec
from trainer.data.common import augment_boxes, augment_points, bev_aug_matrix, collate
from trainer.nusc_results import boxes_from_results, boxes_to_global, default_attribute, make_results

CAR = [2.0, 1.0, 0.5, 4.0, 2.0, 1.5, 0.3, 3.0, -1.0]  # x y z l w h yaw vx vy


# ---------------------------------------------------------------------------------------------
# BEV augmentation


@pytest.mark.parametrize(
    ("aug", "expected"),
    [
        # flip of x: centre and vx negated, heading pi - yaw
        (dict(flip_x=True), [-2.0, 1.0, 0.5, 4.0, 2.0, 1.5, math.pi - 0.3, -3.0, -1.0]),
        # flip of y: y and vy negated, heading -yaw
        (dict(flip_y=True), [2.0, -1.0, 0.5, 4.0, 2.0, 1.5, -0.3, 3.0, 1.0]),
        # a quarter turn: (x, y) -> (-y, x), yaw + pi/2, velocity turned alike
        (dict(rot=math.pi / 2), [-1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3 + math.pi / 2, 1.0, 3.0]),
        # scale 2: positions, sizes and velocities double (the world is bigger and faster)
        (dict(scale=2.0), [4.0, 2.0, 1.0, 8.0, 4.0, 3.0, 0.3, 6.0, -2.0]),
    ],
)
def test_augment_boxes_hand_cases(aug, expected):
    out = augment_boxes(torch.tensor([CAR], dtype=torch.float64), bev_aug_matrix(**aug))[0]
    exp = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(out[[0, 1, 2, 3, 4, 5, 7, 8]], exp[[0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-5, rtol=0)
    assert abs(g.wrap_angle(out[6] - exp[6]).item()) < 1e-5


def test_augmented_points_stay_in_their_augmented_boxes_and_nan_velocity_stays_nan():
    boxes = torch.tensor([CAR, [-5.0, 3.0, 0.0, 1.0, 0.6, 1.7, -2.0, float("nan"), float("nan")]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    local = (torch.rand(200, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.98  # inside a unit box
    pts = torch.cat([g.transform_points(g.make_transform(g.rot_z(b[6]), b[:3]), local * b[3:6]) for b in boxes])
    cloud = torch.cat([pts, torch.rand(len(pts), 2, generator=gen, dtype=torch.float64)], 1)  # + intensity, dt
    aug = bev_aug_matrix(rot=0.7, scale=1.1, flip_x=True, flip_y=False).double()
    moved, moved_boxes = augment_points(cloud, aug), augment_boxes(boxes, aug)
    inside = g.points_in_boxes(moved[:, :3].numpy(), moved_boxes.numpy())  # (P, M)
    assert inside[:200, 0].all() and inside[200:, 1].all()
    assert torch.equal(moved[:, 3:], cloud[:, 3:])  # intensity and dt untouched
    assert moved_boxes[1, 7:].isnan().all()


def test_collate_concatenates_points_with_batch_index_and_keeps_ragged_lists():
    s = [
        {"sample_token": "a", "points": torch.ones(2, 5), "gt_boxes": torch.zeros(1, 9), "pose": torch.eye(4)},
        {"sample_token": "b", "points": torch.zeros(3, 5), "gt_boxes": torch.zeros(1, 9), "pose": torch.eye(4)},
    ]
    b = collate(s)
    assert b["sample_token"] == ["a", "b"]
    assert b["points"].shape == (5, 6) and b["points"][:, 0].tolist() == [0, 0, 1, 1, 1]
    assert isinstance(b["gt_boxes"], list) and len(b["gt_boxes"]) == 2  # a LIST_KEY, even with equal shapes
    assert b["pose"].shape == (2, 4, 4)
    with pytest.raises(KeyError, match="same keys"):
        collate([s[0], {"sample_token": "c"}])


# ---------------------------------------------------------------------------------------------
# nuScenes result boxes


def test_boxes_to_global_hand_case():
    """Ego at (10, 0, 0) turned +90 deg: ego +x is global +y."""
    global_from_ego = g.make_transform(g.rot_z(np.array(math.pi / 2)), np.array([10.0, 0.0, 0.0]))
    box = np.array([[1.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0, 2.0, 0.0]])
    out = boxes_to_global(box, global_from_ego)
    np.testing.assert_allclose(out["translation"], [[10.0, 1.0, 0.5]], atol=1e-12)
    np.testing.assert_allclose(out["size"], [[2.0, 4.0, 1.5]])  # w, l, h
    np.testing.assert_allclose(out["rotation"], [[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]], atol=1e-12)
    np.testing.assert_allclose(out["velocity"], [[0.0, 2.0]], atol=1e-12)


def test_boxes_from_results_undo_boxes_to_global_for_a_level_pose():
    """The hand case above read back from its result dict: the box in the global frame, size as L W H, the heading
    of the quaternion; a box without a velocity gets 0."""
    global_from_ego = g.make_transform(g.rot_z(np.array(math.pi / 2)), np.array([10.0, 0.0, 0.0]))
    box = np.array([[1.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0, 2.0, 0.0]])
    out = boxes_to_global(box, global_from_ego)
    result = {k: out[k][0].tolist() for k in ("translation", "size", "rotation", "velocity")}
    no_velocity = {k: v for k, v in result.items() if k != "velocity"}
    back = boxes_from_results([result, no_velocity])
    np.testing.assert_allclose(back[0], g.transform_boxes(global_from_ego, box)[0], atol=1e-12)
    np.testing.assert_allclose(back[0, :7], [10.0, 1.0, 0.5, 4.0, 2.0, 1.5, math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(back[1, g.VX :], [0.0, 0.0])
    assert boxes_from_results([]).shape == (0, 9)


def test_attributes_follow_class_and_speed():
    assert default_attribute("car", 5.0) == "vehicle.moving" and default_attribute("car", 0.1) == "vehicle.parked"
    assert default_attribute("pedestrian", 1.0) == "pedestrian.moving"
    assert default_attribute("pedestrian", 0.0) == "pedestrian.standing"
    assert (
        default_attribute("bicycle", 3.0) == "cycle.with_rider" and default_attribute("bus", 0.0) == "vehicle.stopped"
    )
    assert default_attribute("traffic_cone", 3.0) == "" and default_attribute("barrier", 0.0) == ""


def test_make_results_lists_every_token_and_zeroes_unknown_velocity():
    pred = {
        "sample_token": "t1",
        "boxes": torch.tensor([[1.0, 0, 0, 4, 2, 1.5, 0, float("nan"), float("nan")]]),
        "scores": torch.tensor([0.7]),
        "labels": torch.tensor([0]),
    }
    res = make_results([pred], {"t1": np.eye(4)}, ["car"], use_lidar=True, all_tokens=["t0", "t1"])
    assert res["results"]["t0"] == [] and res["meta"]["use_lidar"] and not res["meta"]["use_camera"]
    (box,) = res["results"]["t1"]
    assert (
        box["velocity"] == [0.0, 0.0] and box["detection_name"] == "car" and box["attribute_name"] == "vehicle.parked"
    )
    with pytest.raises(KeyError, match="not in the evaluated split"):
        make_results([{**pred, "sample_token": "x"}], {"x": np.eye(4)}, ["car"], all_tokens=["t0"])


# ---------------------------------------------------------------------------------------------
# Teacher maps onto another grid


def test_resample_bev_reads_metric_positions_and_zeros_outside():
    from bevlabels.grid import resample_bev
    from pipelines.teacher import grid_label

    src = GridSpec((-4.0, 4.0, 1.0), (-2.0, 2.0, 0.5))  # 8 x 8 cells
    dst = GridSpec((-6.0, 6.0, 2.0), (-3.0, 3.0, 1.0))  # 6 x 6, wider than src
    xy = torch.as_tensor(src.cell_centres())  # (H, W, 2)
    bev = torch.stack([xy[..., 0], 3 * xy[..., 1] + 1])[None].float()  # (1, 2, H, W), linear in x and y
    out = resample_bev(bev, src, dst)
    assert out.shape == (1, 2, 6, 6)
    centres = torch.as_tensor(dst.cell_centres()).float()
    inner = (centres[..., 0].abs() < 3.5) & (centres[..., 1].abs() < 1.75)  # between src's outer cell centres
    torch.testing.assert_close(out[0, 0][inner], centres[..., 0][inner])  # bilinear is exact on a linear map
    torch.testing.assert_close(out[0, 1][inner], 3 * centres[..., 1][inner] + 1)
    assert (out[0, :, :, 0] == 0).all() and (out[0, :, :, -1] == 0).all()  # x = +-5 m: beyond src's 4 m
    torch.testing.assert_close(resample_bev(bev, src, src), bev)  # same grid: the identity
    assert grid_label(load_grid("near")).startswith("near (x [-32, 32]")


# ---------------------------------------------------------------------------------------------
# Checkpoints and the optimisation plumbing


def test_check_state_dict_names_missing_unexpected_and_mis_shaped_keys():
    from trainer.lit_base import CheckpointError, check_state_dict, state_dict_sha256

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    sd = dict(model.state_dict())
    check_state_dict(model, sd)
    bad = {**sd, "2.weight": torch.zeros(1)}
    bad["0.weight"] = torch.zeros(4, 2)
    del bad["1.bias"]
    with pytest.raises(
        CheckpointError, match=r"missing keys \(1\): 1\.bias.*unexpected keys \(1\): 2\.weight.*0\.weight"
    ):
        check_state_dict(model, bad)
    assert state_dict_sha256(sd) == state_dict_sha256(dict(model.state_dict()))
    assert state_dict_sha256(sd) != state_dict_sha256({**sd, "0.bias": sd["0.bias"] + 1})


def test_one_cycle_gets_total_steps_from_the_trainer():
    from trainer.lit_base import DetectionModule

    class Tiny(DetectionModule):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.lin = torch.nn.Linear(1, 1)

    m = Tiny(
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-3),
        class_names=("car",),
    )
    m._trainer = type("T", (), {"estimated_stepping_batches": 40})()  # what Lightning provides in fit
    conf = m.configure_optimizers()
    assert conf["lr_scheduler"]["scheduler"].total_steps == 40 and conf["lr_scheduler"]["interval"] == "step"
    m._trainer = type("T", (), {"estimated_stepping_batches": float("inf")})()  # max_time alone
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        m.configure_optimizers()


def test_a_result_without_boxes_scores_zero_where_the_devkit_would_raise():
    """The devkit's filter_eval_boxes raises on a result file with no box at all; we give its numbers instead."""
    from trainer.eval.nusc_detection import format_table, no_detections_eval

    summary, details = no_detections_eval("mini_val")
    assert summary["nd_score"] == 0.0 and summary["mean_ap"] == 0.0
    assert all(v == 1.0 for v in summary["tp_errors"].values())
    assert math.isnan(summary["label_tp_errors"]["traffic_cone"]["vel_err"])  # skipped for cones, as the devkit does
    assert len(details) == 40  # 10 classes x 4 distance thresholds
    assert "NDS   0.0000" in format_table(summary)


def test_gt_for_frame_keeps_boxes_the_bev_augmentation_rotates_onto_the_grid():
    from types import SimpleNamespace

    from trainer.data.common import gt_for_frame

    grid = GridSpec.from_dict({"xbound": [-51.2, 51.2, 0.8], "ybound": [-51.2, 51.2, 0.8], "zbound": [-5, 3, 8]})
    boxes = np.zeros((4, 9))
    boxes[:, 3:6] = [4.0, 2.0, 1.5]
    boxes[:, :2] = [[55.0, 0.0], [10.0, 0.0], [0.0, 50.0], [20.0, 20.0]]  # beyond, inside, inside, inside
    frame = SimpleNamespace(
        boxes=SimpleNamespace(
            boxes=boxes,
            detection_class=["car", "car", "pedestrian", None],  # None: a class the benchmark ignores
            num_lidar_pts=np.array([5, 5, 5, 5]),
        )
    )
    b, lab = gt_for_frame(frame, ["car", "pedestrian"], grid)
    assert b[:, :2].tolist() == [[10.0, 0.0], [0.0, 50.0]] and lab.tolist() == [0, 1]
    aug = bev_aug_matrix(rot=math.pi / 4)  # (55, 0) -> (38.9, 38.9): on the grid; (0, 50) -> (-35.4, 35.4)
    b, lab = gt_for_frame(frame, ["car", "pedestrian"], grid, aug_from_ego=aug)
    expected = augment_boxes(torch.as_tensor(boxes[:3], dtype=torch.float32), aug)
    torch.testing.assert_close(b, expected)
    assert lab.tolist() == [0, 0, 1]
    aug = bev_aug_matrix(scale=1.1)  # (50 * 1.1 = 55): the pedestrian leaves the grid, the car stays out
    b, lab = gt_for_frame(frame, ["car", "pedestrian"], grid, aug_from_ego=aug)
    assert lab.tolist() == [0] and math.isclose(float(b[0, 0]), 11.0, rel_tol=1e-6)
