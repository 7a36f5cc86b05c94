"""DDP validation with a rank whose shard holds no foreground pixel and no occupied cell must not hang.

``self.log(..., sync_dist=True)`` all-reduces key by key, so every rank must log the same keys in the same
order. :class:`~trainer.lit_bevdepth.BEVDepthModule` logged its depth and distillation metrics only on
ranks whose shard had pixels or cells; the other rank went on and the two waited on different collectives.

Two ``gloo`` processes (Lightning's ``ddp_spawn``: ``torch.multiprocessing`` spawn, CPU) validate the tests'
tiny camera student on one synthetic batch each: rank 0's has a box, foreground LiDAR pixels and occupied
DINOv2 cells, rank 1's has none of them. The run is a subprocess in its own session with a timeout, so a
hang fails this test (its process group killed) instead of hanging the suite. Both ranks must finish and
hold the same logged metrics, those of the whole validation set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import TINY_CAMERA_MODEL  # tests/conftest.py

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    import trainer  # noqa: F401  (the config resolvers: ${len:}, ${mul:})

    CONF, OUT, OVERRIDES = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    B, N, H, W = 1, 6, 64, 176


    def sample(full: bool, grid_shape):
        K = torch.tensor([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]]).expand(B, N, 3, 3)
        cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
        gh, gw = grid_shape
        g = torch.Generator().manual_seed(int(full))
        count = torch.zeros(B, gh, gw, dtype=torch.int32)
        if full:
            count[:, : gh // 2] = 1  # object (around the box) and background cells
        px = torch.tensor([[0, 88.0, 40.0, 5.0, 0], [0, 90.0, 41.0, 5.2, 0]]) if full else torch.zeros(0, 5)
        return {
            "sample_token": [f"tok{int(full)}"],
            "images": torch.randint(0, 256, (B, N, 3, H, W), dtype=torch.uint8, generator=g),
            "K": K,
            "ego_from_cam": cam.expand(B, N, 4, 4),
            "gt_boxes": [torch.tensor([[5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]]) if full else torch.zeros(0, 9)],
            "gt_labels": [torch.tensor([0]) if full else torch.zeros(0, dtype=torch.long)],
            "depth_map": torch.full((B, N, H // 16, W // 16), 10.0),
            "dino_feat": torch.randn(B, 32, gh, gw, generator=g),
            "dino_count": count,
            "fg_px": [px],
        }


    def first(items):
        return items[0]


    class WriteMetrics(pl.Callback):
        # each rank writes what it logged (the parent of ddp_spawn sees rank 0's alone)

        def on_validation_end(self, trainer, pl_module):
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            with open(f"{OUT}/rank{trainer.global_rank}.json", "w") as f:
                json.dump(metrics, f)


    def main():
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="train", overrides=OVERRIDES)
        model = instantiate(cfg.model)
        data = [sample(True, model.detector.grid.shape), sample(False, model.detector.grid.shape)]
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[WriteMetrics()],
        )
        # the distributed sampler gives rank r the sample r: rank 1 gets the empty one
        trainer.validate(model, dataloaders=DataLoader(data, batch_size=1, collate_fn=first))


    if __name__ == "__main__":
        main()
    """
)


def test_ddp_validation_logs_on_a_rank_with_no_pixels_or_cells(tmp_path):
    script = tmp_path / "ddp_validate.py"
    script.write_text(SCRIPT)
    overrides = [
        "experiment=bevdepth_dino",
        "dataset.root=/nowhere",
        "grid=near",
        f"run_dir={tmp_path}",
        *TINY_CAMERA_MODEL,
        "model.detector.distill_channels=32",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.Popen(
        [sys.executable, str(script), str(REPO / "conf"), str(tmp_path), json.dumps(overrides)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a hang is killed whole, spawned ranks included
    )
    try:
        out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError(f"DDP validation hung (killed after 240 s):\n{out[-4000:]}") from None
    assert p.returncode == 0, f"DDP validation failed ({p.returncode}):\n{out[-4000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    keys = ("val/loss", "val/fg_abs_rel", "val/fg_rmse", "val/distill_cos_object", "val/distill_cos_background")
    for r, metrics in enumerate(ranks):
        missing = [k for k in keys if k not in metrics]
        assert not missing, f"rank {r} lacks {missing}: {sorted(metrics)}"
    for k in keys:  # every rank holds the whole set's value
        assert ranks[0][k] == ranks[1][k], (k, ranks[0][k], ranks[1][k])
