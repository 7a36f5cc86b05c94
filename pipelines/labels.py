"""The label stage: DINOv2 BEV pseudo-labels and projected LiDAR pixels, one dask task per scene, into zarr.

    python -m pipelines.labels                                   # the small synthetic world, made if missing
    python -m pipelines.labels limit_scenes=1                    # its first scene only (only that one rendered)
    python -m pipelines.labels dataset=nuscenes dataset.root=/data/nuscenes out=/data/nusc.zarr
    python -m pipelines.labels cluster.address=tcp://scheduler:8786   # an existing dask cluster
    python -m pipelines.labels --help                            # every option (Hydra)

Per scene (the unit of a task, because accumulation spans a scene): accumulate the scene's LiDAR
(``bevlabels.lidar.accumulate``), and for each keyframe not yet done: run the frozen encoder on
its cameras in one batch, pool visible features into the BEV grid (``bevlabels.lidar.project``),
project the keyframe sweep into every camera (``lidar_px``), and write the keyframe's region of
the store, its ``done`` flag last. A task reads only its own keyframes' ``done`` flags, and
refuses to write features of another model than the store records (:func:`check_feature_model`:
a worker without the weights would otherwise write random-init features into a ``pretrained``
store). A failing scene is reported, not fatal to the others, a scene whose worker died included;
the run then exits non-zero. Rerunning skips finished keyframes.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bevlabels.conf import plain
from pipelines.scenes import (
    SceneResult,
    Timer,
    cluster_kind,
    get_dataset,
    run_stage,
    scene_task,
    stage_main,
    summary_lines,
    tally,
    task_resources,
)

log = logging.getLogger("bevlabels.labels")


# ---------------------------------------------------------------------------------------------
# The pure per-scene function


@dataclass(frozen=True)
class LabelJob:
    """Everything a task needs, as plain picklable data."""

    store: str
    adapter: dict
    features: dict
    grid: dict
    accumulation: dict
    visibility: dict
    lidar_px_min_depth: float = 1.0
    geometry_device: str = "auto"  # see resolve_geometry_device
    keyframe_batch: int | str = "auto"  # see resolve_keyframe_batch
    own_gpu: bool = False  # each worker sees only its own GPU (dask-cuda): a bare `cuda` is not spread (worker_device)


def resolve_geometry_device(setting: str, features_device):
    """Where a task's LiDAR geometry (accumulation, lidar_px) runs: ``None`` for the numpy reference, else a torch device.

    ``auto``: the feature model's device when it is a GPU, else the numpy reference (the torch path's CPU
    speed is not measured yet); ``numpy``: the reference; anything else (``cpu``, ``cuda``, ``cuda:1``):
    torch on that device. Projection and pooling (:func:`bevlabels.lidar.project.pool_bev`) always run
    in torch on the features' device.
    """
    import torch

    check_geometry_device(setting)
    if setting == "numpy":
        return None
    if setting == "auto":
        return features_device if torch.device(features_device).type == "cuda" else None
    return torch.device(setting)


def check_geometry_device(setting: str) -> None:
    """Raise a ``ValueError`` naming the ``geometry_device`` key unless ``setting`` is ``auto``, ``numpy`` or a
    torch device string (checked on the driver, before any worker starts)."""
    import torch

    if setting in ("auto", "numpy"):
        return
    try:
        torch.device(setting)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"geometry_device={setting!r} (conf/labels.yaml): expected 'auto', 'numpy' or a torch device such as "
            f"'cpu', 'cuda', 'cuda:1' ({e})"
        ) from None


#: keyframes per feature-model batch under ``keyframe_batch=auto`` on a GPU (6 nuScenes images each: 48 at once)
GPU_KEYFRAME_BATCH = 8


def resolve_keyframe_batch(setting: int | str, features_device) -> int:
    """Keyframes whose camera images go through the feature model as one batch (``keyframe_batch``).

    ``auto``: :data:`GPU_KEYFRAME_BATCH` when the feature model runs on a GPU (a batch of a few
    dozen images fills it), else 1 (on a CPU a bigger batch is no faster and holds more images); an
    int >= 1 as given. The features do not depend on it (``test_keyframe_batches_give_the_same_store``).
    """
    import torch

    if setting == "auto":
        return GPU_KEYFRAME_BATCH if torch.device(features_device).type == "cuda" else 1
    try:
        n = int(setting)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(setting).strip():
        raise ValueError(f"keyframe_batch={setting!r} (conf/labels.yaml): expected 'auto' or an integer >= 1")
    return n


def resolve_resources(setting, features: dict) -> dict | None:
    """The dask resources of a label task (``cluster.resources``): ``auto`` is ``{GPU: 1}`` when the feature model
    runs on a GPU (``features.device`` a CUDA device, or ``auto`` on a driver that sees one), else none; a
    mapping or null as given. With a CPU-only driver attached to GPU workers (``cluster.address``), say
    ``cluster.resources={GPU:1}``: the driver cannot see their GPUs."""
    from bevlabels.features import resolve_device

    if setting == "auto":
        on_gpu = resolve_device(features.get("device", "auto")).type == "cuda"
        return {"GPU": 1} if on_gpu else None
    return setting


def worker_device(device: str, own_gpu: bool = False):
    """The feature model's device in this worker: ``device`` (``features.device``) resolved, and a bare ``cuda``
    on a machine with several GPUs spread over the LocalCluster's workers by their number (``cuda:<n % GPUs>``).
    Workers started by hand (``dask worker``) keep ``cuda``: give each its GPU with ``CUDA_VISIBLE_DEVICES``;
    so do dask-cuda's (``own_gpu``: each sees only its own GPU, as its ``cuda``)."""
    import torch

    from bevlabels.features import resolve_device

    d = resolve_device(device)
    if own_gpu or d.type != "cuda" or d.index is not None or torch.cuda.device_count() < 2:
        return str(d)
    try:
        from distributed import get_worker

        n = get_worker().name
    except (ImportError, ValueError):  # not in a dask worker
        return str(d)
    return f"cuda:{n % torch.cuda.device_count()}" if isinstance(n, int) else str(d)


