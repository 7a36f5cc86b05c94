"""Lightning DDP on the CPU: three optimiser steps of two ``gloo`` processes, the camera student and the teacher.

One step proves nothing: DDP reports parameters that no loss reached only when the next step
starts ("Expected to have finished reduction in the prior iteration"), so each run takes three
steps, across an epoch boundary (``set_epoch``), without ``find_unused_parameters``. Each run is
``python -m trainer.train`` in a subprocess, as a user launches it, so a crash or a hang fails one
test. The checkpoint it writes must hold step 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bevdepth_train import train_overrides
from test_teacher import teacher_overrides

REPO = Path(__file__).resolve().parents[2]

#: 3 steps of batch 1 on each of 2 ranks: the tiny world's 4 training keyframes make 2 steps an epoch
DDP = [
    "++trainer.strategy=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_steps=3",
    "trainer.max_epochs=10",
    "+trainer.limit_val_batches=1",
    "+trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


def _train_ddp(overrides: list[str], run_dir: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(
        [sys.executable, "-m", "trainer.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
    assert p.returncode == 0, f"DDP training ended with {how}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    ckpts = sorted(run_dir.rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {run_dir}:\n{p.stderr[-3000:]}"
    return ckpts[0]


def test_ddp_two_cpu_processes_train_bevdepth_dino_for_three_steps(synth_tiny, synth_tiny_store, tmp_path):
    overrides = train_overrides("bevdepth_dino", synth_tiny, synth_tiny_store, tmp_path, *DDP)
    overrides = [o for o in overrides if not o.startswith("data.batch_size")] + ["data.batch_size=1"]
    ckpt = _train_ddp(overrides, tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert any(k.startswith("detector.distill.") for k in state["state_dict"])  # the projection was trained


def test_ddp_two_cpu_processes_train_the_teacher_for_three_steps(synth_tiny, tmp_path):
    overrides = [o for o in teacher_overrides(synth_tiny, tmp_path, *DDP) if not o.startswith("data.batch_size")]
    ckpt = _train_ddp([*overrides, "data.batch_size=1", "callbacks.progress_bar=null"], tmp_path)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3


@pytest.mark.parametrize("distill_weight", [0.0, 7.0])
def test_every_parameter_of_the_camera_student_gets_a_gradient(distill_weight, compose_train, synth_tiny, tmp_path):
    """What DDP refuses, checked in-process: a trainable parameter that the loss does not reach (an FPN level
    nobody reads, a distillation projection of weight 0)."""
    from hydra.utils import instantiate

    cfg = compose_train(
        train_overrides("bevdepth_dino", synth_tiny, tmp_path / "store.zarr", tmp_path)
        + [f"model.loss.distill_weight={distill_weight}"]
    )
    module = instantiate(cfg.model)
    assert (module.detector.distill is None) == (distill_weight == 0)
    B, N, H, W = 1, 6, 64, 176
    K = torch.tensor([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]]).expand(B, N, 3, 3)
    cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
    batch = {
        "images": torch.randint(0, 256, (B, N, 3, H, W), dtype=torch.uint8),
        "K": K,
        "ego_from_cam": cam.expand(B, N, 4, 4),
        "gt_boxes": [torch.tensor([[5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]])],
        "gt_labels": [torch.tensor([0])],
        "depth_map": torch.full((B, N, H // 16, W // 16), 10.0),
    }
    if distill_weight:
        gh, gw = module.detector.grid.shape
        batch["dino_feat"] = torch.randn(B, 32, gh, gw)
        batch["dino_count"] = (torch.rand(B, gh, gw) > 0.5).int()
    module.compute_loss(module(batch), batch)["loss"].backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters no loss reaches (DDP fails on them): {unused}"
