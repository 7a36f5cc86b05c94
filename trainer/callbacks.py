"""Lightning callbacks of the trainer (besides Lightning's own), each configured in ``conf/callbacks``.

:class:`PreciseBN` recomputes BatchNorm running statistics from training batches before each
validation and at each epoch's end (shuffled keyframes, each with its own augmentation draw, even when
training streams scenes: :meth:`~trainer.data.common.FrameDataModule.bn_dataloader`), so validation,
checkpoints (and so evaluation and the cached teacher maps) use statistics of the current weights. CenterPoint's BatchNorms average with momentum
0.01 (mmdet3d's setting): after 100 steps their running statistics are still 37% the initial
``mean 0, var 1``, and a short run's eval-mode outputs are meaningless without this (Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021; detectron2's ``PreciseBN`` hook). It builds that loader once
per data module and keeps it: a loader with persistent workers built at every validation would start (and
leave behind) a new set of worker processes each time.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)


class PreciseBN(pl.Callback):
    """Set every BatchNorm's running mean/var to their average over ``num_batches`` training batches (no gradients).

    Runs at most once per global step: before validation during ``fit`` (not in the sanity check)
    and at the end of each training epoch (which precedes the epoch's checkpoint).
    """

    def __init__(self, num_batches: int = 8):
        if num_batches < 1:
            raise ValueError(f"PreciseBN needs num_batches >= 1; got {num_batches}")
        self.num_batches = int(num_batches)
        self._done_at: int | None = None
        self._loader = None  # built on first use, then reused (its workers persist)
        self._loader_source = None  # the data module (or trainer) it was built from

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.recompute(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recompute(trainer, pl_module)

    def loader(self, trainer: pl.Trainer):
        """The batches the statistics come from: the data module's ``bn_dataloader`` (shuffled keyframes even when
        training streams scenes), else its ``train_dataloader``, else the trainer's; built once per data module."""
        datamodule = getattr(trainer, "datamodule", None)
        source = datamodule if datamodule is not None else trainer
        if self._loader is None or self._loader_source is not source:
            if datamodule is None:
                self._loader = trainer.train_dataloader
            elif hasattr(datamodule, "bn_dataloader"):
                self._loader = datamodule.bn_dataloader()
            else:
                self._loader = datamodule.train_dataloader()
            self._loader_source = source
        return self._loader

    @torch.no_grad()
    def recompute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._done_at == trainer.global_step or trainer.global_step == 0:
            return
        bns = [m for m in pl_module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        if not bns:
            return
        loader = self.loader(trainer)
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after n batches, the mean of their statistics
        was_training = pl_module.training
        pl_module.train()
        n, limit = 0, 1 if trainer.fast_dev_run else self.num_batches
        for batch in loader:
            if n == limit:
                break
            pl_module(pl_module.transfer_batch_to_device(batch, pl_module.device, 0))
            n += 1
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        reset = getattr(pl_module, "reset_state", None)
        if callable(reset):  # these batches were no stream: forget what a temporal model carried from them
            reset()
        pl_module.train(was_training)
        self._done_at = trainer.global_step
        log.info("precise BN: running statistics of %d BatchNorms from %d training batches", len(bns), n)