def tasks_feature_device(features: dict, resources: dict | None) -> str:
    """The device type (``cpu`` / ``cuda``) the tasks' feature models run on, as the driver can tell it.

    ``features.device`` when it names one; under ``auto`` ``cuda`` when the tasks ask for a GPU
    (``cluster.resources`` with ``GPU``: a CPU driver attached to GPU workers says so there), else what
    ``auto`` gives on the driver (its workers are on the same machine).
    """
    from bevlabels.features import resolve_device

    device = features.get("device", "auto")
    if device == "auto" and "GPU" in (resources or {}):
        return "cuda"
    return resolve_device(device).type


def store_feature_model(extractor, features: dict, resources: dict | None) -> dict:
    """The ``feature_model`` record a store gets: the driver's ``extractor.describe()`` with the ``dtype`` the
    tasks' extractors compute in (:func:`tasks_feature_device`).

    The driver builds the extractor on its own device: a CPU driver of GPU workers computes (and describes)
    float32 where its workers compute ``features.dtype`` (e.g. bfloat16) under autocast, and each worker's
    :func:`check_feature_model` would then refuse the store. Every other field is the same on any device.
    """
    from bevlabels.features import compute_dtype_on

    record = dict(extractor.describe())
    if "dtype" in record:
        dtype = compute_dtype_on(tasks_feature_device(features, resources), features.get("dtype"))
        record["dtype"] = str(dtype).removeprefix("torch.")
    return record


class FeatureModelMismatchError(RuntimeError):
    """A worker built another feature model than the store records (e.g. random-init for pretrained)."""


def check_feature_model(recorded: dict, extractor, store: str) -> None:
    """Raise :class:`FeatureModelMismatchError` unless ``extractor`` is the feature model the store records.

    ``recorded``: the store's ``attrs["feature_model"]`` (the driver's extractor's ``describe()``);
    the worker's own ``describe()`` must equal it field for field. The classic cause: a worker
    without the weights, where ``weights=auto`` falls back to a random network.
    """
    from bevlabels.cache.writer import feature_model_record

    built = feature_model_record(extractor.describe(), extractor.out_channels)
    if built == recorded:
        return
    keys = sorted(k for k in set(built) | set(recorded) if built.get(k) != recorded.get(k))
    diff = "; ".join(f"{k}: store {recorded.get(k)!r}, worker {built.get(k)!r}" for k in keys)
    raise FeatureModelMismatchError(
        f"the worker on {socket.gethostname()} built the feature model {built.get('name')!r} with weights "
        f"{built.get('weights')!r}, but the store {store} records weights {recorded.get('weights')!r} ({diff}). "
        "Writing its features would mislabel them. Give every worker the driver's weights: "
        "features.local_path=<a save_pretrained directory every worker can read> or the same Hugging Face "
        "cache (HF_HUB_CACHE / HF_HOME); features.weights=pretrained makes a missing one an error; the same "
        "features.device/dtype on driver and workers"
    )


