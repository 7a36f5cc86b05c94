"""What the per-scene stages (:mod:`pipelines.labels`, :mod:`pipelines.teacher`) share: the task's bookkeeping and the driver.

A stage is one pure function per scene, ``fn(job, scene, rows, tokens) -> SceneResult``, submitted
to dask. The function never raises: :func:`scene_task` turns an exception into the scene's
``error`` (the keyframes it had not finished count as failed) and records the worker's peak RSS.
:func:`run_scene_tasks` starts or attaches to the cluster, submits the scenes as worker threads
free up, turns a task that returns no result (its worker was killed: OOM, segfault) into that
scene's failure, and drives the progress bar from the done flags of the running scenes alone;
:func:`run_stage` does that for a stage's unfinished scenes of a store, and
:func:`stage_main` is a stage's Hydra entry point; :func:`tally` and :func:`summary_lines` turn the
results into a run summary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("bevlabels.stage")


def get_dataset(adapter_cfg: dict):
    """The dataset adapter for this config, built once per process (a dask worker builds it once, not per task):
    :func:`bevlabels.datasets.factory.build_adapter`."""
    from bevlabels.datasets.factory import build_adapter

    return build_adapter(adapter_cfg)


@dataclass
class SceneResult:
    """What one scene's task reports: keyframe counts, its error if any, seconds per part, peak RSS."""

    scene: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float = 0.0  # torch's peak allocated CUDA memory in the worker (0 without CUDA)


def cuda_synchronize() -> None:
    """Wait for the current CUDA device's queued work when this process has used CUDA; never starts CUDA itself.

    CUDA kernels run asynchronously: without this, a part that queues GPU work is timed as the seconds to
    queue it, and the next part that waits for a result (a ``.cpu()``) is billed for the GPU's time.
    """
    import sys

    torch = sys.modules.get("torch")  # a stage that never imported torch has no GPU work to wait for
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """``with Timer(res.seconds, "write"):`` adds the block's wall time to ``res.seconds["write"]``.

    With ``sync`` (the default) it waits for queued CUDA work on entry and exit (:func:`cuda_synchronize`, a no-op
    in a process that has not used CUDA), so a part is billed for the GPU time it queued, not the part that
    happens to read a result. ``sync=False`` for parts in other threads that queue no GPU work (decode, write):
    waiting there for the model's kernels would bill them for it and stall the thread.
    """

    def __init__(self, seconds: dict, key: str, sync: bool = True):
        self.seconds, self.key, self.sync = seconds, key, sync

    def __enter__(self):
        if self.sync:
            cuda_synchronize()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.sync:
            cuda_synchronize()
        self.seconds[self.key] += time.perf_counter() - self.t0


@contextmanager
def scene_task(res: SceneResult, n_keyframes: int, logger: logging.Logger = log) -> Iterator[SceneResult]:
    """The body of a scene's task: an exception becomes ``res.error`` (logged with its traceback), not a crash.

    Keyframes neither done nor skipped when it happened count as failed. The worker's peak RSS is
    recorded and ``res.seconds`` becomes a plain dict (picklable, printable) either way.
    """
    import resource

    try:
        yield res
    except Exception as e:  # a scene's failure is recorded; the other scenes go on
        res.error = f"{type(e).__name__}: {e}"
        res.failed = n_keyframes - res.done - res.skipped
        logger.error("scene %s failed: %s\n%s", res.scene, res.error, traceback.format_exc())
    finally:
        res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res.peak_gpu_mb = _peak_gpu_mb()
        res.seconds = dict(res.seconds)


