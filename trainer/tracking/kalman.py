"""A Kalman-filter tracker that estimates velocity from the track's history (``tracker=kalman``, the default).

The field's answer to detectors without a good velocity head (Chiu et al. 2020, "Probabilistic 3D Multi-Object
Tracking for Autonomous Driving"; AB3DMOT; SimpleTrack; ByteTrack's two-stage association), written here from the
algorithms:

- **State** per track, global frame: ``s = (x, y, z, yaw, w, l, h, vx, vy)`` (:data:`STATE`), constant velocity in
  the ground plane. Predict over ``dt``: ``s <- F s``, ``P <- F P F^T + Q`` with ``F`` moving ``x, y`` by
  ``v dt`` and ``Q`` a white-noise acceleration of the class's ``accel`` (m/s^2) on each ground axis (the
  discrete piecewise model: ``accel^2 [[dt^4/4, dt^3/2], [dt^3/2, dt^2]]``), plus random walks on ``z``, yaw and
  size. The velocity is never measured unless the detector's is fused: it is what the filter learns from the
  track's positions.
- **Measurement** ``z = (x, y, z, yaw, w, l, h)`` with the class's noise ``R``; with ``use_detector_velocity``
  and a detector that predicts one (a non-zero velocity in the keyframe), ``(vx, vy)`` is measured too, with its
  own noise ``velocity_noise``. A measured yaw more than 90 degrees from the track's is turned by 180 degrees
  first (a box's heading is ambiguous by pi), and the innovation is wrapped. The update is the textbook one,
  with Joseph's form of the covariance, batched over the matched tracks (:class:`ConstantVelocityFilter`; tested
  against ``filterpy.kalman.KalmanFilter``).
- **Association** per class, Hungarian (``scipy.optimize.linear_sum_assignment``) on the ground-plane
  Mahalanobis distance ``d2`` of each detection to each track's predicted centre (the innovation covariance ``S``
  of ``x, y`` sets the gate, so a young track whose velocity is unknown reaches as far as a car drives in ``dt``,
  an old one only its predicted position's spread), gated at ``gate_chi2`` and at the class's ``max_distance``
  metres. ``cost=nll`` (the default) adds ``log det S``, the Gaussian's negative log-likelihood, so a track that has
  coasted for a while (a wide ``S``) does not take a detection from a track that was seen a keyframe ago;
  ``cost=mahalanobis`` is ``d2`` alone; ``cost=distance`` the centre distance, gated at ``max_distance`` only.
- **Two stages** (ByteTrack): detections scoring at least ``high_score`` are associated first, with every live
  track; the remaining live tracks that are confirmed may then take detections scoring between ``low_score`` and
  ``high_score``. Only unmatched detections scoring at least ``birth_score`` start tracks, so a weak box can extend
  a track and never start one. Detections below ``low_score`` are not used.
- **Life**: a track is confirmed after ``min_hits`` matches; a tentative track unmatched once is dropped, a
  confirmed one coasts (predicted) for up to ``max_age`` keyframes. Each keyframe outputs the tracks
  matched in it that are confirmed (at a scene's first ``min_hits`` keyframes the tentative ones too), with
  the filtered box (``output=filtered``) or the detected one (``output=detection``), the detection's score and
  the filtered velocity; with ``coast_score`` > 0 also the coasting tracks, their predicted box scored their last
  detection's score times ``coast_score`` per missed keyframe (a missed detection bridged, ranked low).

The per-class parameters live in ``conf/tracker/kalman.yaml`` (``classes``, with ``default`` for a class not
listed); :func:`~trainer.tracking.factory.build_tracker` reads them.

Shapes: M detections of a keyframe, T live tracks, K matched pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.optimize import linear_sum_assignment

from bevlabels.geometry import wrap_angle
from trainer.tracking.base import Detections, Tracks

#: the state's components, in order
STATE = ("x", "y", "z", "yaw", "w", "l", "h", "vx", "vy")
X, Y, Z, YAW, W, L, H, VX, VY = range(9)
#: the measured components without and with the detector's velocity
MEASURED = (X, Y, Z, YAW, W, L, H)
MEASURED_V = (*MEASURED, VX, VY)
#: chi-square quantile of 2 degrees of freedom at 99% (the default gate on the ground-plane Mahalanobis distance)
CHI2_2DOF_99 = 9.21


@dataclass(frozen=True)
class ClassParams:
    """One class's motion and noise model and its association limits (``conf/tracker/kalman.yaml``)."""

    max_distance: float = 4.0  # metres: no association further than this, whatever the cost
    accel: float = 3.0  # m/s^2: the white-noise acceleration of the process model, per ground axis
    position_noise: float = 0.5  # m: measurement noise of x, y (a camera detector's centre error)
    z_noise: float = 0.5  # m
    yaw_noise: float = 0.3  # rad
    size_noise: float = 0.3  # m
    velocity_noise: float = 2.0  # m/s: noise of the detector's velocity, when it is fused
    init_velocity: float = 10.0  # m/s: prior spread of a new track's velocity (about the class's top speed)
    z_walk: float = 0.2  # m/s: random walk of z, yaw (rad/s) and size (m/s) over time
    yaw_walk: float = 0.5
    size_walk: float = 0.05

    @classmethod
    def from_mapping(cls, m: Mapping, base: ClassParams | None = None) -> ClassParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ValueError(f"tracker kalman: unknown class parameter(s) {unknown}; known: {sorted(known)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        values.update({k: float(v) for k, v in m.items()})
        return cls(**values)


class ConstantVelocityFilter:
    """The Kalman filter of :data:`STATE`, batched over tracks (module docstring).

    ``x (T, 9)``, ``P (T, 9, 9)``. :meth:`predict` and :meth:`update` act on rows; nothing loops over tracks.
    """

    dim = len(STATE)

    @staticmethod
    def transition(dt: float) -> np.ndarray:
        F = np.eye(9)
        F[X, VX] = F[Y, VY] = dt
        return F

    @staticmethod
    def process_noise(p: ClassParams, dt: float) -> np.ndarray:
        Q = np.zeros((9, 9))
        dt = abs(float(dt))
        a2 = p.accel**2
        for pos, vel in ((X, VX), (Y, VY)):
            Q[pos, pos] = a2 * dt**4 / 4
            Q[pos, vel] = Q[vel, pos] = a2 * dt**3 / 2
            Q[vel, vel] = a2 * dt**2
        Q[Z, Z] = (p.z_walk * dt) ** 2
        Q[YAW, YAW] = (p.yaw_walk * dt) ** 2
        for s in (W, L, H):
            Q[s, s] = (p.size_walk * dt) ** 2
        return Q

    @staticmethod
    def measurement_noise(p: ClassParams, with_velocity: bool) -> np.ndarray:
        r = [p.position_noise, p.position_noise, p.z_noise, p.yaw_noise, p.size_noise, p.size_noise, p.size_noise]
        if with_velocity:
            r += [p.velocity_noise, p.velocity_noise]
        return np.diag(np.square(r))

    @staticmethod
    def measurement_matrix(with_velocity: bool) -> np.ndarray:
        rows = MEASURED_V if with_velocity else MEASURED
        Hm = np.zeros((len(rows), 9))
        Hm[np.arange(len(rows)), rows] = 1.0
        return Hm

    @staticmethod
    def initial(z: np.ndarray, p: ClassParams, velocity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """State and covariance of a new track from its first measurement ``z (7,)`` (and the detector's velocity,
        fused: then the prior spread is ``velocity_noise``, else the velocity is 0 with spread ``init_velocity``)."""
        x = np.zeros(9)
        x[:7] = z[:7]
        P = np.zeros((9, 9))
        P[:7, :7] = ConstantVelocityFilter.measurement_noise(p, False)
        if velocity is not None:
            x[[VX, VY]] = velocity
            P[VX, VX] = P[VY, VY] = p.velocity_noise**2
        else:
            P[VX, VX] = P[VY, VY] = p.init_velocity**2
        return x, P

    @staticmethod
    def predict(x: np.ndarray, P: np.ndarray, Q: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """``x (T, 9)``, ``P (T, 9, 9)``, ``Q (T, 9, 9)`` (each track its class's) moved ``dt`` seconds on."""
        F = ConstantVelocityFilter.transition(dt)
        return x @ F.T, F @ P @ F.T + Q

    @staticmethod
    def innovation(x: np.ndarray, z: np.ndarray, Hm: np.ndarray) -> np.ndarray:
        """``z - H x`` ``(K, m)`` with the yaw term wrapped (``z``'s yaw already turned to within 90 degrees)."""
        y = z - x @ Hm.T
        y[:, 3] = wrap_angle(y[:, 3])
        return y

    @staticmethod
    def update(
        x: np.ndarray, P: np.ndarray, z: np.ndarray, R: np.ndarray, Hm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The update of ``K`` tracks ``x (K, 9)``, ``P (K, 9, 9)`` with measurements ``z (K, m)`` of noise
        ``R (K, m, m)`` through ``Hm (m, 9)``; Joseph's form of the covariance (as ``filterpy``)."""
        y = ConstantVelocityFilter.innovation(x, z, Hm)
        PHt = P @ Hm.T  # (K, 9, m)
        S = Hm @ PHt + R  # (K, m, m)
        Kg = np.linalg.solve(S, np.swapaxes(PHt, 1, 2))  # S^-1 (H P^T) = (P H^T S^-1)^T, S symmetric
        Kg = np.swapaxes(Kg, 1, 2)  # (K, 9, m)
        x = x + np.einsum("kij,kj->ki", Kg, y)
        x[:, YAW] = wrap_angle(x[:, YAW])
        I_KH = np.eye(9)[None] - Kg @ Hm
        P = I_KH @ P @ np.swapaxes(I_KH, 1, 2) + Kg @ R @ np.swapaxes(Kg, 1, 2)
        return x, P


def turn_to(yaw_measured: np.ndarray, yaw_track: np.ndarray) -> np.ndarray:
    """The measured headings turned by 180 degrees where they point more than 90 degrees away from the track's."""
    d = wrap_angle(yaw_measured - yaw_track)
    return np.where(np.abs(d) > np.pi / 2, wrap_angle(yaw_measured + np.pi), yaw_measured)


@dataclass
class KalmanTracker:
    """Kalman filtering with two-stage Hungarian association (module docstring). Call :meth:`reset` per scene."""

    classes: Mapping[str, ClassParams] = field(default_factory=dict)
    default: ClassParams = field(default_factory=ClassParams)
    cost: str = "nll"  # nll | mahalanobis | distance
    gate_chi2: float = CHI2_2DOF_99
    high_score: float = 0.15
    low_score: float = 0.05
    birth_score: float = 0.15
    min_hits: int = 1
    max_age: int = 2
    output: str = "filtered"  # filtered | detection
    coast_score: float = 0.0  # > 0: coasting tracks are output, their last score times this per missed keyframe
    use_detector_velocity: bool = False
    name: str = "kalman"

    def __post_init__(self):
        if self.cost not in ("mahalanobis", "nll", "distance"):
            raise ValueError(f"tracker kalman: cost must be mahalanobis, nll or distance; got {self.cost!r}")
        if self.output not in ("filtered", "detection"):
            raise ValueError(f"tracker kalman: output must be filtered or detection; got {self.output!r}")
        if not (self.low_score <= self.high_score and self.high_score <= self.birth_score):
            raise ValueError(
                "tracker kalman: needs low_score <= high_score <= birth_score; got "
                f"{self.low_score}, {self.high_score}, {self.birth_score}"
            )
        self.next_id = 0
        self.reset()

    def params(self, name: str) -> ClassParams:
        return self.classes.get(name, self.default)

    def reset(self) -> None:
        """Forget every track (a new scene); ids keep counting, so they stay unique over a whole run."""
        self.x = np.zeros((0, 9))
        self.P = np.zeros((0, 9, 9))
        self.names: list[str] = []
        self.ids = np.zeros(0, np.int64)
        self.hits = np.zeros(0, np.int64)
        self.misses = np.zeros(0, np.int64)
        self.score = np.zeros(0)  # each track's last detection score
        self.frame = 0

    # -- association ------------------------------------------------------------------------------------------
    def _cost(self, dets: Detections, det_index: np.ndarray, track_index: np.ndarray) -> np.ndarray:
        """Cost ``(len(det_index), len(track_index))``: inf where the class differs or a gate is passed."""
        D, T = len(det_index), len(track_index)
        cost = np.full((D, T), np.inf)
        if not D or not T:
            return cost
        det_names = np.array([dets.names[i] for i in det_index])
        trk_names = np.array([self.names[t] for t in track_index])
        r = dets.centre[det_index, None, :2] - self.x[None, track_index, :2]  # (D, T, 2)
        dist = np.linalg.norm(r, axis=-1)
        limit = np.array([self.params(n).max_distance for n in det_names])[:, None]
        ok = (det_names[:, None] == trk_names[None]) & (dist <= limit)
        if self.cost == "distance":
            cost = np.where(ok, dist, np.inf)
        else:
            Pxy = self.P[track_index][:, :2, :2]  # (T, 2, 2)
            Rxy = np.array([self.params(n).position_noise ** 2 for n in det_names])[:, None, None, None] * np.eye(2)
            S = Pxy[None] + Rxy  # (D, T, 2, 2)
            d2 = np.einsum("dti,dti->dt", r, np.linalg.solve(S, r[..., None])[..., 0])
            if (
                self.cost == "nll"
            ):  # the negative log-likelihood: an uncertain (old, coasting) track pays for its spread
                d2_cost = d2 + np.log(np.linalg.det(S))
            else:
                d2_cost = d2
            cost = np.where(ok & (d2 <= self.gate_chi2), d2_cost, np.inf)
        return cost

    @staticmethod
    def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
        """Hungarian assignment on the finite entries of ``cost``: ``(row, col)`` pairs."""
        if not cost.size or not np.isfinite(cost).any():
            return []
        finite = np.isfinite(cost)
        big = np.max(cost[finite]) * 2 + 1e6
        rows, cols = linear_sum_assignment(np.where(finite, cost, big))
        return [(int(r), int(c)) for r, c in zip(rows, cols) if finite[r, c]]

    # -- one keyframe ------------------------------------------------------------------------------------------
    def step(self, dets: Detections, dt: float) -> Tracks:
        # predict every live track to this keyframe
        if len(self.ids):
            Q = np.stack([ConstantVelocityFilter.process_noise(self.params(n), dt) for n in self.names])
            self.x, self.P = ConstantVelocityFilter.predict(self.x, self.P, Q, dt)
        velocity_measured = self.use_detector_velocity and bool(np.any(np.abs(dets.velocity) > 0))

        order = np.argsort(-dets.scores, kind="stable")
        high = order[dets.scores[order] >= self.high_score]
        low = order[(dets.scores[order] >= self.low_score) & (dets.scores[order] < self.high_score)]
        T = len(self.ids)
        track_of_det = np.full(len(dets), -1, np.int64)
        free = np.ones(T, bool)
        # stage 1: confident detections, every live track
        all_tracks = np.arange(T)
        for r, c in self._assign(self._cost(dets, high, all_tracks)):
            track_of_det[high[r]] = all_tracks[c]
            free[all_tracks[c]] = False
        # stage 2: weak detections, the confirmed tracks left
        confirmed_free = np.flatnonzero(free & (self.hits >= self.min_hits))
        for r, c in self._assign(self._cost(dets, low, confirmed_free)):
            track_of_det[low[r]] = confirmed_free[c]
            free[confirmed_free[c]] = False

        matched = np.flatnonzero(track_of_det >= 0)
        if len(matched):
            self._update(dets, matched, track_of_det[matched], velocity_measured)
        # tracks not matched: a tentative one dies, a confirmed one coasts up to max_age keyframes
        self.misses[free] += 1
        alive = ~free | ((self.hits >= self.min_hits) & (self.misses <= self.max_age))
        coasting = free & alive
        # births: confident detections left over
        born = np.array([i for i in high if track_of_det[i] < 0 and dets.scores[i] >= self.birth_score], np.int64)
        self._birth(dets, born, velocity_measured)
        track_of_det[born] = np.arange(T, T + len(born))
        alive = np.concatenate([alive, np.ones(len(born), bool)])
        coasting = np.concatenate([coasting, np.zeros(len(born), bool)])
        self.frame += 1
        out = self._output(dets, track_of_det, np.flatnonzero(coasting))
        # drop the dead
        self.x, self.P = self.x[alive], self.P[alive]
        self.names = [n for n, keep in zip(self.names, alive) if keep]
        self.ids, self.hits, self.misses, self.score = (
            a[alive] for a in (self.ids, self.hits, self.misses, self.score)
        )
        return out

    def _update(self, dets: Detections, det_rows: np.ndarray, track_rows: np.ndarray, with_velocity: bool) -> None:
        z = np.concatenate([dets.centre[det_rows], dets.yaw[det_rows, None], dets.size[det_rows]], 1)
        z[:, 3] = turn_to(z[:, 3], self.x[track_rows, YAW])
        if with_velocity:
            z = np.concatenate([z, dets.velocity[det_rows]], 1)
        Hm = ConstantVelocityFilter.measurement_matrix(with_velocity)
        R = np.stack(
            [ConstantVelocityFilter.measurement_noise(self.params(self.names[t]), with_velocity) for t in track_rows]
        )
        self.x[track_rows], self.P[track_rows] = ConstantVelocityFilter.update(
            self.x[track_rows], self.P[track_rows], z, R, Hm
        )
        self.hits[track_rows] += 1
        self.misses[track_rows] = 0
        self.score[track_rows] = dets.scores[det_rows]

    def _birth(self, dets: Detections, born: np.ndarray, with_velocity: bool) -> None:
        """New tracks (appended rows) from the detections ``born``: the state is the detection."""
        xs, Ps = np.zeros((len(born), 9)), np.zeros((len(born), 9, 9))
        for k, i in enumerate(born):
            z = np.concatenate([dets.centre[i], [dets.yaw[i]], dets.size[i]])
            v = dets.velocity[i] if with_velocity else None
            xs[k], Ps[k] = ConstantVelocityFilter.initial(z, self.params(dets.names[i]), v)
        self.x, self.P = np.concatenate([self.x, xs]), np.concatenate([self.P, Ps])
        self.names = self.names + [dets.names[i] for i in born]
        self.ids = np.concatenate([self.ids, np.arange(self.next_id, self.next_id + len(born), dtype=np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(len(born), np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(len(born), np.int64)])
        self.score = np.concatenate([self.score, dets.scores[born]])
        self.next_id += len(born)

    def _output(self, dets: Detections, track_of_det: np.ndarray, coasting: np.ndarray) -> Tracks:
        """This keyframe's tracks: those matched or born in it that may be shown (confirmed, or the scene is young),
        and with ``coast_score`` > 0 the confirmed ones coasting (their predicted box, score decayed per miss)."""
        rows = np.flatnonzero(track_of_det >= 0)
        rows = rows[(self.hits[track_of_det[rows]] >= self.min_hits) | (self.frame <= self.min_hits)]
        tr = track_of_det[rows]
        out = Tracks.of_detections(dets, rows, self.ids[tr])
        first = self.hits[tr] == 1  # born in this keyframe: its state is its detection, its velocity unknown
        out.velocity = self.x[tr][:, [VX, VY]]
        if self.output == "filtered":
            s = self.x[tr]
            out.centre, out.yaw, out.size = s[:, [X, Y, Z]], s[:, YAW], s[:, [W, L, H]]
            out.source = np.where(first, out.source, -1)
        if self.coast_score > 0 and len(coasting):
            s = self.x[coasting]
            coasted = Tracks(
                s[:, [X, Y, Z]],
                s[:, [W, L, H]],
                s[:, YAW],
                s[:, [VX, VY]],
                [self.names[t] for t in coasting],
                self.score[coasting] * self.coast_score ** self.misses[coasting],
                self.ids[coasting],
                np.full(len(coasting), -1, np.int64),
            )
            out = Tracks.concat(out, coasted)
        return out.take(np.argsort(-out.scores, kind="stable"))


def kalman_from_config(cfg: Mapping) -> KalmanTracker:
    """A :class:`KalmanTracker` from ``conf/tracker/kalman.yaml``'s keys (``classes`` and ``default`` per class)."""
    cfg = dict(cfg)
    cfg.pop("name", None)
    cfg.pop("input_nms", None)
    default = ClassParams.from_mapping(cfg.pop("default", {}) or {})
    classes = {k: ClassParams.from_mapping(v or {}, default) for k, v in (cfg.pop("classes", {}) or {}).items()}
    known = {f.name for f in fields(KalmanTracker)} - {"classes", "default", "name"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"tracker kalman: unknown key(s) {unknown}; known: {sorted(known | {'classes', 'default'})}")
    return KalmanTracker(classes=classes, default=default, **cfg)


__all__ = ["ClassParams", "ConstantVelocityFilter", "KalmanTracker", "kalman_from_config", "turn_to"]