def label_scene(job: LabelJob, scene: str, indices: list[int], tokens: list[str]) -> SceneResult:
    """Label the keyframes ``indices`` (store rows) of one scene; never raises, reports instead.

    ``tokens[i]`` is the sample token expected at store row ``indices[i]``; keyframes already
    ``done`` in the store are skipped (the scene is still accumulated once if any remain).
    """

    from bevlabels.cache import LabelStoreWriter
    from bevlabels.features import get_extractor
    from bevlabels.grid import GridSpec
    from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene
    from bevlabels.lidar.project import CameraSet, VisibilityConfig, lidar_pixels, pool_bev

    res = SceneResult(scene)
    with scene_task(res, len(indices), log):
        store = LabelStoreWriter.open_for_task(job.store)
        done = store.done_rows(indices)  # (n,) this scene's flags only
        todo = {tok: s for s, tok, d in zip(indices, tokens, done) if not d}
        res.skipped = len(indices) - len(todo)
        if not todo:
            return res
        features = dict(job.features)
        if "device" in features:  # a bare `cuda` on a many-GPU machine: this worker's own GPU
            features["device"] = worker_device(features["device"], own_gpu=job.own_gpu)
        extractor = get_extractor(**features)
        check_feature_model(store.attrs["feature_model"], extractor, job.store)
        if extractor.device.type == "cuda" and extractor.device.index is not None:
            import torch

            torch.cuda.set_device(extractor.device)  # this thread's current GPU: the one the Timers wait for
        with Timer(res.seconds, "read"):
            ds = get_dataset(job.adapter)
            frames = ds.keyframes(scene)
        missing = set(todo) - {f.token for f in frames}
        if missing:
            raise KeyError(f"store rows name keyframes the dataset's scene {scene} lacks: {sorted(missing)[:3]}")
        grid = GridSpec.from_dict(job.grid)
        vis = VisibilityConfig(**job.visibility)
        geo = resolve_geometry_device(job.geometry_device, extractor.device)
        kb = resolve_keyframe_batch(job.keyframe_batch, extractor.device)
        clouds = accumulate_scene(ds, scene, AccumulationConfig(**job.accumulation), frames=frames, device=geo)
        # One feature-model batch per chunk of kb keyframes, the chunks fixed by the scene's keyframe order (not by
        # what is left to do): a chunk with any keyframe to do is encoded whole, so every keyframe is always encoded
        # beside the same others and a resumed run writes the bytes of an uninterrupted one whatever kb is.
        chunks = [frames[i : i + kb] for i in range(0, len(frames), kb)]
        chunks = [c for c in chunks if any(f.token in todo for f in c)]

        def fetch(chunk):  # in the prefetch thread: the next chunk decodes while this one runs
            out = []
            for frame in chunk:  # CPU work beside the model's kernels: its Timers must not wait for them
                with Timer(res.seconds, "decode", sync=False):
                    inputs = extractor.load_inputs(frame)  # N x (3, H_n, W_n) images (the oracle: label maps)
                points = None
                if frame.token in todo:  # a done keyframe of the chunk is encoded only, not labelled again
                    with Timer(res.seconds, "read", sync=False):
                        points = ds.load_points(frame.lidar)
                out.append((inputs, points))
            return out

        def write(row: int, arrays: dict) -> None:  # in the writer thread: writes do not stall the model
            with Timer(res.seconds, "write", sync=False):
                store.write_keyframe(row, **arrays)  # arrays first, then the row's done flag
            res.done += 1

        # One thread each, so fetches and writes keep keyframe order; a task fails on the first error of any.
        with (
            ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch,
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
        ):
            ahead = prefetch.submit(fetch, chunks[0])
            pending = []
            for c, chunk in enumerate(chunks):
                loaded = ahead.result()
                if c + 1 < len(chunks):
                    ahead = prefetch.submit(fetch, chunks[c + 1])
                images = [im for inputs, _ in loaded for im in inputs]
                with Timer(res.seconds, "features"):
                    feats = extractor.encode_cameras(images)  # one batch per image size over the chunk's cameras
                start = 0
                for frame, (inputs, points) in zip(chunk, loaded):
                    kf_feats, start = feats[start : start + len(inputs)], start + len(inputs)  # N x (C, h_n, w_n)
                    if frame.token not in todo:
                        continue
                    while True:  # the clouds of keyframes already done are skipped
                        with Timer(res.seconds, "accumulate"):
                            cloud = next(clouds)
                        if cloud.frame.token in todo:
                            break
                    assert cloud.frame.token == frame.token, "clouds and keyframes out of step"
                    with Timer(res.seconds, "project_pool"):
                        occluders = (
                            frame.boxes.boxes if vis.box_occluders else None
                        )  # the keyframe's GT boxes, ego frame
                        pooled = pool_bev(
                            cloud.points, kf_feats, CameraSet.from_frame(frame), grid, vis, boxes=occluders
                        )
                        feat = pooled.feat.cpu().numpy().astype(np.float16)
                        count = pooled.count.clamp(max=np.iinfo(np.uint16).max).cpu().numpy().astype(np.uint16)
                    with Timer(res.seconds, "lidar_px"):
                        px = lidar_pixels(frame, points, min_depth=job.lidar_px_min_depth, device=geo)
                    pending.append(writer.submit(write, todo[frame.token], {"dino_feat": feat, "dino_count": count,
                                                                             "lidar_px": px}))  # fmt: skip
                    while len(pending) > 2:  # bounded: at most two keyframes' arrays wait for the store
                        pending.pop(0).result()
            for w in pending:
                w.result()
    return res


