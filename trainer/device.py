"""Which device and precision a run uses when its config says ``auto`` (Hydra configs cannot run code).

``conf/trainer/auto.yaml`` (the default of ``conf/train.yaml``) asks two OmegaConf resolvers, registered
when :mod:`trainer` is imported:

- ``${auto_accelerator:}``: ``gpu`` when torch sees a CUDA device, else ``cpu`` (:func:`auto_accelerator`);
- ``${auto_precision:${.accelerator}}``: ``bf16-mixed`` on a CUDA GPU that computes bfloat16 natively
  (Ampere and later: A100, H100, ...), ``16-mixed`` (fp16 with a gradient scaler) on older GPUs,
  ``32-true`` on a CPU (:func:`auto_precision`). ``conf/trainer/gpu.yaml`` asks the same for ``gpu``.

An override of either key wins (``trainer.accelerator=cpu`` gives ``32-true``; ``trainer.precision=32-true``
keeps fp32 on a GPU), and the resolved values are what a checkpoint's stored config records.
``python -m trainer.evaluate device=auto [precision=auto]`` resolves the same way
(:func:`resolve_eval_device`). Train and evaluate print which device and precision ran (:func:`describe_run`).

Nothing here creates a CUDA context on a machine without a GPU; on a GPU machine
:func:`bf16_supported` asks the driver for the card's capability, which Lightning would do anyway.
"""

from __future__ import annotations

import torch

#: what ``accelerator`` may say for a CUDA GPU (Lightning's names)
GPU_ACCELERATORS = ("gpu", "cuda")
#: the precision of each kind of device under ``auto``
CPU_PRECISION = "32-true"
BF16_PRECISION = "bf16-mixed"
FP16_PRECISION = "16-mixed"


def cuda_available() -> bool:
    """torch sees a CUDA device (a seam for tests, which monkeypatch ``torch.cuda.is_available``)."""
    return bool(torch.cuda.is_available())


def bf16_supported() -> bool:
    """The first CUDA device computes bfloat16 natively (compute capability 8.0+); emulated bf16 does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


def auto_accelerator() -> str:
    """``gpu`` when there is a CUDA device, else ``cpu`` (what ``${auto_accelerator:}`` gives)."""
    return "gpu" if cuda_available() else "cpu"


def auto_precision(accelerator: str = "auto") -> str:
    """The Lightning precision of a run on ``accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``).

    ``bf16-mixed`` on a GPU with native bfloat16, ``16-mixed`` on an older GPU, ``32-true`` on a CPU
    (and on ``gpu`` asked for where torch sees none: Lightning then refuses the accelerator itself).
    """
    accelerator = str(accelerator).lower()
    if accelerator == "auto":
        accelerator = auto_accelerator()
    if accelerator not in GPU_ACCELERATORS or not cuda_available():
        return CPU_PRECISION
    return BF16_PRECISION if bf16_supported() else FP16_PRECISION


def resolve_eval_device(device: str = "auto", precision: str | None = "auto") -> tuple[str, str]:
    """``(accelerator, precision)`` for ``trainer.evaluate``'s ``device`` and ``precision`` keys.

    ``device``: ``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu``, ``gpu`` or ``cuda``;
    ``precision``: ``auto``/None (:func:`auto_precision` of the device) or a Lightning precision
    (``32-true``, ``bf16-mixed``...). Raises ``ValueError`` naming the key for another device.
    """
    device = str(device).lower()
    if device not in ("auto", "cpu", *GPU_ACCELERATORS):
        raise ValueError(f"evaluate: device (conf/evaluate.yaml) must be auto, cpu, gpu or cuda; got {device!r}")
    accelerator = auto_accelerator() if device == "auto" else device
    if precision in (None, "auto"):
        precision = auto_precision(accelerator)
    return accelerator, str(precision)


def describe_run(trainer) -> str:
    """One line of a built ``pl.Trainer``: ``device cuda:0 (NVIDIA H100 80GB HBM3), 1 process, precision bf16-mixed``."""
    device = trainer.strategy.root_device
    name = ""
    if device.type == "cuda":
        try:
            name = f" ({torch.cuda.get_device_name(device)})"
        except Exception:  # the name is cosmetic
            name = ""
    world = int(getattr(trainer, "world_size", 1) or 1)
    processes = f"{world} processes ({type(trainer.strategy).__name__})" if world > 1 else "1 process"
    return f"device {device}{name}, {processes}, precision {trainer.precision}"


def register_resolvers() -> None:
    """Register ``auto_accelerator`` and ``auto_precision`` with OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("auto_accelerator", auto_accelerator, replace=True)
    OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)
