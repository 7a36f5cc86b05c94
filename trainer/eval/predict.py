"""Predicting a split for an evaluation, for every benchmark: the data module of a checkpoint's config
(:func:`build_datamodule`), the model's ``predict_step`` outputs on every keyframe (:func:`predict`, on the
device and precision of :func:`trainer.device.resolve_eval_device`), and the dict an evaluation returns
(:func:`evaluation_result`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bevlabels.datasets.base import Frame
from trainer.lit_base import DetectionModule


def build_datamodule(config: dict, **overrides: Any):
    """The data module of a stored (resolved) config, with ``overrides`` of its keys (``None`` values ignored)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data_cfg = dict(config["data"])
    data_cfg.update({k: v for k, v in overrides.items() if v is not None})
    return instantiate(OmegaConf.create(data_cfg))


def evaluation_result(summary: dict, extra: dict, out_dir, eval_set, keyframes: int, ran: dict) -> dict[str, Any]:
    """What an evaluation returns, for either benchmark: its metrics summary, the extra metrics, where it wrote, what
    it scored and on which device and precision it predicted."""
    return {
        **summary,
        "extra": extra,
        "out_dir": str(out_dir),
        "eval_set": eval_set,
        "keyframes": keyframes,
        "device": ran["device"],
        "precision": ran["precision"],
    }


def predict(
    model: DetectionModule,
    datamodule,
    split: str = "val",
    device: str = "auto",
    precision: str | None = "auto",
    ran: dict[str, str] | None = None,
    frames: Sequence[Frame] | None = None,
) -> list[dict[str, Any]]:
    """``predict_step`` outputs for every keyframe of ``split`` (a flat list, one dict per keyframe).

    ``frames``: these keyframes of the data module's dataset instead of the split (e.g. one scene's), in their
    order, one keyframe a batch: a temporal model sees them as one stream, as it would within its split.

    ``device`` / ``precision``: as :func:`trainer.device.resolve_eval_device` (``auto``: a CUDA GPU in
    bf16-mixed when there is one, else the CPU in fp32). ``ran``, when given, receives ``device``,
    ``precision`` and ``ran`` (the line :func:`trainer.device.describe_run` prints).
    """
    import pytorch_lightning as pl

    from trainer.device import describe_run, resolve_eval_device

    accelerator, precision = resolve_eval_device(device, precision)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    if hasattr(datamodule, "device_type"):  # its loaders pin memory and size their workers for this device
        datamodule.device_type = trainer.strategy.root_device.type
    if frames is None:
        loader = datamodule.predict_dataloader(split)
    else:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            datamodule.make_dataset(list(frames), train=False),
            batch_size=1,
            collate_fn=datamodule.collate_fn,
            **datamodule.loader_kwargs(),
        )
    batches = trainer.predict(model, dataloaders=loader)
    if ran is not None:
        ran.update(
            device=str(trainer.strategy.root_device), precision=str(trainer.precision), ran=describe_run(trainer)
        )
    return [p for batch in batches for p in batch]


def ran_of(device: str = "auto", precision: str | None = "auto") -> dict[str, str]:
    """What :func:`predict` will run on, before it runs (it replaces this with the trainer's own account)."""
    from trainer.device import resolve_eval_device

    accelerator, precision = resolve_eval_device(device, precision)
    return {"device": accelerator, "precision": precision, "ran": f"device {accelerator}, precision {precision}"}


def run_extra_eval(model, predictions, datamodule, out_dir: Path) -> dict[str, Any]:
    """The model's own extra metrics (its ``extra_eval`` hook, e.g. foreground depth), written to
    ``<out_dir>/extra_metrics.json``; ``{}`` for a model without the hook."""
    if not hasattr(model, "extra_eval"):
        return {}
    extra = model.extra_eval(predictions, datamodule) or {}
    with open(Path(out_dir) / "extra_metrics.json", "w") as f:
        json.dump(extra, f, indent=2)
    return extra
