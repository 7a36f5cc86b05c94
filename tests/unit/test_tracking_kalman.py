"""The Kalman tracker (trainer.tracking.kalman): its filter against filterpy's, and association on hand-built scenes."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.tracking import ClassParams, ConstantVelocityFilter, Detections, KalmanTracker, build_tracker
from trainer.tracking.kalman import turn_to


def _dets(centres, names=None, scores=None, yaw=None, velocity=None):
    centres = np.asarray(centres, float).reshape(-1, 3)
    M = len(centres)
    return Detections(
        centre=centres,
        size=np.tile([1.9, 4.6, 1.6], (M, 1)),
        yaw=np.zeros(M) if yaw is None else yaw,
        velocity=np.zeros((M, 2)) if velocity is None else velocity,
        names=names or ["car"] * M,
        scores=np.full(M, 0.9) if scores is None else scores,
    )


def test_filter_equals_filterpy_on_a_hand_made_sequence():
    """Predict and update, with and without the velocity measurement, over uneven intervals: the batched filter gives
    filterpy's KalmanFilter's state and covariance (Joseph form, the default of both) to 1e-9."""
    filterpy = pytest.importorskip("filterpy.kalman")
    p = ClassParams(accel=2.5, position_noise=0.7, velocity_noise=1.5, init_velocity=9.0)
    rng = np.random.default_rng(0)
    z0 = np.array([10.0, -3.0, 0.8, 0.3, 1.9, 4.6, 1.6])
    x, P = ConstantVelocityFilter.initial(z0, p)
    kf = filterpy.KalmanFilter(dim_x=9, dim_z=7)
    kf.x, kf.P = x.copy(), P.copy()
    ours_x, ours_P = x[None].copy(), P[None].copy()
    truth = np.array([10.0, -3.0])
    for k, dt in enumerate([0.5, 0.5, 0.45, 0.55, 1.0, 0.5]):
        truth = truth + np.array([8.0, 1.0]) * dt
        Q = ConstantVelocityFilter.process_noise(p, dt)
        kf.predict(F=ConstantVelocityFilter.transition(dt), Q=Q)
        ours_x, ours_P = ConstantVelocityFilter.predict(ours_x, ours_P, Q[None], dt)
        with_v = k % 2 == 1
        z = np.concatenate([truth + rng.normal(0, 0.5, 2), [0.8, 0.3 + rng.normal(0, 0.05), 1.9, 4.6, 1.6]])
        if with_v:
            z = np.concatenate([z, [8.0, 1.0] + rng.normal(0, 1.0, 2)])
        Hm = ConstantVelocityFilter.measurement_matrix(with_v)
        R = ConstantVelocityFilter.measurement_noise(p, with_v)
        kf.update(z, R=R, H=Hm)
        ours_x, ours_P = ConstantVelocityFilter.update(ours_x, ours_P, z[None], R[None], Hm)
        np.testing.assert_allclose(ours_x[0], kf.x.reshape(-1), atol=1e-9)
        np.testing.assert_allclose(ours_P[0], kf.P, atol=1e-9)
    # and the velocity was learned from positions and the two velocity measurements: about (8, 1) m/s
    assert np.linalg.norm(ours_x[0, 7:] - [8.0, 1.0]) < 2.0


def test_headings_are_turned_within_90_degrees_of_the_track():
    np.testing.assert_allclose(turn_to(np.array([np.pi - 0.1, 0.2]), np.array([-0.05, 0.0])), [-0.1, 0.2], atol=1e-12)


def test_a_crossing_pair_keeps_its_ids_without_any_velocity():
    """Two cars pass each other at 10 m/s on lanes 3 m apart, the detector giving no velocity: after two keyframes the
    filter knows each one's velocity and predicts where it will be, so ids hold through the crossing; the greedy
    tracker, which trusts the (zero) velocity, loses them."""
    tr, greedy = build_tracker("kalman")[0], build_tracker("greedy")[0]
    by_lane, greedy_ids = {0: set(), 1: set()}, set()
    for k in range(10):
        t = 0.5 * k
        dets = _dets([[-20 + 10 * t, 0.0, 1.0], [20 - 10 * t, 3.0, 1.0]])
        out = tr.step(dets, 0.5 if k else 0.0)
        for c, i in zip(out.centre, out.ids):  # the filtered boxes, read by lane
            by_lane[int(round(c[1] / 3.0))].add(int(i))
        greedy_ids |= set(greedy.step(dets, 0.5 if k else 0.0).ids.tolist())
    assert by_lane == {0: {0}, 1: {1}}, by_lane
    # greedy: a car moves 5 m a keyframe, beyond its 4 m limit: new ids all along
    assert len(greedy_ids) > 4
    # the filter learned the velocities: about +10 and -10 m/s along x
    np.testing.assert_allclose(np.sort(tr.x[:, 7]), [-10.0, 10.0], atol=0.5)


def test_two_stages_a_weak_box_extends_a_track_but_never_starts_one():
    tr = KalmanTracker(high_score=0.5, low_score=0.1, birth_score=0.5, max_age=2)
    a = tr.step(_dets([[0.0, 0.0, 1.0]], scores=np.array([0.9])), 0.0)
    assert a.ids.tolist() == [0]
    # the car now detected weakly (0.2) and a weak box elsewhere: the first extends track 0, the second is dropped
    b = tr.step(_dets([[0.2, 0.0, 1.0], [30.0, 0.0, 1.0]], scores=np.array([0.2, 0.2])), 0.5)
    assert b.ids.tolist() == [0] and len(tr.ids) == 1
    # below low_score nothing is used: the track coasts, is not output, and after max_age misses it is gone
    assert len(tr.step(_dets([[0.3, 0.0, 1.0]], scores=np.array([0.05])), 0.5)) == 0
    tr.step(Detections.empty(), 0.5)
    assert len(tr.ids) == 1
    tr.step(Detections.empty(), 0.5)
    assert len(tr.ids) == 0
    c = tr.step(_dets([[0.3, 0.0, 1.0]], scores=np.array([0.9])), 0.5)
    assert c.ids.tolist() == [1]


def test_classes_never_mix_and_a_far_detection_is_a_new_track():
    tr = build_tracker("kalman")[0]
    tr.step(_dets([[0.0, 0.0, 1.0]], names=["pedestrian"]), 0.0)
    out = tr.step(_dets([[0.1, 0.0, 1.0], [0.0, 2.9, 1.0]], names=["car", "pedestrian"]), 0.5)
    # the car at the pedestrian's place is not the pedestrian; a pedestrian 2.9 m away is beyond its 2.5 m limit
    assert sorted(out.ids.tolist()) == [1, 2]
    tr.reset()
    assert tr.step(_dets([[0.0, 0.0, 1.0]]), 0.0).ids.tolist() == [3]  # ids stay unique over a run


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key"):
        build_tracker({"name": "kalman", "hig_score": 0.3})
    with pytest.raises(ValueError, match="unknown class parameter"):
        build_tracker({"name": "kalman", "classes": {"car": {"max_dist": 3}}})
    with pytest.raises(ValueError, match="low_score <= high_score <= birth_score"):
        KalmanTracker(low_score=0.5, high_score=0.3, birth_score=0.3)
    with pytest.raises(ValueError, match="tracker must be one of"):
        build_tracker("hungarian")


def test_input_nms_radii_scale_with_input_nms_scale():
    from trainer.tracking import tracker_config

    cfg = tracker_config("kalman")
    base = build_tracker(cfg)[1]
    assert base == {k: float(v) for k, v in cfg["input_nms"].items()}  # the default scale is 1
    wide = build_tracker({**cfg, "input_nms_scale": 3.0})[1]
    assert wide.keys() == base.keys() and all(wide[k] == pytest.approx(3.0 * base[k]) for k in base)
    assert build_tracker("greedy")[1] is None  # no radii: no NMS, whatever the scale
    with pytest.raises(ValueError, match="input_nms_scale must be > 0"):
        build_tracker({**cfg, "input_nms_scale": 0.0})


def test_the_configs_per_class_parameters_are_used():
    tr = build_tracker("kalman")[0]
    assert tr.params("pedestrian").max_distance == 2.5 and tr.params("car").max_distance == 7.0
    assert tr.params("barrier") == tr.default


def test_coasting_tracks_are_output_only_when_asked_with_a_decayed_score():
    for coast_score, expected in ((0.0, 0), (0.5, 1)):
        tr = KalmanTracker(coast_score=coast_score, max_age=3)
        for k in range(3):  # a car at 6 m/s along x, seen three times
            tr.step(_dets([[3.0 * k, 0.0, 1.0]], scores=np.array([0.8])), 0.5 if k else 0.0)
        out = tr.step(Detections.empty(), 0.5)  # missed: coasting
        assert len(out) == expected
        if expected:
            assert out.ids.tolist() == [0] and out.source.tolist() == [-1]
            assert out.scores[0] == pytest.approx(0.4)
            assert abs(out.centre[0, 0] - 9.0) < 1.0  # predicted where it went on
