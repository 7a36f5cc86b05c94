"""Every shipped experiment takes a training step and decodes under CPU bf16 autocast (a GPU's mixed precision).

No line of the trainer had run under mixed precision: the LiDAR teacher crashed in its pillar encoder, and GT
boxes were rounded to bf16 in the sparse head's loss. Here each experiment of ``conf/experiment/`` (the AV2
world's in tests/integration/test_av2_train.py) is built with the tests' tiny models on the tiny synthetic
world, takes optimiser steps (two for the temporal ones, so the bank carries) and decodes, all inside
``torch.autocast("cpu", dtype=torch.bfloat16)``: the losses must be finite float32 and the decoded boxes
float32. One subprocess runs them all, as tests/unit/test_pointwise.py does, so a crash inside oneDNN's bf16
kernels fails this test instead of killing the suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_bevdepth_train import train_overrides as bevdepth_overrides
from test_dvd_temporal import TEMPORAL  # tests/integration/
from test_dvd_train import TINY_PROPOSALS
from test_dvd_train import train_overrides as dvd_overrides
from test_teacher import teacher_overrides
from test_tig_train import overrides as tig_overrides
from test_tig_train import teacher_store  # noqa: F401  (a fixture: the tiny store with random teacher maps)

pytest.importorskip("open3d")

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

STEPS = r"""
import json, sys, time
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import trainer  # noqa: F401  (the config resolvers: ${len:}, ${mul:})

torch.set_num_threads(1)  # the suite runs two workers on two cores
for name, overrides, steps in json.loads(sys.argv[2]):
    t0 = time.perf_counter()
    with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    model, dm = instantiate(cfg.model), instantiate(cfg.data)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(steps):
        batch = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model.compute_loss(model(batch), batch)
        loss = losses["loss"]
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (name, loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    getattr(model, "reset_state", lambda: None)()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dets = model.decode(model(batch), batch)
    assert len(dets) == len(batch["sample_token"])
    for d in dets:
        assert d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32, (name, d["boxes"].dtype)
        assert torch.isfinite(d["boxes"][:, :7]).all() and len(d["boxes"]) == len(d["labels"]), name
    print(f"BF16 OK {name} {time.perf_counter() - t0:.1f}s", flush=True)
"""


def run_bf16_steps(runs: dict[str, tuple[list[str], int]]) -> None:
    """Run ``{name: (train overrides, steps)}`` under CPU bf16 autocast in one subprocess; assert each finished."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    payload = json.dumps([[name, overrides, steps] for name, (overrides, steps) in runs.items()])
    p = subprocess.run(
        [sys.executable, "-c", STEPS, str(CONF), payload],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
    done = re.findall(r"^BF16 OK (\S+)", p.stdout, re.M)
    assert p.returncode == 0, f"bf16 steps ended with {how} after {done}:\n{p.stdout[-2000:]}\n{p.stderr[-5000:]}"
    assert sorted(done) == sorted(runs), f"experiments that did not finish: {sorted(set(runs) - set(done))}"


def batch_one(overrides: list[str]) -> list[str]:
    """Batch 1 keeps the steps short (the camera experiments are the tests' tiny models already)."""
    return [o for o in overrides if not o.startswith("data.batch_size=")] + ["data.batch_size=1"]


def test_every_experiment_steps_and_decodes_under_bf16_autocast(
    synth_tiny,
    synth_tiny_store,
    teacher_store,  # noqa: F811  (test_tig_train's fixture)
    tmp_path,
):
    shipped = {p.stem for p in CONF.glob("experiment/*.yaml")}
    runs: dict[str, tuple[list[str], int]] = {}
    for exp in ("teacher_centerpoint", "teacher_centerpoint_cpu"):  # the _cpu one shrunk to the same tiny widths
        over = teacher_overrides(synth_tiny, tmp_path, "callbacks.progress_bar=null")
        runs[exp] = ([f"experiment={exp}" if o.startswith("experiment=") else o for o in over], 1)
    for exp in ("bevdepth", "bevdepth_dino", "bevdepth4d", "bevdepth4d_pre"):
        runs[exp] = (bevdepth_overrides(exp, synth_tiny, synth_tiny_store, tmp_path), 1)
    runs["bevdepth_oracle_input"] = (
        bevdepth_overrides(
            "bevdepth_oracle_input", synth_tiny, synth_tiny_store, tmp_path, "model.detector.map_input.map_channels=32"
        ),
        1,
    )
    for exp in ("bevdepth_tig", "bevdepth_tig_depth", "bevdepth_tig_bev", "dvd_tig"):
        runs[exp] = (tig_overrides(exp, synth_tiny, teacher_store, tmp_path), 1)
    for exp in sorted(e for e in shipped - set(runs) if e.startswith("dvd")):
        # the single-frame config whose tiny-model overrides fit (its aggregations, its distillation channels)
        base = "dvd_dino" if exp.startswith("dvd_dino") else exp if exp in ("dvd", "dvd_pv", "dvd_bev") else "dvd"
        extra = (TINY_PROPOSALS if "proposals" in exp else []) + (TEMPORAL if exp.endswith("temporal") else [])
        over = dvd_overrides(base, synth_tiny, synth_tiny_store, tmp_path, *extra)
        runs[exp] = (
            [f"experiment={exp}" if o.startswith("experiment=") else o for o in over],
            2 if exp.endswith("temporal") else 1,
        )
    assert set(runs) == shipped, f"experiments without a bf16 step: {sorted(shipped - set(runs))}"
    run_bf16_steps({name: (batch_one(over), steps) for name, (over, steps) in runs.items()})
