"""Train a detector: ``python -m trainer.train experiment=... [key=value ...]`` (Hydra, ``conf/train.yaml``).

    python -m trainer.train experiment=teacher_centerpoint            # the LiDAR teacher
    python -m trainer.train experiment=teacher_centerpoint debug=fdr  # one batch of train and val
    python -m trainer.train experiment=... ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
    python -m trainer.train experiment=dvd_temporal init_weights=<a dvd run>/checkpoints/last.ckpt   # start from its weights
    python -m trainer.train --help                                    # config groups and every key

What a run does (:func:`train`): seed everything (``seed``), build ``data`` (a
:class:`~trainer.data.common.FrameDataModule`) and ``model`` (a
:class:`~trainer.lit_base.DetectionModule`) with ``hydra.utils.instantiate``, check the data's inputs
(the synthetic world is generated if missing; a label store the data needs must exist, be complete
and match the grid and keyframes, else the run stops before training and says why), build the
callbacks (``conf/callbacks``: checkpoints to ``<run_dir>/checkpoints`` with ``last.ckpt``,
a progress bar, the learning rate), the loggers (``conf/logger``: CSV by default, TensorBoard
optional) and the ``pl.Trainer`` (``conf/trainer``: ``auto`` by default, a CUDA GPU in bf16-mixed when
there is one, else the CPU in fp32, see :mod:`trainer.device`), prints which device and precision it runs
on, then ``fit``, resuming from ``ckpt_path`` if
given (epoch, step, optimizer and scheduler state continue). ``init_weights`` instead starts a new run from
another run's weights where they fit (:func:`trainer.lit_base.init_from_checkpoint`; e.g. a temporal model
from a single-frame one; what was and was not loaded goes to ``<run_dir>/init_weights.json``).

Every checkpoint carries the run's resolved config under ``checkpoint["bevlabels_config"]``
(:class:`ConfigInCheckpoint`), so ``python -m trainer.evaluate ckpt=...`` and
``python -m pipelines.teacher ckpt=...`` rebuild data and model from the checkpoint alone
(:func:`trainer.lit_base.load_checkpoint`).

The run directory is Hydra's (``outputs/<task_name>/<time>``, or ``run_dir=...``); it holds the
checkpoints, ``csv/`` (and ``tensorboard/``) logs, and ``.hydra/`` (the composed config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from bevlabels.conf import CONF_DIR, plain
from trainer.callbacks import PreciseBN
from trainer.device import describe_run
from trainer.lit_base import CONFIG_KEY, DetectionModule, init_from_checkpoint

log = logging.getLogger("bevlabels.train")


class ConfigInCheckpoint(pl.Callback):
    """Writes the run's resolved config (a plain dict) into every checkpoint under :data:`~trainer.lit_base.CONFIG_KEY`."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.last_saved_step: int | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        self.last_saved_step = trainer.global_step


def resolved(cfg) -> dict:
    """The config as a plain dict, every interpolation resolved and none missing (what checkpoints store)."""
    return plain(cfg, throw_on_missing=True)


def instantiate_group(group) -> list:
    """Objects of a ``callbacks`` / ``logger`` group: a mapping of named ``_target_`` configs (``None`` entries skipped)."""
    from hydra.utils import instantiate

    if not group:
        return []
    out = []
    for name, node in group.items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ValueError(f"{name}: expected a config with a _target_, got keys {sorted(node)}")
        out.append(instantiate(node))
    return out