# ---------------------------------------------------------------------------------------------
# The driver


def ensure_dataset(ds_cfg: dict, scenes: list[str] | None = None, limit_scenes: int | None = None) -> None:
    """Generate the synthetic world a dataset config names (its ``generate`` section) when it is missing,
    scenes in parallel over ``generate.workers`` dask processes (:func:`bevlabels.synthetic.formats.ensure_world`).

    ``scenes`` / ``limit_scenes`` (the run's, as :func:`plan` reads them): a run that labels some scenes renders only
    those (a partial world, which a later run that needs more completes); without them, the whole world. A world
    in the AV2 format is always rendered whole.
    """
    from bevlabels.synthetic.formats import ensure_world
    from pipelines.synth import dask_map

    workers = int((ds_cfg.get("generate") or {}).get("workers", 2))
    ensure_world(
        ds_cfg,
        map_fn=dask_map(workers) if workers > 1 else None,
        log=log.warning,
        scenes=scenes_to_render(ds_cfg, scenes, limit_scenes),
    )


def scenes_to_render(ds_cfg: dict, scenes: list[str] | None, limit_scenes: int | None):
    """For :func:`~bevlabels.synthetic.formats.ensure_world`: the scenes of a synthetic world a run with these
    ``scenes`` / ``limit_scenes`` labels, as a function of the world's config (they are known before any scene is
    rendered: :func:`bevlabels.synthetic.generate.scene_order`); None (the whole world) when the run labels all."""
    if not scenes and not limit_scenes:
        return None
    from bevlabels.synthetic.generate import scene_order

    split = ds_cfg.get("split")
    return lambda synth_cfg: select_scenes(scene_order(synth_cfg, split), split, scenes, limit_scenes)


def select_scenes(names: list[str], split: str | None, scenes: list[str] | None, limit_scenes: int | None) -> list[str]:
    """The scenes a run labels, of ``names`` (a split's, in order): those in ``scenes`` if given, then the first
    ``limit_scenes``."""
    if scenes:
        unknown = sorted(set(scenes) - set(names))
        if unknown:
            raise KeyError(f"scenes {unknown} are not in the dataset{f' split {split}' if split else ''}")
        names = [s for s in names if s in set(scenes)]
    return names[:limit_scenes] if limit_scenes else names


def plan(ds, split: str | None, scenes: list[str] | None, limit_scenes: int | None):
    """Store rows in scene order: ``(sample_tokens, scene_names, {scene: (rows, tokens)})``."""
    names = select_scenes(ds.scenes(split), split, scenes, limit_scenes)
    tokens, scene_of, per_scene = [], [], {}
    for s in names:
        toks = [f.token for f in ds.keyframes(s)]
        per_scene[s] = (list(range(len(tokens), len(tokens) + len(toks))), toks)
        tokens += toks
        scene_of += [s] * len(toks)
    return tokens, scene_of, per_scene


