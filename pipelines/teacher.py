"""The teacher stage: a trained LiDAR teacher's BEV maps, one dask task per scene, into the label store (``teacher/bev``).

    python -m pipelines.teacher ckpt=outputs/teacher_centerpoint/<run>/checkpoints/last.ckpt store=data/labels/synthetic.zarr
    python -m pipelines.teacher ckpt=... store=... resample=true     # a teacher trained on another grid
    python -m pipelines.teacher --help

The teacher is rebuilt from its checkpoint alone (:func:`trainer.lit_base.load_checkpoint`: the
model, its grid, and the LiDAR settings of its data config: ``n_sweeps``, ``min_range``). Keyframes
are read with the dataset adapter the store was made with (its attrs' config; ``dataset_root=``
points it at a moved copy). For each keyframe not yet done: the multi-sweep cloud
(:func:`trainer.data.lidar.load_sweeps`), the teacher's forward pass, the neck map
``bev (C_t, H, W)``, and the keyframe's ``teacher/bev`` slice (float16), ``teacher/done`` last.

Grids. The teacher's map lies on its output grid (:attr:`CenterPoint.out_grid`). When that grid is
the store's, the map is written as is. Otherwise the run stops, naming both grids, unless
``resample=true``: the map is then sampled at the store's cell centres in metric coordinates with
``F.grid_sample`` (``resample_mode`` bilinear or nearest, zeros outside the teacher's extent,
:func:`resample_bev`), and that choice is recorded in the stage's identity.

Bookkeeping as the label stage's (both run on :mod:`pipelines.scenes`): the driver holds the store's lock,
adds the ``teacher`` stage (its identity: checkpoint path, SHA-256 of its state dict, the teacher's
grid, the resampling, the LiDAR settings; a rerun with another identity is refused unless
``overwrite=true``), and submits one task per scene with keyframes to do; tasks write only their
own keyframes; a failing scene is recorded in the store (``attrs.failures.teacher``) and the run
exits non-zero; a rerun skips finished keyframes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.conf import plain
from pipelines.scenes import (
    SceneResult,
    Timer,
    get_dataset,
    run_stage,
    scene_task,
    stage_main,
    summary_lines,
    tally,
)

log = logging.getLogger("bevlabels.teacher")

FLOAT16_MAX = float(np.finfo(np.float16).max)


class GridMismatchError(ValueError):
    """The teacher's grid is not the store's and resampling was not asked for; the message names both."""


# ---------------------------------------------------------------------------------------------
# Grids


def grid_label(grid) -> str:
    """``near (x [-32.0, 32.0], y [-32.0, 32.0], 1.0 m cells, 64x64)``: the conf/grid name whose geometry matches, and the numbers."""
    from bevlabels.conf import grid_names, load_grid

    name = grid.name if grid.name not in ("custom", "") else None
    if name is None:
        for known in grid_names():
            try:
                if load_grid(known).same_geometry(grid):
                    name = known
                    break
            except (ValueError, KeyError):  # a malformed grid file names nothing here
                continue
    (x0, x1, dx), (y0, y1, dy) = grid.xbound, grid.ybound
    cells = f"{dx:g} m cells" if dx == dy else f"{dx:g} x {dy:g} m cells"
    return f"{name or 'custom'} (x [{x0:g}, {x1:g}], y [{y0:g}, {y1:g}], {cells}, {grid.ny}x{grid.nx})"


# ---------------------------------------------------------------------------------------------
# The pure per-scene function

_MODELS: dict[tuple[str, str], Any] = {}


def get_teacher(ckpt: str, sha256: str):
    """The teacher model of ``ckpt``, loaded once per process; refuses a checkpoint changed since the driver read it."""
    if (ckpt, sha256) not in _MODELS:
        import socket

        from trainer.lit_base import load_checkpoint

        if not Path(ckpt).is_file():
            raise FileNotFoundError(
                f"the teacher checkpoint {ckpt} is not on the worker {socket.gethostname()}: put it where every "
                "worker reads it at the same path (a shared filesystem), or run the stage on a LocalCluster"
            )
        loaded = load_checkpoint(ckpt)
        if loaded.state_dict_sha256 != sha256:
            raise RuntimeError(
                f"{ckpt} changed while the stage ran (state dict sha256 {loaded.state_dict_sha256[:12]}, "
                f"the run started with {sha256[:12]}); rerun the stage"
            )
        _MODELS[(ckpt, sha256)] = loaded.model
    return _MODELS[(ckpt, sha256)]


@dataclass(frozen=True)
class TeacherJob:
    """Everything a task needs, as plain picklable data."""

    store: str
    ckpt: str
    sha256: str
    adapter: dict
    store_grid: dict
    n_sweeps: int
    min_range: float
    resample_mode: str | None  # None: the teacher's grid is the store's
    device: str = "cpu"
    threads: int | None = None


def teacher_scene(job: TeacherJob, scene: str, indices: list[int], tokens: list[str]) -> SceneResult:
    """Write ``teacher/bev`` of the keyframes ``indices`` (store rows) of one scene; never raises, reports instead."""
    import torch

    from bevlabels.cache import LabelStoreWriter
    from bevlabels.grid import GridSpec, resample_bev
    from trainer.data.lidar import crop_to_grid, load_sweeps

    res = SceneResult(scene)
    with scene_task(res, len(indices), log):
        if job.threads:
            torch.set_num_threads(int(job.threads))
        store = LabelStoreWriter.open_for_task(job.store, stage="teacher")
        done = store.done_rows(indices)  # (n,) this scene's flags only
        todo = {tok: s for s, tok, d in zip(indices, tokens, done) if not d}
        res.skipped = len(indices) - len(todo)
        if not todo:
            return res
        with Timer(res.seconds, "read"):
            ds = get_dataset(job.adapter)
            frames = {f.token: f for f in ds.keyframes(scene)}
        missing = sorted(set(todo) - set(frames))
        if missing:
            raise KeyError(f"store rows name keyframes the dataset's scene {scene} lacks: {missing[:3]}")
        with Timer(res.seconds, "model"):
            model = get_teacher(job.ckpt, job.sha256).to(job.device)
        teacher_grid, store_grid = model.out_grid, GridSpec.from_dict(job.store_grid)
        for tok, s in todo.items():
            frame = frames[tok]
            with Timer(res.seconds, "points"):
                pts = torch.from_numpy(crop_to_grid(load_sweeps(ds, frame, job.n_sweeps, job.min_range), teacher_grid))
                points = torch.cat([pts.new_zeros(len(pts), 1), pts], 1).to(job.device)  # (P, 1+5), batch index 0
            with Timer(res.seconds, "forward"), torch.no_grad():
                bev = model({"points": points, "sample_token": [tok]})["bev"].float()  # (1, C_t, H, W)
                if job.resample_mode:
                    bev = resample_bev(bev, teacher_grid, store_grid, mode=job.resample_mode)
                bev = bev[0].cpu().numpy()
            peak = float(np.abs(bev).max()) if bev.size else 0.0
            if not np.isfinite(peak) or peak > FLOAT16_MAX:
                raise ValueError(
                    f"teacher/bev of keyframe {s} ({tok}): max |value| {peak:g} is not finite or beyond float16's "
                    f"{FLOAT16_MAX:g}; the checkpoint's weights are broken"
                )
            with Timer(res.seconds, "write"):
                store.write_keyframe_arrays(s, {"teacher/bev": bev.astype(np.float16)})
            res.done += 1
    return res


# ---------------------------------------------------------------------------------------------
# The driver


def store_adapter(attrs: dict, ckpt_config: dict, dataset_root: str | None) -> dict:
    """The adapter config to read the store's keyframes: the store's own (its attrs' config), else the teacher's."""
    adapter = (attrs.get("config") or {}).get("dataset", {}).get("adapter")
    if adapter is None:
        adapter = ckpt_config["data"]["dataset"]["adapter"]
        log.warning("the store records no dataset adapter; reading keyframes with the teacher's: %s", adapter)
    adapter = dict(adapter)
    if dataset_root:
        adapter["root"] = str(dataset_root)
    return adapter


def plan_store(ds, sample_tokens: list[str], scenes: list[str]) -> dict[str, tuple[list[int], list[str]]]:
    """``{scene: (store rows, tokens)}`` after checking the store's keyframes are exactly the dataset's, scene by scene.

    Raises ``ValueError`` naming the scene and keyframes when the dataset lacks a scene of the store,
    or a scene's keyframes differ (the store lacks some the dataset has, or has others).
    """
    per_scene: dict[str, tuple[list[int], list[str]]] = {}
    for s, (tok, scene) in enumerate(zip(sample_tokens, scenes)):
        rows, toks = per_scene.setdefault(scene, ([], []))
        rows.append(s)
        toks.append(tok)
    known = set(ds.scenes())
    absent = [sc for sc in per_scene if sc not in known]
    if absent:
        raise ValueError(
            f"the store's scenes {absent[:5]} are not in the dataset {ds} (it has {len(known)} scenes): "
            "the store was made from another dataset; pass dataset_root= or use the matching store"
        )
    for scene, (_, toks) in per_scene.items():
        have = [f.token for f in ds.keyframes(scene)]
        if have != toks:
            lacks = [t for t in have if t not in set(toks)]
            extra = [t for t in toks if t not in set(have)]
            what = []
            if lacks:
                what.append(f"the store lacks {len(lacks)} of its {len(have)} keyframes in the dataset ({lacks[:3]})")
            if extra:
                what.append(f"the store has {len(extra)} keyframes the dataset does not ({extra[:3]})")
            if not what:
                what.append("the same keyframes in another order")
            raise ValueError(f"scene {scene}: " + "; ".join(what) + ": remake the store from this dataset")
    return per_scene


def run(cfg) -> dict:
    """Run the teacher stage for a resolved config; return the summary (also printed)."""
    from bevlabels.cache import TEACHER, LabelStoreReader, LabelStoreWriter, StoreMismatchError
    from bevlabels.features import resolve_device
    from trainer.lit_base import load_checkpoint

    cfg = plain(cfg)
    t_start = time.perf_counter()
    store_path = Path(cfg["store"])
    if not (store_path / "zarr.json").is_file():
        raise FileNotFoundError(
            f"no label store at {store_path}; make it first: python -m pipelines.labels out={store_path}"
        )
    loaded = load_checkpoint(cfg["ckpt"])
    model = loaded.model
    teacher_grid = model.out_grid
    data_cfg = loaded.config["data"]

    reader = LabelStoreReader(store_path)
    attrs = reader.attrs
    store_grid = reader.grid
    resample_mode = None
    if not store_grid.same_geometry(teacher_grid):
        if not cfg.get("resample"):
            raise GridMismatchError(
                f"the store {store_path} has the grid {grid_label(store_grid)}; the teacher {loaded.path} was trained "
                f"on the grid {grid_label(teacher_grid)}. Pass resample=true to resample its maps onto the store's "
                "grid (recorded in the store), or use a teacher trained on the store's grid"
            )
        resample_mode = str(cfg.get("resample_mode", "bilinear"))
        if resample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"resample_mode must be bilinear or nearest; got {resample_mode!r}")
        log.warning(
            "resampling the teacher's maps from %s to the store's grid %s (%s)",
            grid_label(teacher_grid),
            grid_label(store_grid),
            resample_mode,
        )

    adapter = store_adapter(attrs, loaded.config, cfg.get("dataset_root"))
    ds = get_dataset(adapter)
    tokens = [str(t) for t in reader.sample_tokens]
    scenes = [str(s) for s in reader.scenes]
    per_scene = plan_store(ds, tokens, scenes)

    channels = int(model.detector.backbone.out_channels)
    dims = {"C_t": channels, "H_t": store_grid.ny, "W_t": store_grid.nx}
    identity = {
        "checkpoint": str(Path(cfg["ckpt"]).resolve()),
        "state_dict_sha256": loaded.state_dict_sha256,
        "model": loaded.config["model"]["_target_"],
        "global_step": loaded.global_step,
        "teacher_grid": teacher_grid.to_dict(),
        "resample": None
        if resample_mode is None
        else {
            "method": "torch.nn.functional.grid_sample at the store's metric cell centres",
            "mode": resample_mode,
            "padding_mode": "zeros",
            "align_corners": False,
            "from_grid": teacher_grid.to_dict(),
            "to_grid": store_grid.to_dict(),
        },
        "n_sweeps": int(data_cfg.get("n_sweeps", 10)),
        "min_range": float(data_cfg.get("min_range", 1.0)),
    }
    job = TeacherJob(
        store=str(store_path),
        ckpt=str(loaded.path),
        sha256=loaded.state_dict_sha256,
        adapter=adapter,
        store_grid=store_grid.to_dict(),
        n_sweeps=identity["n_sweeps"],
        min_range=identity["min_range"],
        resample_mode=resample_mode,
        device=str(resolve_device(cfg.get("device", "auto"))),  # auto: cuda when the driver sees a GPU
        threads=cfg["cluster"].get("threads_per_worker"),
    )
    with LabelStoreWriter.open(store_path) as writer:  # the store's lock, released on exit, errors included
        try:
            writer.add_stage(TEACHER, dims=dims, identity=identity, overwrite=bool(cfg.get("overwrite", False)))
        except StoreMismatchError as e:
            stored = writer.stages[TEACHER.name]
            raise StoreMismatchError(
                e.field,
                e.store_value,
                e.requested_value,
                f"{store_path} already holds teacher maps from {stored['identity'].get('checkpoint')} "
                f"(sha256 {str(stored['identity'].get('state_dict_sha256'))[:12]}, dims {stored['dims']}); this run's "
                f"teacher is {identity['checkpoint']} (sha256 {identity['state_dict_sha256'][:12]}, dims {dims}). "
                "Pass overwrite=true to replace them",
            ) from e
        results, skipped = run_stage(writer, TEACHER.name, cfg["cluster"], teacher_scene, job, per_scene, "teacher")
        store_summary = writer.summary(TEACHER.name, coverage=False)
    summary = summarize(store_summary, results, time.perf_counter() - t_start, store_path, skipped, identity, dims)
    print_summary(summary)
    return summary


def summarize(store_summary: dict, results, wall: float, out: Path, skipped_scenes: int, identity, dims) -> dict:
    """Counts, throughput and the per-part time breakdown of a run."""
    return {
        "store": str(out),
        "checkpoint": identity["checkpoint"],
        "resample": identity["resample"],
        "dims": dims,
        "keyframes_total": store_summary["total"],
        "keyframes_done_total": store_summary["done"],
        **tally(results, wall, skipped_scenes),
    }


def print_summary(s: dict) -> None:
    lines = [
        "",
        "teacher stage summary",
        f"  store        {s['store']}  (teacher/bev: C_t={s['dims']['C_t']}, {s['dims']['H_t']}x{s['dims']['W_t']})",
        f"  checkpoint   {s['checkpoint']}" + (f"  (resampled: {s['resample']['mode']})" if s["resample"] else ""),
    ]
    print("\n".join(lines + summary_lines(s)), flush=True)


def main() -> None:
    stage_main("teacher", run)


if __name__ == "__main__":
    main()
