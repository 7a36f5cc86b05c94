"""The temporal instance bank (trainer.models.components.sparse.instance_bank): carrying, merging, caching, ids."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.data.common import bev_aug_matrix
from trainer.models.components.sparse.anchors import COS, SIN, X, anchors_to_boxes, boxes_to_anchors
from trainer.models.components.sparse.decoder import CarriedInstances, SparseDecoder
from trainer.models.components.sparse.instance_bank import InstanceBank, project_anchors


def pose(x: float, y: float, yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, 0.3], [0, 0, 0, 1]], dtype=torch.float64)


def test_projection_keeps_a_static_box_in_place_and_moves_a_moving_one_by_v_dt():
    g_from_a, g_from_b = pose(10.0, 5.0, 0.3), pose(14.0, 6.5, 0.55)  # two ego poses, 0.5 s apart
    aug = bev_aug_matrix(rot=0.4, scale=1.05, flip_x=True).double()  # held for the stream
    box_g = torch.tensor([30.0, 20.0, 1.0, 4.5, 1.9, 1.6, 1.2, 0.0, 0.0], dtype=torch.float64)  # global frame
    vel_g = torch.tensor([3.0, -2.0, 0.0], dtype=torch.float64)

    def in_frame(T_frame_from_global, box, v):
        c = T_frame_from_global @ torch.cat([box[:3], torch.ones(1, dtype=box.dtype)])
        L = T_frame_from_global[:3, :3]
        head = L[:2, :2] @ torch.stack([torch.cos(box[6]), torch.sin(box[6])])
        s = torch.linalg.det(L).abs() ** (1 / 3)  # the augmentation's scale
        vv = L @ v
        return torch.stack(
            [c[0], c[1], c[2], box[3] * s, box[4] * s, box[5] * s, torch.atan2(head[1], head[0]), vv[0], vv[1]]
        )

    a_from_g = aug @ torch.linalg.inv(g_from_a)
    b_from_g = aug @ torch.linalg.inv(g_from_b)
    cur_from_prev = b_from_g @ torch.linalg.inv(a_from_g)
    for v in (torch.zeros(3, dtype=torch.float64), vel_g):
        anchor_a = boxes_to_anchors(in_frame(a_from_g, box_g, v)[None])
        got = anchors_to_boxes(project_anchors(anchor_a, cur_from_prev, 0.5))[0]
        moved = box_g.clone()
        moved[:3] += v * 0.5
        want = in_frame(b_from_g, moved, v)
        torch.testing.assert_close(got[:3], want[:3], rtol=0, atol=1e-9)  # centre
        torch.testing.assert_close(got[3:6], want[3:6], rtol=0, atol=1e-9)  # size
        assert abs(math.remainder(float(got[6] - want[6]), 2 * math.pi)) < 1e-9  # heading
        torch.testing.assert_close(got[7:], want[7:], rtol=0, atol=1e-9)  # velocity


def test_yaw_goes_back_to_its_named_columns():
    """A quarter turn of the frame turns heading 0 (sin 0, cos 1) into heading pi/2 (sin 1, cos 0), not [cos, sin]."""
    a = torch.zeros(1, 11)
    a[0, COS] = 1.0
    out = project_anchors(a, pose(0, 0, math.pi / 2).float(), 0.0)
    assert out[0, SIN].item() == pytest.approx(1.0, abs=1e-6) and out[0, COS].item() == pytest.approx(0.0, abs=1e-6)


def _frame(bank, keys, ts, Q=6, C=4, K=3, seed=0, conf=None):
    g = torch.Generator().manual_seed(seed)
    B = len(keys)
    f = torch.randn(B, Q, C, generator=g)
    a = torch.zeros(B, Q, 11)
    a[..., X] = torch.arange(Q).float()
    a[..., COS] = 1.0
    cls = torch.full((B, Q, K), -9.0) if conf is None else conf
    return f, a, cls


def test_streams_reset_at_a_new_scene_a_long_gap_and_a_backwards_step():
    bank = InstanceBank(num_temp_instances=2, max_time_interval=2.0)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    carried, dt = bank.carried(["s1", "s2"], [0, 0], eye)
    assert carried is None and dt.tolist() == [0.0, 0.0]
    f, a, cls = _frame(bank, ["s1", "s2"], [0, 0])
    bank.cache(["s1", "s2"], [0, 0], eye, f, a, cls)
    carried, dt = bank.carried(["s1", "s3"], [500_000, 500_000], eye)  # s2 ended; s3 starts
    assert carried.valid.tolist() == [True, False] and dt.tolist() == [0.5, 0.0]
    f2, a2, cls2 = _frame(bank, ["s1", "s3"], [500_000, 500_000])
    bank.cache(["s1", "s3"], [500_000, 500_000], eye, f2, a2, cls2)
    assert set(bank.streams) == {"s1", "s3"}  # s2 is forgotten
    carried, _ = bank.carried(["s1", "s3"], [3_000_000, 400_000], eye)  # a 2.5 s gap; time going backwards
    assert carried is None


def test_merge_puts_carried_first_then_the_best_new_queries():
    bank = InstanceBank(num_temp_instances=2)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    conf = torch.full((2, 6, 3), -9.0)
    conf[:, 4, 1] = 3.0  # queries 4 and 1 are the best
    conf[:, 1, 0] = 2.0
    f, a, _ = _frame(bank, ["s1", "s2"], [0, 0])
    bank.cache(["s1", "s2"], [0, 0], eye, f, a, conf)
    carried, _ = bank.carried(["s1", "new"], [500_000, 500_000], eye)
    torch.testing.assert_close(carried.instance_feature[0], f[0, [4, 1]])
    f2, a2, _ = _frame(bank, ["s1", "new"], [500_000, 500_000], seed=1)
    cls2 = torch.full((2, 6, 3), -9.0)
    cls2[:, 5, 2] = 4.0
    cls2[:, 2, 0] = 1.0
    cls2[:, 0, 0] = 0.5
    mf, ma = bank.merge(carried, f2, a2, cls2)
    torch.testing.assert_close(mf[0, :2], f[0, [4, 1]])  # carried first
    torch.testing.assert_close(mf[0, 2:5], f2[0, [5, 2, 0]])  # then the best new, best first
    torch.testing.assert_close(mf[1], f2[1])  # a stream carrying nothing keeps its queries
    torch.testing.assert_close(ma[1], a2[1])


def test_ids_are_inherited_new_ones_need_the_threshold_and_confidence_decays():
    bank = InstanceBank(num_temp_instances=2, confidence_decay=0.6, new_id_threshold=0.5)
    eye = torch.eye(4, dtype=torch.float64)[None]
    cls = torch.full((1, 6, 3), -9.0)
    cls[0, 3, 0] = 2.0  # p 0.88: an id
    cls[0, 1, 2] = 0.0  # p 0.5: an id (at the threshold)
    cls[0, 5, 1] = -1.0  # p 0.27: none
    f, a, _ = _frame(bank, ["s"], [0])
    ids = bank.cache(["s"], [0], eye, f, a, cls, assign_ids=True)
    assert ids[0].tolist() == [-1, 0, -1, 1, -1, -1]  # fresh ids in query order
    first = {0, 1}
    carried, _ = bank.carried(["s"], [500_000], eye)
    f2, a2, _ = _frame(bank, ["s"], [500_000], seed=2)
    cls2 = torch.full((1, 6, 3), -9.0)
    cls2[0, 4, 0] = 1.0  # a new, confident query
    mf, ma = bank.merge(carried, f2, a2, cls2)
    merged_cls = torch.full((1, 6, 3), -9.0)
    merged_cls[0, 2, 0] = 1.0  # after the merge the new query sits behind the 2 carried ones
    ids2 = bank.cache(["s"], [500_000], eye, mf, ma, merged_cls, assign_ids=True)
    assert set(ids2[0, :2].tolist()) == first  # carried ids kept although their scores fell
    assert ids2[0, 2].item() == 2 and (ids2[0, 3:] == -1).all()  # a fresh id, unique
    # carried confidence = max(0.6 x previous, current): id 1 (0.88 -> 0.53) stays, id 0 (0.5 -> 0.30) loses its
    # place to the new query (0.73)
    assert set(bank.streams["s"].ids.tolist()) == {1, 2}
    assert bank.streams["s"].confidence.tolist() == pytest.approx([0.7311, 0.6 * 0.8808], abs=1e-4)


def test_decoder_leaves_samples_without_carried_instances_as_they_would_be_alone():
    torch.manual_seed(0)
    dec = SparseDecoder(["temp_attn", "ffn", "refine"], embed_dims=8, num_classes=3, num_heads=2)
    f = torch.randn(2, 5, 8)
    a = torch.zeros(2, 5, 11)
    a[..., COS] = 1.0
    carried = CarriedInstances(torch.randn(2, 3, 8), a[:, :3].clone(), torch.tensor([True, False]))
    layers, out = dec(f, a, carried=carried)
    _, alone = dec(f[1:], a[1:])  # no carried instances: temp_attn skipped
    torch.testing.assert_close(out[1:], alone)
    _, with_all = dec(f[:1], a[:1], carried=CarriedInstances(carried.instance_feature[:1], carried.anchor[:1]))
    torch.testing.assert_close(out[:1], with_all)
    assert not torch.allclose(out[:1], dec(f[:1], a[:1])[1])  # the carried instances did change sample 0


def test_the_bank_keeps_every_tensor_on_its_inputs_device():
    """On CUDA the bank stored the pose with ``.cpu()`` and multiplied it with the next CUDA pose (a crash).

    Here the inputs live on the ``meta`` device (no GPU needed): an op that meets a CPU tensor of the bank fails,
    and after two keyframes (carry, merge, cache) every tensor the bank keeps or returns must be on ``meta``.
    """
    meta = torch.device("meta")
    bank = InstanceBank(num_temp_instances=2)
    keys = ["s1", "s2"]
    poses = torch.stack([pose(1.0, 2.0, 0.1), pose(-3.0, 0.5, 0.7)])
    f, a, cls = _frame(bank, keys, [0, 0])
    carried, dt = bank.carried(keys, [0, 0], poses.to(meta))
    assert carried is None and dt.device == meta
    bank.cache(keys, [0, 0], poses.to(meta), f.to(meta), a.to(meta), cls.to(meta))

    later = torch.stack([pose(2.0, 2.5, 0.15), pose(-2.0, 0.0, 0.75)])
    keys2 = ["s1", "new"]
    carried, dt = bank.carried(keys2, [500_000, 500_000], later.to(meta))
    f2, a2, cls2 = _frame(bank, keys2, [500_000, 500_000], seed=1)
    mf, ma = bank.merge(carried, f2.to(meta), a2.to(meta), cls2.to(meta))
    bank.cache(keys2, [500_000, 500_000], later.to(meta), mf, ma, cls2.to(meta))

    returned = [*carried, dt, mf, ma]
    kept = [t for s in bank.streams.values() for t in (s.aug_from_global, s.feature, s.anchor, s.confidence, s.ids)]
    assert len(kept) == 10 and all(isinstance(t, torch.Tensor) for t in returned + kept)
    off = [tuple(t.shape) for t in returned + kept if t.device != meta]
    assert not off, f"tensors of the bank off the inputs' device: {off}"
