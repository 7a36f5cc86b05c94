"""The base LightningModule of every detector, and rebuilding one from a checkpoint alone.

:class:`DetectionModule` owns the training loop's plumbing; a detector subclasses it and
implements three hooks on the batch dict of :mod:`trainer.data.common`:

- ``forward(batch) -> outputs``: whatever the model returns (e.g. ``{"bev", "preds"}``);
- ``compute_loss(outputs, batch) -> dict[str, Tensor]``: must contain ``"loss"`` (the total to
  minimise); every entry is logged as ``train/<name>`` and ``val/<name>``;
- ``decode(outputs, batch) -> list[dict]``: per sample ``{"boxes": (M, 9) float in the keyframe's
  ego frame (layout of bevlabels.geometry), "scores": (M,), "labels": (M,) int64 into class_names}``.

and may add ``extra_eval(predictions, datamodule) -> dict`` (called by ``trainer.evaluate`` after
the detection metrics; e.g. depth metrics of a camera model). Class attributes ``use_camera`` /
``use_lidar`` fill the ``meta`` of the nuScenes result file.

It implements ``training_step``, ``validation_step``, ``predict_step`` (per sample
``{"sample_token", "boxes", "scores", "labels"}``, tensors on the CPU) and
``configure_optimizers``. Optimizer and scheduler are ``functools.partial`` s (Hydra
``_partial_: true``): ``optimizer(params)``, ``scheduler(optimizer)``. A scheduler whose
constructor takes ``total_steps`` (``OneCycleLR``) and was not given it gets
``trainer.estimated_stepping_batches``.

Checkpoints. ``trainer.train`` stores the resolved config under :data:`CONFIG_KEY` in every
checkpoint; :func:`load_checkpoint` rebuilds the model from that config alone and loads the weights,
refusing (naming the keys) a checkpoint whose state dict does not fit the model its config builds.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

#: where ``trainer.train`` puts the resolved config in a checkpoint
CONFIG_KEY = "bevlabels_config"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: no stored config, or weights that do not fit its config's model."""