def _peak_gpu_mb() -> float:
    """The process's peak allocated CUDA memory (MiB) when torch has used CUDA, else 0 (never starts CUDA)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0.0
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


#: ``cluster.allowed_failures`` when the config does not say: a scene whose worker dies fails at once
ALLOWED_FAILURES = 0


def task_resources(cluster_cfg: dict) -> dict[str, float] | None:
    """The dask resources every scene task asks for (``cluster.resources``: a mapping, or null for none).

    A caller resolves ``auto`` first (the label stage: ``{GPU: 1}`` when its feature model runs on a GPU).
    """
    res = cluster_cfg.get("resources")
    if res is None:
        return None
    if not isinstance(res, Mapping) or not all(isinstance(v, (int, float)) and v > 0 for v in res.values()):
        raise ValueError(f"cluster.resources must be null or a mapping like {{GPU: 1}}; got {res!r}")
    return {str(k): float(v) for k, v in res.items()} or None


def check_resources(client, resources: dict[str, float] | None) -> None:
    """Raise a ``ValueError`` (naming ``cluster.resources``) when no worker of the cluster offers ``resources``:
    dask would otherwise keep the tasks waiting for such a worker forever."""
    if not resources:
        return
    workers = client.scheduler_info().get("workers", {})
    offered = [w.get("resources") or {} for w in workers.values()]
    if not any(all(o.get(k, 0) >= v for k, v in resources.items()) for o in offered):
        spec = ",".join(f"{k}={v:g}" for k, v in resources.items())
        raise ValueError(
            f"cluster.resources={resources}: none of the cluster's {len(workers)} workers offers them (theirs: "
            f'{offered}). Start the GPU workers with `dask worker <scheduler> --resources "{spec}" --nworkers 1 '
            f"--nthreads 2` (one per GPU), or set cluster.resources=null to run the tasks on any worker"
        )


def task_slots(client, resources: dict[str, float] | None) -> int:
    """How many scene tasks the cluster runs at once: its threads, or with ``resources`` the threads of the
    workers that offer them, each worker capped by how many tasks its resources cover."""
    if not resources:
        return sum(client.nthreads().values())
    slots = 0
    for w in client.scheduler_info().get("workers", {}).values():
        offered = w.get("resources") or {}
        fits = min(int(offered.get(k, 0) // v) for k, v in resources.items())
        slots += min(int(w.get("nthreads", 1)), fits)
    return slots


#: ``cluster.kind`` values: ``auto`` (:func:`cluster_kind`), ``local`` (dask's LocalCluster), ``cuda`` (dask-cuda's)
CLUSTER_KINDS = ("auto", "local", "cuda")


def dask_cuda_available() -> bool:
    """dask-cuda is importable (it is optional: see :func:`cluster_kind`)."""
    import importlib.util

    return importlib.util.find_spec("dask_cuda") is not None


def cluster_kind(cluster_cfg: dict) -> str:
    """Which local cluster a stage starts: ``"local"`` (dask's ``LocalCluster``) or ``"cuda"`` (dask-cuda's
    ``LocalCUDACluster``), from ``cluster.kind``.

    ``auto`` (the default): ``cuda`` when the tasks ask for a GPU (``cluster.resources`` has ``GPU``), this
    machine has one and ``dask_cuda`` imports, else ``local``; ``local`` and ``cuda`` as said (``cuda`` without
    ``dask_cuda`` is a ``ValueError`` naming the key). An attached cluster (``cluster.address``) is whatever it is.

    ``LocalCUDACluster`` is the field's way to run one worker per GPU: each worker process sees only its own GPU
    (``CUDA_VISIBLE_DEVICES`` rotated, so its ``cuda`` is its GPU), is pinned to the CPU cores near it, and
    monitors device memory. dask-cuda is optional, not a dependency: its releases pin dask and distributed to
    one version (26.10 wants ``dask<2026.7.2``, this project runs 2026.8) and pull in ``cuda-core`` and
    ``nvidia-ml-py``. Without it the stage starts a ``LocalCluster`` whose workers offer the tasks' resources
    and spread a bare ``cuda`` over the GPUs by worker number (:func:`pipelines.labels.worker_device`), which
    is the same one-GPU-per-worker placement without the CPU pinning.
    """
    kind = str(cluster_cfg.get("kind", "auto"))
    if kind not in CLUSTER_KINDS:
        raise ValueError(f"cluster.kind must be one of {CLUSTER_KINDS}; got {kind!r}")
    if kind == "cuda" and not dask_cuda_available():
        raise ValueError(
            "cluster.kind=cuda needs dask-cuda (pip install dask-cuda, which pins its own dask version); "
            "cluster.kind=local runs one LocalCluster worker per GPU without it"
        )
    if kind != "auto":
        return kind
    gpu_tasks = "GPU" in (task_resources(cluster_cfg) or {})
    if not gpu_tasks or not bool(cluster_cfg.get("processes", True)) or not dask_cuda_available():
        return "local"  # (dask-cuda's workers are processes: cluster.processes=false keeps a threaded LocalCluster)
    import torch

    return "cuda" if torch.cuda.is_available() else "local"


def make_client(cluster_cfg: dict):
    """A dask client: attach to ``cluster.address`` if given, else start a local cluster (:func:`cluster_kind`).

    The local cluster's scheduler gives up on a scene after ``cluster.allowed_failures`` retries of a
    worker dying under it (default 0: a scene that is OOM-killed or segfaults would most likely kill
    every worker it is retried on; a rerun of the stage retries it). An attached cluster keeps its
    scheduler's own ``distributed.scheduler.allowed-failures``. With ``cluster.resources`` (e.g. ``{GPU: 1}``)
    every local worker offers them, so one worker per GPU: ``cluster.n_workers`` = the GPUs to use (under
    dask-cuda's ``LocalCUDACluster`` at most the GPUs there are: it gives each worker its own).
    """
    import dask
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter hides the progress bar
    if cluster_cfg.get("address"):
        log.info("attaching to dask scheduler %s", cluster_cfg["address"])
        return Client(cluster_cfg["address"]), None
    allowed = int(cluster_cfg.get("allowed_failures", ALLOWED_FAILURES))
    if allowed < 0:
        raise ValueError(f"cluster.allowed_failures must be >= 0, got {allowed}")
    kind = cluster_kind(cluster_cfg)
    n_workers = int(cluster_cfg.get("n_workers", 2))
    common = dict(
        threads_per_worker=int(cluster_cfg.get("threads_per_worker", 1)),
        memory_limit=cluster_cfg.get("memory_limit", "auto"),
        dashboard_address=cluster_cfg.get("dashboard_address", None),
        resources=task_resources(cluster_cfg),
    )
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed}):  # read when the scheduler starts
        if kind == "cuda":
            import torch
            from dask_cuda import LocalCUDACluster

            gpus = torch.cuda.device_count()
            if n_workers > gpus:
                log.warning("cluster.n_workers=%d but %d GPUs: dask-cuda starts one worker per GPU", n_workers, gpus)
            log.info("starting dask-cuda's LocalCUDACluster: %d workers, one GPU each", min(n_workers, gpus))
            cluster = LocalCUDACluster(n_workers=max(1, min(n_workers, gpus)), **common)
        else:
            cluster = LocalCluster(n_workers=n_workers, processes=bool(cluster_cfg.get("processes", True)), **common)
    return Client(cluster), cluster


def lost_task_reason(exc: BaseException) -> str:
    """Why a scene's task returned no result ``exc``: its worker died, the cluster lost it, or it raised."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KilledWorker):
        return (
            f"worker died ({what}): the process was killed, e.g. by the OOM killer, the nanny's memory limit "
            "(cluster.memory_limit) or a segfault; see the worker's log. cluster.allowed_failures sets how "
            "often a scene is retried on another worker"
        )
    if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError, CommClosedError)):
        return f"task lost ({what}): the cluster never returned the scene's result (did the scheduler die?)"
    return (
        f"task raised ({what}) outside the scene's own error handling, e.g. the worker could not "
        "import or unpickle the stage's function or job"
    )