def build_trainer(cfg, callbacks: list, loggers: list) -> pl.Trainer:
    """The ``pl.Trainer`` of ``cfg.trainer`` with these callbacks and loggers (a LR monitor needs a logger)."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import LearningRateMonitor

    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def record_box_scenes(datamodule, run_dir: Path, loggers: list) -> dict[str, Any] | None:
    """Write a label-scarce run's choice of box scenes (``data.box_fraction < 1``) to ``<run_dir>/box_scenes.json``
    and log it as hyperparameters (``data/box_scenes``, ...); the record, or None for a run with every box."""
    if getattr(datamodule, "box_fraction", 1.0) >= 1.0:
        return None
    datamodule.prepare_data()  # the adapter lists the scenes (the synthetic world is made on first use)
    record = datamodule.box_scene_record()
    (run_dir / "box_scenes.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info(
        "box_fraction=%s (seed %d): boxes of %d of %d training scenes: %s",
        record["box_fraction"],
        record["box_fraction_seed"],
        len(record["box_scenes"]),
        record["train_scenes"],
        record["box_scenes"],
    )
    for logger in loggers:
        logger.log_hyperparams({f"data/{k}": v for k, v in record.items()})
    return record


def train(cfg) -> dict[str, Any]:
    """Train as the config says; return ``{"run_dir", "last_ckpt", "best_ckpt", "global_step", "metrics", "device",
    "precision", "ran"}`` (``ran``: the printed line saying which device, processes and precision trained)."""
    from hydra.utils import instantiate

    init_weights = cfg.get("init_weights")
    if init_weights and cfg.get("ckpt_path"):
        raise ValueError(
            f"init_weights={init_weights} and ckpt_path={cfg.ckpt_path} are both set: ckpt_path resumes a run "
            "(weights, optimizer, step), init_weights starts a new one from another run's weights; give one"
        )
    config = resolved(cfg)
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    log.info("data: %s", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("model: %s", cfg.model._target_)
    model = instantiate(cfg.model)
    if not isinstance(model, DetectionModule):
        raise TypeError(f"model._target_ builds a {type(model).__name__}; trainer.train trains DetectionModules")
    data_classes = getattr(datamodule, "class_names", None)
    if data_classes is not None and tuple(data_classes) != tuple(model.class_names):
        raise ValueError(
            f"data.class_names {list(data_classes)} differ from model.class_names {list(model.class_names)}"
        )

    if init_weights:
        report = init_from_checkpoint(model, init_weights)
        log.info(report.summary())
        (run_dir / "init_weights.json").write_text(json.dumps(dataclasses.asdict(report), indent=1) + "\n")

    if cfg.get("check_inputs", True):
        datamodule.prepare_data()
        datamodule.setup("fit")
        check = getattr(datamodule, "check_inputs", None)
        if check is not None:
            check()  # raises, naming what is missing or mismatched

    in_checkpoint = ConfigInCheckpoint(config)
    callbacks = instantiate_group(cfg.get("callbacks")) + [in_checkpoint]
    loggers = instantiate_group(cfg.get("logger"))
    record_box_scenes(datamodule, run_dir, loggers)
    trainer = build_trainer(cfg, callbacks, loggers)
    ran = describe_run(trainer)
    if trainer.is_global_zero:
        print(f"training on {ran}", flush=True)

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint to resume from")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    ckpt_cb = trainer.checkpoint_callback
    last = Path(ckpt_cb.dirpath) / "last.ckpt" if ckpt_cb is not None and ckpt_cb.dirpath else None
    if last is not None and not trainer.fast_dev_run and in_checkpoint.last_saved_step != trainer.global_step:
        # Stopped inside an epoch (max_time, max_steps): the callbacks saved nothing since; keep the work.
        for cb in trainer.callbacks:
            if isinstance(cb, PreciseBN):
                cb.recompute(trainer, model)
        trainer.save_checkpoint(last)
        log.info("saved %s at step %d (training stopped inside an epoch)", last, trainer.global_step)
    result = {
        "run_dir": str(run_dir),
        "last_ckpt": str(last) if last is not None and last.is_file() else None,
        "best_ckpt": (ckpt_cb.best_model_path or None) if ckpt_cb is not None else None,
        "global_step": int(trainer.global_step),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "ran": ran,
    }
    log.info("finished at step %d; last checkpoint %s", result["global_step"], result["last_ckpt"])
    print(f"run dir: {run_dir}\nlast checkpoint: {result['last_ckpt']}\ntrained on: {ran}", flush=True)
    return result


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _main(cfg) -> None:
        train(cfg)

    _main()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
