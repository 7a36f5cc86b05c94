"""What the per-scene stages (:mod:`pipelines.labels`, :mod:`pipelines.teacher`) share: the task's bookkeeping and the driver.

A stage is one pure function per scene, ``fn(job, scene, rows, tokens) -> SceneResult``, submitted
to dask. The function never raises: :func:`scene_task` turns an exception into the scene's
``error`` (the keyframes it had not finished count as failed) and records the worker's peak RSS.
:func:`run_scene_tasks` starts or attaches to the cluster, submits the scenes and drives the
progress bar; :func:`run_stage` does that for a stage's unfinished scenes of a store, and
:func:`stage_main` is a stage's Hydra entry point; :func:`tally` and :func:`summary_lines` turn the
results into a run summary.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bevlabels.stage")

# Per-process caches: a dask worker builds its dataset adapter once, not per task.
_DATASETS: dict[str, Any] = {}


def get_dataset(adapter_cfg: dict):
    """The dataset adapter for this config, built once per process (``_target_`` + kwargs)."""
    key = repr(sorted(adapter_cfg.items()))
    if key not in _DATASETS:
        cfg = dict(adapter_cfg)
        module, _, name = cfg.pop("_target_").rpartition(".")
        _DATASETS[key] = getattr(importlib.import_module(module), name)(**cfg)
    return _DATASETS[key]


def plain(cfg) -> dict:
    """A resolved plain-dict copy of an OmegaConf config (a dict is returned as is)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg


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


class Timer:
    """``with Timer(res.seconds, "write"):`` adds the block's wall time to ``res.seconds["write"]``."""

    def __init__(self, seconds: dict, key: str):
        self.seconds, self.key = seconds, key

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
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
        res.seconds = dict(res.seconds)


def make_client(cluster_cfg: dict):
    """A dask client: attach to ``cluster.address`` if given, else start a LocalCluster."""
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter hides the progress bar
    if cluster_cfg.get("address"):
        log.info("attaching to dask scheduler %s", cluster_cfg["address"])
        return Client(cluster_cfg["address"]), None
    cluster = LocalCluster(
        n_workers=int(cluster_cfg.get("n_workers", 2)),
        threads_per_worker=int(cluster_cfg.get("threads_per_worker", 1)),
        processes=bool(cluster_cfg.get("processes", True)),
        memory_limit=cluster_cfg.get("memory_limit", "auto"),
        dashboard_address=cluster_cfg.get("dashboard_address", None),
    )
    return Client(cluster), cluster


def run_scene_tasks(
    cluster_cfg: dict,
    fn: Callable[..., SceneResult],
    job: Any,
    submit: dict[str, tuple[list[int], list[str]]],
    *,
    total: int,
    initial: int,
    desc: str,
    progress: Callable[[], int] | None = None,
    poll_s: float = 2.0,
) -> list[SceneResult]:
    """``fn(job, scene, rows, tokens)`` for every scene of ``submit`` on a dask cluster, with a progress bar.

    ``total`` and ``initial`` are the bar's keyframe counts (all, and already done). A scene is
    one task and takes minutes, so the bar would move a scene at a time; with ``progress`` (the
    number of keyframes done in the store, read every ``poll_s`` seconds: tasks set a keyframe's
    ``done`` flag as they finish it) it moves a keyframe at a time. A failed scene is written above
    the bar as it arrives; results come back in completion order.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    results: list[SceneResult] = []
    if not submit:
        return results
    client, cluster = make_client(cluster_cfg)
    try:
        futures = [
            client.submit(fn, job, s, rows, toks, key=f"{desc}-{s}", pure=False) for s, (rows, toks) in submit.items()
        ]
        finished = as_completed(futures)
        with tqdm(total=total, initial=initial, unit="kf", desc=desc) as bar:
            while len(results) < len(futures):
                batch = finished.next_batch(block=progress is None)
                for fut in batch:
                    r = fut.result()
                    results.append(r)
                    if r.error:
                        tqdm.write(f"scene {r.scene} FAILED: {r.error}")
                done = progress() if progress is not None else initial + sum(r.done for r in results)
                n = min(total, done + sum(r.failed for r in results))
                if n > bar.n:
                    bar.update(n - bar.n)
                if not batch and len(results) < len(futures):
                    time.sleep(poll_s)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def run_stage(
    writer, stage: str, cluster_cfg: dict, fn: Callable[..., SceneResult], job: Any, per_scene: dict, desc: str
) -> tuple[list[SceneResult], int]:
    """A stage's keyframes still to do, as scene tasks on the cluster: ``(results, keyframes of skipped scenes)``.

    ``writer`` is the store's locked :class:`~bevlabels.cache.LabelStoreWriter`; ``per_scene`` is
    ``{scene: (store rows, tokens)}``. Scenes with every keyframe done are not submitted; the bar
    follows the stage's ``done`` flags; failed scenes are recorded in the store under ``stage``.
    """
    todo = set(int(t) for t in writer.todo_indices(stage))
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
        progress=lambda: int(writer.done_mask(stage).sum()),
    )
    writer.record_failures({r.scene: r.error for r in results if r.error}, stage=stage)
    return results, skipped


def stage_main(config_name: str, run: Callable[[Any], dict]) -> None:
    """The Hydra entry point of a stage (``conf/<config_name>.yaml``); exits 1 when a scene failed."""
    import os
    import sys
    from pathlib import Path

    import hydra

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    @hydra.main(
        config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name=config_name, version_base="1.3"
    )
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
    lines += [f"  FAILED       {scene}: {err}" for scene, err in s["failures"].items()]
    return lines