def lost_scene(scene: str, rows: list[int], todo: list[int], exc: BaseException, done_rows=None) -> SceneResult:
    """The result of a scene whose task returned none (``exc``): its ``todo`` rows not done now count as failed.

    ``rows``: the scene's store rows; ``todo``: those not done when the run started (the others are
    ``skipped``); ``done_rows(rows) -> (n,) bool`` reads the stage's done flags (the task may have
    finished some keyframes before it died). Without it every ``todo`` row counts as failed.
    """
    res = SceneResult(scene, skipped=len(rows) - len(todo), error=lost_task_reason(exc), seconds={})
    if done_rows is not None and todo:
        try:
            res.done = int(np.count_nonzero(done_rows(todo)))
        except Exception as e:  # the count is bookkeeping: never let it hide the scene's failure
            log.warning("scene %s: cannot read its done flags (%s); counting its keyframes as failed", scene, e)
    res.failed = len(todo) - res.done
    return res


def _poll_running(done_rows, pending: dict[str, deque], running: set[str]) -> int:
    """Keyframes of the ``running`` scenes newly done; their rows leave the front of ``pending``.

    Reads one done flag per running scene (its first row not yet seen done: a task writes its
    scene's keyframes in row order), then again for the scenes whose flag was set: keyframes
    finished since the last poll. A stage writing out of order only makes the bar lag until the
    scene's result arrives.
    """
    new = 0
    polled = [s for s in running if pending.get(s)]
    while polled:
        flags = done_rows([pending[s][0] for s in polled])  # (n,) one row per scene
        advanced = []
        for s, flag in zip(polled, flags):
            if flag:
                pending[s].popleft()
                new += 1
                if pending[s]:
                    advanced.append(s)
        polled = advanced
    return new


