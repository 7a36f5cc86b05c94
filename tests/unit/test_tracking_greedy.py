"""CenterPoint's greedy tracker (trainer.tracking.GreedyTracker) on hand-built scenes."""

from __future__ import annotations

import numpy as np

from trainer.tracking import Detections, GreedyTracker


def test_velocity_compensation_keeps_crossing_objects_apart():
    """Two cars pass each other at 10 m/s, 3 m apart laterally: nearest-last-position association would swap
    them once they have crossed; moving each detection back by its velocity keeps the ids."""
    tr = GreedyTracker()
    ids = []
    for k in range(6):
        t = 0.5 * k
        centres = np.array([[-10 + 10 * t, 0.0], [10 - 10 * t, 3.0]])
        vel = np.array([[10.0, 0.0], [-10.0, 0.0]])
        ids.append(tr.associate(centres, vel, ["car", "car"], np.array([0.9, 0.8]), dt=0.5).tolist())
    assert all(i == ids[0] for i in ids) and len(set(ids[0])) == 2
    # without velocities the same scene swaps or splits the ids
    tr = GreedyTracker()
    ids = [
        tr.associate(
            np.array([[-10 + 10 * 0.5 * k, 0.0], [10 - 10 * 0.5 * k, 3.0]]),
            np.zeros((2, 2)),
            ["car", "car"],
            np.array([0.9, 0.8]),
            0.5,
        ).tolist()
        for k in range(6)
    ]
    assert not all(i == ids[0] for i in ids)


def test_classes_limits_age_and_new_id_threshold():
    tr = GreedyTracker(max_age=2, min_new_score=0.3)
    a = tr.associate(
        np.array([[0.0, 0.0], [5.0, 5.0]]), np.zeros((2, 2)), ["car", "pedestrian"], np.array([0.9, 0.9]), 0.5
    )
    assert a.tolist() == [0, 1]
    # a pedestrian where the car was is not the car; a car 1.5 m from the pedestrian is beyond its 1 m limit
    b = tr.associate(
        np.array([[0.0, 0.0], [5.0, 6.5]]), np.zeros((2, 2)), ["pedestrian", "pedestrian"], np.array([0.9, 0.9]), 0.5
    )
    assert b.tolist() == [2, 3]
    # the car, unseen for one keyframe, coasts and is found again; a weak new detection gets no id
    c = tr.associate(np.array([[0.5, 0.0], [40.0, 0.0]]), np.zeros((2, 2)), ["car", "car"], np.array([0.9, 0.1]), 0.5)
    assert c.tolist() == [0, -1]
    # unseen for max_age keyframes, a track is gone
    tr.associate(np.zeros((0, 2)), np.zeros((0, 2)), [], np.zeros(0), 0.5)
    tr.associate(np.zeros((0, 2)), np.zeros((0, 2)), [], np.zeros(0), 0.5)
    d = tr.associate(np.array([[0.5, 0.0]]), np.zeros((1, 2)), ["car"], np.array([0.9]), 0.5)
    assert d.tolist() == [4]
    tr.reset()
    assert tr.associate(np.array([[0.5, 0.0]]), np.zeros((1, 2)), ["car"], np.array([0.9]), 0.5).tolist() == [5]


def test_the_better_detection_keeps_the_track():
    tr = GreedyTracker()
    tr.associate(np.array([[0.0, 0.0]]), np.zeros((1, 2)), ["car"], np.array([0.9]), 0.5)
    ids = tr.associate(np.array([[0.5, 0.0], [0.2, 0.0]]), np.zeros((2, 2)), ["car", "car"], np.array([0.4, 0.8]), 0.5)
    assert ids.tolist() == [1, 0]  # the nearer one also scores higher here; the weaker one starts a track


def test_step_gives_the_detections_with_ids_best_first():
    """The tracker interface: the detections that got an id, best score first, as boxes of the detections."""
    tr = GreedyTracker(min_new_score=0.3)
    dets = Detections(
        centre=[[0.0, 0.0, 1.0], [10.0, 0.0, 1.0], [20.0, 0.0, 1.0]],
        size=np.ones((3, 3)),
        yaw=[0.1, 0.2, 0.3],
        velocity=np.zeros((3, 2)),
        names=["car", "car", "car"],
        scores=[0.5, 0.9, 0.1],
    )
    out = tr.step(dets, 0.0)
    assert out.source.tolist() == [1, 0] and out.ids.tolist() == [1, 0]
    assert np.allclose(out.centre, dets.centre[[1, 0]]) and out.names == ["car", "car"]
