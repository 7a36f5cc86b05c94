"""Stage `synth`: write a synthetic dataset (``bevlabels.synthetic``) as nuScenes or as Argoverse 2 logs.

    python -m pipelines.synth preset=<tiny|small|medium|fullsize> seed=<int> out=<dir> [overwrite=true] [workers=N]
    python -m pipelines.synth format=av2 preset=tiny out=<dir>        # the same scenes as AV2 sensor logs

The presets are ``conf/preset/*.yaml``; any of their fields can be overridden
(``preset.keyframes=8``). ``format`` picks the writer (:data:`bevlabels.synthetic.formats.WRITERS`): ``nuscenes`` (default,
:func:`bevlabels.synthetic.generate`) or ``av2`` (:func:`bevlabels.synthetic.av2_generate.generate_av2`:
``keyframes`` LiDAR sweeps per log at 10 Hz, every one annotated, 7 ring cameras). Scenes are
rendered in parallel by dask worker processes when ``workers > 1``; each scene is a pure function
of the config, so the bytes do not depend on it. Bad input (an unknown format, preset or
parameter, an impossible value, a non-empty ``out`` without ``overwrite=true``) stops with a
message before anything is rendered. An ``out`` that holds part of the same world (what
``python -m pipelines.labels limit_scenes=n`` renders) is completed: only its missing scenes are rendered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import hydra
from omegaconf import DictConfig, OmegaConf

from bevlabels.synthetic import OutputDirError, SynthConfig, SynthConfigError
from bevlabels.synthetic.formats import writer
from bevlabels.synthetic.generate import check_output_dir


def dask_map(workers: int) -> Callable[[Callable, Iterable], list]:
    """A ``map(f, items)`` that runs ``f`` on every item in ``workers`` dask worker processes."""

    def run(f: Callable, items: Iterable) -> list:
        import dask
        from dask.diagnostics import ProgressBar

        tasks = [dask.delayed(f, pure=True)(x) for x in items]
        with ProgressBar(minimum=1.0, dt=1.0):  # a bar on stdout while the scenes render (minutes for `small`)
            return list(dask.compute(*tasks, scheduler="processes", num_workers=workers))

    return run


def run_synth(cfg: DictConfig) -> None:
    """Validate everything, then generate: the body of the entry point, callable from Python."""
    try:
        w = writer(cfg.get("format", "nuscenes"))
        generate, own_paths = w.generate, w.own_paths
        preset = OmegaConf.to_container(cfg.preset, resolve=True)
        config = SynthConfig.from_dict(preset, seed=cfg.seed)
        workers = cfg.workers
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise SynthConfigError(f"workers={workers!r}: must be an integer >= 1")
        if not isinstance(cfg.overwrite, bool):
            raise SynthConfigError(f"overwrite={cfg.overwrite!r}: must be true or false")
        check_output_dir(cfg.out, cfg.overwrite, own_paths, config if w.missing else None)  # a partial world: completed
    except (SynthConfigError, OutputDirError) as e:
        raise SystemExit(f"pipelines.synth: {e}") from None
    start = time.perf_counter()
    generate(config, cfg.out, overwrite=cfg.overwrite, map_fn=dask_map(workers) if workers > 1 else None)
    print(f"pipelines.synth: preset {config.name}, seed {config.seed}: done in {time.perf_counter() - start:.1f} s")


@hydra.main(version_base="1.3", config_path="../conf", config_name="synth")
def main(cfg: DictConfig) -> None:
    run_synth(cfg)


if __name__ == "__main__":
    main()