def prepare(cfg: dict):
    """The store and the tasks of a run: ``(writer, job, per_scene)``, for a resolved plain-dict config.

    ``writer``: the store's :class:`~bevlabels.cache.LabelStoreWriter`, its template written or
    checked, locked (use it as a context manager to release the lock); ``job``: the tasks'
    :class:`LabelJob`; ``per_scene``: ``{scene: (store rows, tokens)}`` in store order. The store records
    the feature model the tasks will build (:func:`store_feature_model`), not the driver's own.
    """
    from bevlabels.cache import LabelStoreWriter
    from bevlabels.features import get_extractor
    from bevlabels.grid import GridSpec

    check_geometry_device(str(cfg.get("geometry_device", "auto")))  # before any work, naming the key
    resolve_keyframe_batch(cfg.get("keyframe_batch", "auto"), "cpu")
    ds_cfg = cfg["dataset"]
    ensure_dataset(ds_cfg, cfg.get("scenes"), cfg.get("limit_scenes"))  # only the scenes it labels
    ds = get_dataset(ds_cfg["adapter"])
    grid = GridSpec.from_dict(cfg["grid"])
    tokens, scene_of, per_scene = plan(ds, ds_cfg.get("split"), cfg.get("scenes"), cfg.get("limit_scenes"))
    if not tokens:
        raise SystemExit(f"no keyframes to label in {ds} (split={ds_cfg.get('split')}, scenes={cfg.get('scenes')})")
    extractor = get_extractor(**cfg["features"])
    out = Path(cfg["out"])
    writer = LabelStoreWriter.create_or_open(
        out,
        sample_tokens=tokens,
        scenes=scene_of,
        grid=grid,
        dataset={"name": ds_cfg["name"], "version": ds_cfg.get("version"), "root": str(ds_cfg["root"])},
        feature_model=store_feature_model(
            extractor, cfg["features"], resolve_resources(cfg["cluster"].get("resources", "auto"), cfg["features"])
        ),
        channels=extractor.out_channels,
        config=cfg,
        # Settings that change the labels: a rerun with other values must not mix two kinds of keyframes.
        params={k: cfg[k] for k in ("accumulation", "visibility", "lidar_px")},
        overwrite=bool(cfg.get("overwrite", False)),
    )
    job = LabelJob(
        store=str(out),
        adapter=ds_cfg["adapter"],
        features=cfg["features"],
        grid=grid.to_dict(),
        accumulation=cfg["accumulation"],
        visibility=cfg["visibility"],
        lidar_px_min_depth=float(cfg["lidar_px"]["min_depth"]),
        geometry_device=str(cfg.get("geometry_device", "auto")),
        keyframe_batch=cfg.get("keyframe_batch", "auto"),
    )
    return writer, job, per_scene


def run(cfg) -> dict:
    """Run the label stage for a resolved config; return the summary (also printed)."""
    cfg = plain(cfg)
    t_start = time.perf_counter()
    cluster = {**cfg["cluster"], "resources": resolve_resources(cfg["cluster"].get("resources"), cfg["features"])}
    task_resources(cluster)  # a bad cluster.resources fails here, naming the key, before the store is touched
    if not cluster.get("address"):  # a local cluster: dask-cuda's LocalCUDACluster or dask's LocalCluster
        cluster["kind"] = cluster_kind(cluster)
    writer, job, per_scene = prepare(cfg)
    job = dataclasses.replace(job, own_gpu=cluster.get("kind") == "cuda")
    out = Path(cfg["out"])
    with writer:  # create_or_open took the store's lock; it is released on exit, errors included
        results, skipped_scenes = run_stage(writer, "labels", cluster, label_scene, job, per_scene, "labels")
        summary = summarize(writer, results, time.perf_counter() - t_start, out, skipped_scenes)
    print_summary(summary)
    return summary


def summarize(writer, results: list[SceneResult], wall: float, out: Path, skipped_scenes: int = 0) -> dict:
    """Counts, coverage, throughput and the per-part time breakdown of a run."""
    store_summary = writer.summary()
    return {
        "store": str(out),
        "keyframes_total": store_summary["total"],
        "keyframes_done_total": store_summary["done"],
        "coverage": store_summary.get("coverage"),
        "visibility": (writer.attrs.get("params") or {}).get("visibility"),
        **tally(results, wall, skipped_scenes),
    }


def describe_visibility(vis: dict | None) -> str:
    """One line for the summary: which visibility test the store's labels were pooled under."""
    if not vis:
        return "(not recorded)"
    point = f"{vis.get('method', 'zbuffer')}" + (
        f" {vis.get('zbuffer_px')} px" if vis.get("method", "zbuffer") == "zbuffer" else ""
    )
    if not vis.get("box_occluders"):
        return f"{point}, no box occluders"
    extra = f", ground under boxes unlabelled to {vis['box_floor']} m" if vis.get("box_floor") else ""
    return f"{point} + GT boxes as occluders{extra}"


def print_summary(s: dict) -> None:
    lines = ["", "label stage summary", f"  store        {s['store']}"]
    lines += summary_lines(s)
    lines.insert(
        4,
        f"  coverage     {100 * (s['coverage'] or 0):.1f}% of BEV cells have pooled points (mean over done keyframes)",
    )
    lines.insert(5, f"  visibility   {describe_visibility(s.get('visibility'))}")
    print("\n".join(lines), flush=True)


def main() -> None:
    stage_main("labels", run)


if __name__ == "__main__":
    main()
