"""The ten nuScenes detection classes as the synthetic world draws them: size, look, attributes.

Sizes are nuScenes' per-class mean ``L, W, H`` (metres; the mean sizes detectors use as anchors),
varied per instance. Note the barrier: its long side is across its heading (W ~2.5 m, L ~0.5 m), as
nuScenes annotates barriers.

Also the nuScenes vocabularies the tables need: the 23 annotation categories (with their
nuScenes-lidarseg ``index``), the 8 attributes and the 4 visibility bins.
"""

from __future__ import annotations

import numpy as np

from bevlabels.synthetic import meshes as mm

#: class -> nuScenes category written to the tables
CATEGORY = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "construction_vehicle": "vehicle.construction",
    "pedestrian": "human.pedestrian.adult",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
}
CLASSES = tuple(CATEGORY)

#: mean (L, W, H) per class, metres
MEAN_SIZE = {
    "car": (4.62, 1.95, 1.73),
    "truck": (6.93, 2.51, 2.84),
    "bus": (10.5, 2.94, 3.47),
    "trailer": (12.29, 2.90, 3.87),
    "construction_vehicle": (6.37, 2.85, 3.19),
    "pedestrian": (0.73, 0.67, 1.77),
    "motorcycle": (2.11, 0.77, 1.47),
    "bicycle": (1.70, 0.60, 1.28),
    "traffic_cone": (0.41, 0.41, 1.07),
    "barrier": (0.48, 2.49, 0.98),
}

#: nuScenes annotation categories and their nuScenes-lidarseg indices
CATEGORIES = (
    ("animal", 1), ("human.pedestrian.adult", 2), ("human.pedestrian.child", 3),
    ("human.pedestrian.construction_worker", 4), ("human.pedestrian.personal_mobility", 5),
    ("human.pedestrian.police_officer", 6), ("human.pedestrian.stroller", 7), ("human.pedestrian.wheelchair", 8),
    ("movable_object.barrier", 9), ("movable_object.debris", 10), ("movable_object.pushable_pullable", 11),
    ("movable_object.trafficcone", 12), ("static_object.bicycle_rack", 13), ("vehicle.bicycle", 14),
    ("vehicle.bus.bendy", 15), ("vehicle.bus.rigid", 16), ("vehicle.car", 17), ("vehicle.construction", 18),
    ("vehicle.emergency.ambulance", 19), ("vehicle.emergency.police", 20), ("vehicle.motorcycle", 21),
    ("vehicle.trailer", 22), ("vehicle.truck", 23),
)  # fmt: skip

ATTRIBUTES = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)  # fmt: skip

#: visibility token -> level, as in nuScenes (token = bin index + 1)
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))

VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")


