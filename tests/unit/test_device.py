"""trainer=auto and evaluate device=auto (trainer/device.py): the GPU when there is one, in bf16 where it computes it.

No GPU is needed: ``torch.cuda.is_available`` and ``torch.cuda.is_bf16_supported`` are monkeypatched, and the
composed config's resolvers read them when the keys are accessed.
"""

from __future__ import annotations

import pytest
import torch

from trainer import device as dev


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def gpu(monkeypatch):
    """A GPU with native bf16 (an A100 / H100); ``gpu.bf16 = False`` makes it an older card."""

    class Card:
        bf16 = True

    card = Card()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: card.bf16)
    return card


def _trainer_cfg(compose_train, tmp_path, *overrides):
    return compose_train([f"run_dir={tmp_path}", *overrides]).trainer


def test_auto_without_a_gpu_is_the_cpu_in_fp32(no_gpu, compose_train, tmp_path):
    assert dev.auto_accelerator() == "cpu" and dev.auto_precision() == "32-true"
    cfg = _trainer_cfg(compose_train, tmp_path)  # conf/train.yaml's default trainer: auto
    assert (cfg.accelerator, cfg.precision) == ("cpu", "32-true")
    assert dev.resolve_eval_device("auto") == ("cpu", "32-true")


def test_auto_with_a_bf16_gpu_is_the_gpu_in_bf16_mixed(gpu, compose_train, tmp_path):
    assert dev.auto_accelerator() == "gpu" and dev.auto_precision() == "bf16-mixed"
    cfg = _trainer_cfg(compose_train, tmp_path)
    assert (cfg.accelerator, cfg.precision) == ("gpu", "bf16-mixed")
    assert _trainer_cfg(compose_train, tmp_path, "trainer=gpu").precision == "bf16-mixed"  # not 16-mixed
    assert dev.resolve_eval_device("auto") == ("gpu", "bf16-mixed")
    assert dev.resolve_eval_device("cuda", "32-true") == ("cuda", "32-true")  # an explicit precision wins


def test_an_older_gpu_gets_fp16_mixed(gpu, compose_train, tmp_path):
    gpu.bf16 = False
    assert _trainer_cfg(compose_train, tmp_path).precision == "16-mixed"
    assert _trainer_cfg(compose_train, tmp_path, "trainer=gpu").precision == "16-mixed"


def test_overrides_win_over_auto(gpu, compose_train, tmp_path):
    cfg = _trainer_cfg(compose_train, tmp_path, "trainer.accelerator=cpu")  # e.g. the DDP-on-CPU tests
    assert (cfg.accelerator, cfg.precision) == ("cpu", "32-true")
    cfg = _trainer_cfg(compose_train, tmp_path, "trainer.precision=32-true")
    assert (cfg.accelerator, cfg.precision) == ("gpu", "32-true")
    cfg = _trainer_cfg(compose_train, tmp_path, "debug=default")  # the debug modes pin one CPU process
    assert (cfg.accelerator, cfg.precision) == ("cpu", "32-true")


def test_checkpoint_config_records_the_resolved_values(gpu, compose_train, tmp_path):
    from trainer.train import resolved

    config = resolved(compose_train([f"run_dir={tmp_path}"]))
    assert config["trainer"]["accelerator"] == "gpu" and config["trainer"]["precision"] == "bf16-mixed"


def test_the_printout_names_the_device_and_precision(no_gpu, compose_train, tmp_path):
    from hydra.utils import instantiate

    trainer = instantiate(_trainer_cfg(compose_train, tmp_path), logger=False, enable_checkpointing=False)
    assert dev.describe_run(trainer) == "device cpu, 1 process, precision 32-true"


def test_a_bad_evaluate_device_names_the_key():
    with pytest.raises(ValueError, match=r"device \(conf/evaluate.yaml\)"):
        dev.resolve_eval_device("tpu")


def test_evaluate_fails_on_a_bad_device_before_loading(tmp_path):
    from trainer.evaluate import evaluate

    with pytest.raises(ValueError, match="device"):
        evaluate(tmp_path / "missing.ckpt", device="tpu")