def run_scene_tasks(
    cluster_cfg: dict,
    fn: Callable[..., SceneResult],
    job: Any,
    submit: dict[str, tuple[list[int], list[str]]],
    *,
    total: int,
    initial: int,
    desc: str,
    done_rows: Callable[[list[int]], np.ndarray] | None = None,
    todo: Collection[int] | None = None,
    poll_s: float = 2.0,
) -> list[SceneResult]:
    """``fn(job, scene, rows, tokens)`` for every scene of ``submit`` on a dask cluster, with a progress bar.

    ``submit``: ``{scene: (store rows, tokens)}``; ``total`` and ``initial`` are the bar's keyframe
    counts (all, and already done); ``todo``: the store rows not done when the run started (default:
    every row of ``submit``). Results come back in completion order; a failed scene is written
    above the bar as it arrives.

    Scenes are submitted as worker threads free up (never more running than the cluster has
    threads), so the driver knows which scenes run and a dying worker takes down only the scenes
    it was running. A task that returns no result (its worker was killed: ``KilledWorker``; or the
    cluster lost it) becomes that scene's failure (:func:`lost_scene`); the other scenes go on.

    Progress: a scene is one task of minutes, so with ``done_rows(rows) -> (n,) bool`` (the stage's
    done flags of those store rows, read now) the bar moves a keyframe at a time. Every ``poll_s``
    seconds it reads one flag per *running* scene (:func:`_poll_running`), never the whole store:
    the reads per poll grow with the cluster's threads, not with the dataset's keyframes.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    results: list[SceneResult] = []
    if not submit:
        return results
    todo_set = None if todo is None else set(int(t) for t in todo)
    pending = {s: deque(r for r in rows if todo_set is None or r in todo_set) for s, (rows, _) in submit.items()}
    todo_of = {s: list(p) for s, p in pending.items()}
    queue = deque(submit)
    running: dict[str, str] = {}  # future key -> scene
    seen = 0  # keyframes of running scenes seen done by polls
    environ = dict(os.environ)  # distributed's Nanny writes its pre-spawn variables (OMP_NUM_THREADS=1, ...) here
    resources = task_resources(cluster_cfg)
    client, cluster = make_client(cluster_cfg)
    try:
        check_resources(client, resources)
        finished = as_completed()

        def top_up() -> None:
            if not queue:
                return
            try:
                threads = task_slots(client, resources)
            except Exception:  # the scheduler is gone: let the running futures report it
                threads = 0
            while queue and len(running) < max(threads, 1):
                s = queue.popleft()
                rows, toks = submit[s]
                fut = client.submit(fn, job, s, rows, toks, key=f"{desc}-{s}", pure=False, resources=resources)
                running[fut.key] = s
                finished.add(fut)

        with tqdm(total=total, initial=initial, unit="kf", desc=desc) as bar:
            while queue or running:
                top_up()
                batch = finished.next_batch(block=False)
                for fut in batch:
                    scene = running.pop(fut.key)
                    seen -= len(todo_of[scene]) - len(pending[scene])
                    try:
                        r = fut.result()
                    except (Exception, asyncio.CancelledError) as e:  # the worker died, or the cluster lost it
                        r = lost_scene(scene, submit[scene][0], todo_of[scene], e, done_rows)
                    results.append(r)
                    if r.error:
                        tqdm.write(f"scene {r.scene} FAILED: {r.error}")
                if done_rows is not None and running:
                    try:
                        seen += _poll_running(done_rows, pending, set(running.values()))
                    except Exception as e:  # the bar is cosmetic: a failed read waits for the next poll
                        log.debug("progress poll failed: %s", e)
                n = min(total, initial + seen + sum(r.done + r.failed for r in results))
                if n > bar.n:
                    bar.update(n - bar.n)
                if not batch and running:  # until a scene finishes (submit the next at once) or poll_s passes
                    deadline = time.monotonic() + poll_s
                    while not finished.has_ready() and time.monotonic() < deadline:
                        time.sleep(min(0.1, poll_s))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        # ... and leaves them for the rest of the process: a caller's later subprocesses (a training run after
        # the label stage, tests) would inherit one-thread BLAS. Put the caller's environment back.
        os.environ.clear()
        os.environ.update(environ)
    return results


def run_stage(
    writer, stage: str, cluster_cfg: dict, fn: Callable[..., SceneResult], job: Any, per_scene: dict, desc: str
) -> tuple[list[SceneResult], int]:
    """A stage's keyframes still to do, as scene tasks on the cluster: ``(results, keyframes of skipped scenes)``.

    ``writer`` is the store's locked :class:`~bevlabels.cache.LabelStoreWriter`; ``per_scene`` is
    ``{scene: (store rows, tokens)}``. Scenes with every keyframe done are not submitted; the bar
    polls the done flags of the running scenes only; failed scenes (those whose worker died
    included) are recorded in the store under ``stage``.
    """
    todo = set(int(t) for t in writer.todo_indices(stage))  # the one read of every done flag of a run
    total = sum(len(rows) for rows, _ in per_scene.values())
    log.info("%s: %d keyframes in %d scenes; %d to do, store %s", stage, total, len(per_scene), len(todo), writer.path)
    submit = {s: v for s, v in per_scene.items() if todo.intersection(v[0])}
    skipped = sum(len(rows) for s, (rows, _) in per_scene.items() if s not in submit)
    results = run_scene_tasks(
        cluster_cfg,
        fn,
        job,
        submit,
        total=total,
        initial=total - len(todo),
        desc=desc,
        done_rows=lambda rows: writer.done_rows(rows, stage),
        todo=todo,
    )
    writer.record_failures({r.scene: r.error for r in results if r.error}, stage=stage)
    return results, skipped


def stage_main(config_name: str, run: Callable[[Any], dict]) -> None:
    """The Hydra entry point of a stage (``conf/<config_name>.yaml``); exits 1 when a scene failed."""
    import os
    import sys

    import hydra

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from bevlabels.conf import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def _main(cfg) -> None:
        if run(cfg)["failures"]:
            sys.exit(1)

    _main()


def tally(results: list[SceneResult], wall: float, skipped_scenes: int = 0) -> dict:
    """Keyframe counts, failures, throughput, summed seconds per part and peak RSS over a run's scene results."""
    seconds: dict[str, float] = defaultdict(float)
    for r in results:
        for k, v in r.seconds.items():
            seconds[k] += v
    done_now = sum(r.done for r in results)
    return {
        "keyframes_done_now": done_now,
        "keyframes_skipped": sum(r.skipped for r in results) + skipped_scenes,
        "keyframes_failed": sum(r.failed for r in results),
        "failures": {r.scene: r.error for r in results if r.error},
        "wall_s": wall,
        "keyframes_per_s": done_now / wall if wall > 0 else 0.0,
        "seconds": dict(seconds),
        "peak_rss_mb_per_worker": max((r.peak_rss_mb for r in results), default=0.0),
        "peak_gpu_mb_per_worker": max((r.peak_gpu_mb for r in results), default=0.0),
    }


def summary_lines(s: dict) -> list[str]:
    """The lines every stage summary prints: keyframes, wall time, task time, peak RSS, failures."""
    lines = [
        f"  keyframes    {s['keyframes_done_now']} done now, {s['keyframes_skipped']} skipped (already done), "
        f"{s['keyframes_failed']} failed; {s['keyframes_done_total']}/{s['keyframes_total']} done in the store",
        f"  wall time    {s['wall_s']:.1f} s, {s['keyframes_per_s']:.3f} keyframes/s",
    ]
    if s["seconds"]:
        total = sum(s["seconds"].values()) or 1.0
        parts = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in s["seconds"].items())
        lines.append(f"  task time    {parts}")
        lines.append(f"  peak RSS     {s['peak_rss_mb_per_worker']:.0f} MB per worker")
        if s.get("peak_gpu_mb_per_worker"):
            lines.append(f"  peak GPU     {s['peak_gpu_mb_per_worker']:.0f} MiB allocated per worker")
    lines += [f"  FAILED       {scene}: {err}" for scene, err in s["failures"].items()]
    return lines