def attribute(cls: str, speed: float, parked: bool, rider: bool) -> str | None:
    """The nuScenes attribute of an object of class ``cls`` moving at ``speed`` m/s (None for cones/barriers)."""
    if cls in VEHICLES:
        if speed > 0.3:
            return "vehicle.moving"
        return "vehicle.parked" if parked else "vehicle.stopped"
    if cls in ("motorcycle", "bicycle"):
        return "cycle.with_rider" if rider else "cycle.without_rider"
    if cls == "pedestrian":
        return "pedestrian.moving" if speed > 0.2 else "pedestrian.standing"
    return None


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token ("1".."4") of a visible fraction in [0, 1]."""
    return "1" if fraction <= 0.4 else "2" if fraction <= 0.6 else "3" if fraction <= 0.8 else "4"


# ---------------------------------------------------------------------------------------------
# Looks

CAR_PAINTS = np.array([
    [0.92, 0.92, 0.93], [0.06, 0.06, 0.07], [0.62, 0.64, 0.66], [0.35, 0.36, 0.38], [0.70, 0.08, 0.06],
    [0.08, 0.20, 0.55], [0.55, 0.58, 0.62], [0.85, 0.82, 0.72], [0.12, 0.32, 0.18], [0.40, 0.10, 0.12],
])  # fmt: skip
BUS_PAINTS = np.array([[0.80, 0.12, 0.10], [0.10, 0.45, 0.20], [0.95, 0.75, 0.10], [0.15, 0.35, 0.70]])
TRUCK_CABS = np.array(
    [[0.92, 0.92, 0.93], [0.78, 0.10, 0.08], [0.10, 0.12, 0.30], [0.35, 0.36, 0.38], [0.90, 0.45, 0.08]]
)
TRAILER_PAINTS = np.array([[0.15, 0.30, 0.60], [0.65, 0.12, 0.10], [0.80, 0.80, 0.82], [0.30, 0.45, 0.30]])
CLOTHES = np.array([
    [0.10, 0.10, 0.12], [0.80, 0.15, 0.12], [0.15, 0.25, 0.60], [0.85, 0.85, 0.80], [0.30, 0.55, 0.25],
    [0.55, 0.45, 0.30], [0.95, 0.70, 0.15], [0.45, 0.20, 0.50],
])  # fmt: skip
SKIN = np.array([[0.95, 0.78, 0.65], [0.80, 0.60, 0.45], [0.55, 0.38, 0.25], [0.35, 0.24, 0.16]])


def _pick(rng: np.random.Generator, palette: np.ndarray) -> tuple:
    return tuple(palette[rng.integers(len(palette))])


def sample_size(cls: str, rng: np.random.Generator, rider: bool = True) -> tuple[float, float, float]:
    """An instance's ``(L, W, H)``: the class mean varied by a few percent (cycles without rider are lower)."""
    L, W, H = MEAN_SIZE[cls]
    f = rng.uniform(0.9, 1.1, 3)
    if cls == "trailer":
        f[0] = rng.uniform(0.75, 1.05)
    if cls in ("motorcycle", "bicycle") and not rider:
        H *= 0.75
    if cls == "pedestrian":
        f[2] = rng.uniform(0.92, 1.06)
    return float(L * f[0]), float(W * f[1]), float(H * f[2])


def build_mesh(cls: str, size: tuple[float, float, float], rng: np.random.Generator, *, rider: bool = True,
               walking: bool = True, tractor: bool = False) -> mm.Mesh:  # fmt: skip
    """The class's mesh for one instance, fitted inside its box (see :func:`meshes.fit_to_box`)."""
    L, W, H = size
    if cls == "car":
        m = mm.car_mesh(L, W, H, _pick(rng, CAR_PAINTS), rng)
    elif cls == "truck":
        cab = _pick(rng, TRUCK_CABS)
        cargo = _pick(rng, np.array([[0.9, 0.9, 0.9], [0.75, 0.75, 0.78], [0.5, 0.5, 0.52]]))
        m = mm.truck_mesh(L, W, H, cab, cargo, rng, tractor=tractor)
    elif cls == "bus":
        m = mm.bus_mesh(L, W, H, _pick(rng, BUS_PAINTS), rng)
    elif cls == "trailer":
        m = mm.trailer_mesh(L, W, H, _pick(rng, TRAILER_PAINTS), rng)
    elif cls == "construction_vehicle":
        m = mm.construction_mesh(L, W, H, _pick(rng, np.array([[0.95, 0.70, 0.05], [0.95, 0.50, 0.05]])), rng)
    elif cls == "pedestrian":
        m = mm.pedestrian_mesh(L, W, H, _pick(rng, CLOTHES), _pick(rng, CLOTHES[:6]), _pick(rng, SKIN), rng, walking)
    elif cls == "motorcycle":
        m = mm.motorcycle_mesh(L, W, H, _pick(rng, CAR_PAINTS), _pick(rng, CLOTHES), _pick(rng, CLOTHES), rng, rider)
    elif cls == "bicycle":
        m = mm.bicycle_mesh(L, W, H, _pick(rng, CLOTHES), _pick(rng, CLOTHES), _pick(rng, SKIN), rng, rider)
    elif cls == "traffic_cone":
        m = mm.cone_mesh(L, W, H, rng)
    elif cls == "barrier":
        m = mm.barrier_mesh(L, W, H, rng, "jersey" if rng.random() < 0.5 else "plastic")
    else:
        raise ValueError(f"unknown class {cls!r}; known: {CLASSES}")
    return mm.fit_to_box(m, L, W, H)