class DetectionModule(pl.LightningModule):
    """Base of the trainer's 3D detectors (see the module docstring for the hooks a subclass implements).

    Args:
        optimizer: ``partial`` of a torch optimizer, called with the parameters.
        scheduler: ``partial`` of a LR scheduler called with the optimizer, or ``None``.
        class_names: the label space of ``gt_labels`` and of decoded ``labels`` (the config's ``class_names``;
            no default: a detector's label space is its dataset's, never assumed).
        scheduler_interval: ``"step"`` or ``"epoch"``: when the scheduler steps.
        detector: the model, kept as ``self.detector``; its ``class_names`` (the head's label space)
            must equal ``class_names``, checked here once for every detector.
    """

    #: modalities, written to the nuScenes result file's ``meta``
    use_camera: bool = False
    use_lidar: bool = False

    def __init__(
        self,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        *,
        class_names: Sequence[str],
        scheduler_interval: str = "step",
        detector: torch.nn.Module | None = None,
    ):
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch'; got {scheduler_interval!r}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.class_names = tuple(str(c) for c in class_names)
        if detector is not None:
            names = getattr(detector, "class_names", None)
            if names is None:
                raise TypeError(f"{type(detector).__name__} must expose class_names (its head's label space)")
            if tuple(names) != self.class_names:
                raise ValueError(
                    f"model.class_names {list(self.class_names)} differ from the detector's class_names {list(names)}"
                )
            self.detector = detector

    # -- hooks of the subclass --------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def compute_loss(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, outputs: Any, batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    # -- steps ------------------------------------------------------------------------------------
    @staticmethod
    def batch_size_of(batch: Mapping[str, Any]) -> int:
        return len(batch["sample_token"])

    def _log_losses(self, stage: str, losses: Mapping[str, torch.Tensor], batch_size: int) -> None:
        if "loss" not in losses:
            raise KeyError(f"compute_loss must return a dict with 'loss' (the total); got {sorted(losses)}")
        for name, value in losses.items():
            self.log(
                f"{stage}/{name}",
                value.detach() if isinstance(value, torch.Tensor) else float(value),
                on_step=stage == "train",
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=batch_size,
                sync_dist=stage != "train",
            )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(self(batch), batch)
        self._log_losses("train", losses, self.batch_size_of(batch))
        return losses["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(self(batch), batch)
        self._log_losses("val", losses, self.batch_size_of(batch))
        return losses["loss"]

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per sample ``{"sample_token": str, "boxes": (M, 9), "scores": (M,), "labels": (M,)}`` on the CPU
        (plus ``track_ids (M,)`` when the model's decoder gives them).

        Subclasses that gather more from the same forward pass override :meth:`on_predict_outputs`.
        """
        outputs = self(batch)
        self.on_predict_outputs(outputs, batch)
        dets = self.decode(outputs, batch)
        tokens = batch["sample_token"]
        assert len(dets) == len(tokens), f"decode returned {len(dets)} samples for a batch of {len(tokens)}"
        out = []
        for tok, d in zip(tokens, dets):
            p = {
                "sample_token": tok,
                "boxes": d["boxes"].detach().float().cpu(),
                "scores": d["scores"].detach().float().cpu(),
                "labels": d["labels"].detach().long().cpu(),
            }
            if "track_ids" in d:  # a model that tracks by itself (trainer.tracking uses its ids)
                p["track_ids"] = d["track_ids"].detach().long().cpu()
            out.append(p)
        return out

    def on_predict_outputs(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """A hook: the model's outputs of a prediction batch, before decoding (default: nothing)."""

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        func = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        given = getattr(self.scheduler_factory, "keywords", {}) or {}
        if "total_steps" in inspect.signature(func).parameters and given.get("total_steps") is None:
            if "epochs" not in given:
                total = self.trainer.estimated_stepping_batches
                if not total or total == float("inf"):
                    raise ValueError(
                        f"{func.__name__} needs the run's length: set trainer.max_epochs or trainer.max_steps "
                        "(max_time alone does not say how many steps there will be), or give scheduler.total_steps"
                    )
                kwargs["total_steps"] = int(total)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """On resume, keep the length of a run-length scheduler (``OneCycleLR``) from this run's config.

        The checkpoint's scheduler state carries the old run's ``total_steps``; resuming with more
        epochs would otherwise stop with "Tried to step N times". Its position (step count) is kept.
        """
        func = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        if func is None or "total_steps" not in inspect.signature(func).parameters:
            return
        for state in checkpoint.get("lr_schedulers", []):
            if "total_steps" in state:
                log.info(
                    "resume: %s re-planned over this run's length (was %s steps)", func.__name__, state["total_steps"]
                )
                state.pop("total_steps")
                state.pop("_schedule_phases", None)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (sorted by name): what the weights are."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys of ``state_dict`` for ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if isinstance(state_dict[k], torch.Tensor) and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = [
            f"{what} ({len(keys)}): {show(keys)}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
            if keys
        ]
        raise CheckpointError(
            f"{source}: the weights do not fit the model its stored config builds; " + "; ".join(parts)
        )


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint: its resolved ``config``, the ``model`` (eval mode), provenance."""

    path: Path
    config: dict
    model: DetectionModule
    state_dict_sha256: str
    epoch: int
    global_step: int


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict at ``path``; :class:`CheckpointError` if absent or without a stored config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    if CONFIG_KEY not in ckpt:
        raise CheckpointError(
            f"{path} holds no resolved config ({CONFIG_KEY!r}): it was not written by `python -m trainer.train`, "
            "so the model it holds cannot be rebuilt"
        )
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the checkpoint's stored config alone, load its weights, put it in eval mode."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    config = ckpt[CONFIG_KEY]
    if "model" not in config:
        raise CheckpointError(f"{path}: the stored config has no 'model' section (keys {sorted(config)})")
    model = instantiate(OmegaConf.create(config["model"]))
    if not isinstance(model, DetectionModule):
        raise CheckpointError(f"{path}: model._target_ builds a {type(model).__name__}, not a DetectionModule")
    state_dict = ckpt["state_dict"]
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict)
    model.eval()
    return LoadedCheckpoint(
        path=path,
        config=config,
        model=model,
        state_dict_sha256=state_dict_sha256(state_dict),
        epoch=int(ckpt.get("epoch", -1)),
        global_step=int(ckpt.get("global_step", -1)),
    )


def canonical_key_map(model: torch.nn.Module) -> dict[str, str]:
    """``{state-dict key: canonical key}`` of ``model``: keys are renamed where a submodule says how.

    A submodule with ``canonical_state_dict_prefixes() -> {local prefix: canonical prefix}`` (e.g. the sparse
    decoder, whose ``layers.<i>.`` index shifts when an op is inserted: its canonical names count each op's
    occurrences, ``self_attn[2].``) gets its keys renamed; every other key is its own canonical key.
    """
    renames: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        fn = getattr(module, "canonical_state_dict_prefixes", None)
        if fn is None:
            continue
        base = f"{name}." if name else ""
        renames += [(base + local, base + canon) for local, canon in fn().items()]
    renames.sort(key=lambda r: -len(r[0]))  # the longest (innermost) prefix wins
    out = {}
    for key in model.state_dict():
        out[key] = next((canon + key[len(local) :] for local, canon in renames if key.startswith(local)), key)
    return out


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did: keys (the target model's) loaded, and those left at their initialisation."""

    path: str
    loaded: list[str]
    not_in_checkpoint: list[str]
    unused_from_checkpoint: list[str]

    def summary(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        s = f"initialised {len(self.loaded)} tensors from {self.path}"
        if self.not_in_checkpoint:
            s += f"; {len(self.not_in_checkpoint)} not in it keep their initialisation: {show(self.not_in_checkpoint)}"
        if self.unused_from_checkpoint:
            s += f"; {len(self.unused_from_checkpoint)} of its tensors unused: {show(self.unused_from_checkpoint)}"
        return s


def init_from_checkpoint(model: DetectionModule, path: str | Path) -> InitReport:
    """Load the weights of another run's checkpoint into ``model`` where they fit (its optimizer, schedule and step
    are not taken: this starts a new run; ``ckpt_path`` resumes one).

    Keys are matched by their canonical names (:func:`canonical_key_map`, on both sides, the checkpoint's model
    rebuilt from its stored config), so a temporal head whose layers hold an extra ``temp_attn`` op takes the
    single-frame head's k-th self-attention, norm, aggregation and refine op for its own k-th. Tensors only one
    side has are listed in the report (the new op keeps its initialisation). A shape mismatch, or no common
    tensor at all, raises :class:`CheckpointError` naming the keys: a partial, silently wrong start is worse than none.
    """
    path = Path(path)
    source_model = load_checkpoint(path).model  # rebuilt from its stored config, its weights checked and loaded
    source = source_model.state_dict()
    src_by_canon = {canon: key for key, canon in canonical_key_map(source_model).items()}
    target_map = canonical_key_map(model)
    target = model.state_dict()
    new_state, loaded, missing, shapes = {}, [], [], []
    for key, canon in target_map.items():
        src_key = src_by_canon.get(canon)
        if src_key is None:
            missing.append(key)
            continue
        if tuple(source[src_key].shape) != tuple(target[key].shape):
            shapes.append(f"{key} (checkpoint {src_key}): {tuple(source[src_key].shape)} vs {tuple(target[key].shape)}")
            continue
        new_state[key] = source[src_key]
        loaded.append(key)
    if shapes:
        raise CheckpointError(
            f"init_weights={path}: {len(shapes)} tensors differ in shape from the model's: "
            + "; ".join(shapes[:8])
            + (f"; ... ({len(shapes)} in all)" if len(shapes) > 8 else "")
        )
    if not loaded:
        raise CheckpointError(f"init_weights={path}: no tensor of the checkpoint fits the model (no common key)")
    model.load_state_dict(new_state, strict=False)
    used = {src_by_canon[target_map[k]] for k in loaded}
    return InitReport(str(path), loaded, missing, sorted(set(source) - used))
