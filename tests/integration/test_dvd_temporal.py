"""The temporal DualViewDistill (experiment=dvd_temporal) on the tiny synthetic world: streamed scenes with the
augmentation held per stream, instances carried between batches by scene, a fast_dev_run, and an evaluation that
tracks with the bank's own ids.

Shares test_dvd_train.py's tiny model and conftest's ``synth_tiny_store``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_dvd_train import train_overrides  # tests/integration/test_dvd_train.py

TEMPORAL = ["model.detector.bank.num_temp_instances=16"]  # of the tiny head's 32 queries
#: an untrained model's queries are all below Sparse4D's 0.2: give every one an id to see them flow through
ALL_IDS = ["model.detector.bank.new_id_threshold=0.0"]


def _stream_datamodule(synth_tiny, synth_tiny_store, **kw):
    """A streaming camera data module on the tiny world, image and BEV augmentation on, batch 1."""
    from trainer.data.camera import CameraDataModule

    ds_cfg = {"name": "synthetic", "root": str(synth_tiny), "version": "v1.0-mini"}
    ds_cfg["adapter"] = {
        "_target_": "bevlabels.datasets.nuscenes.NuScenesDataset",
        "root": str(synth_tiny),
        "version": "v1.0-mini",
    }
    dm = CameraDataModule(
        dataset=ds_cfg,
        grid={"xbound": [-32.0, 32.0, 1.0], "ybound": [-32.0, 32.0, 1.0], "zbound": [-5.0, 3.0, 8.0]},
        class_names=["car", "pedestrian"],
        label_store=str(synth_tiny_store),
        image_aug={"final_hw": [64, 176], "resize_range": [0.9, 1.2], "flip_prob": 0.5},
        bev_aug={"rot_range": [-0.5, 0.5], "scale_range": [0.9, 1.1], "flip_x_prob": 0.5, "flip_y_prob": 0.5},
        sequential_scenes=True,
        batch_size=1,
        num_workers=0,
        **kw,
    )
    dm.setup("fit")
    return dm


def test_stream_seeds_hold_the_augmentation_per_scene(synth_tiny, synth_tiny_store):
    dm = _stream_datamodule(synth_tiny, synth_tiny_store)
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    frames = dm.frames("train")
    firsts = []
    for epoch in (3, 4):
        sampler.set_epoch(epoch)
        seen: dict[str, list] = {}
        for batch in loader:
            (scene,) = batch["scene"]
            seen.setdefault(scene, []).append((int(batch["timestamp"][0]), batch["aug_from_ego"][0], batch["K"][0, 0]))
        assert sorted(seen) == sorted({f.scene for f in frames})  # every scene once, whole
        for scene, rows in seen.items():
            assert [r[0] for r in rows] == sorted(f.timestamp for f in frames if f.scene == scene)  # in time order
            assert len(rows) > 1
            for _, aug, K in rows[1:]:  # one draw per stream, held
                torch.testing.assert_close(aug, rows[0][1])
                torch.testing.assert_close(K, rows[0][2])
        firsts.append(next(iter(seen.values()))[0][1])
    assert not torch.allclose(firsts[0], firsts[1]), "the same stream drew the same augmentation in two epochs"
    # and the draw is the stream seed's: the dataset repeats it from (index, seed)
    data = loader.dataset
    i = 0
    seed = sampler.stream_seed(i)
    torch.testing.assert_close(data[(i, seed)]["aug_from_ego"], data[(i, seed)]["aug_from_ego"])

    # stream_image_aug=per_keyframe: the BEV draw stays held, the image draw is fresh per keyframe
    dm2 = _stream_datamodule(synth_tiny, synth_tiny_store, stream_image_aug="per_keyframe")
    rows = []
    for batch in dm2.train_dataloader():
        rows.append((batch["scene"][0], batch["aug_from_ego"][0], batch["K"][0, 0]))
    first_scene = [r for r in rows if r[0] == rows[0][0]]
    for _, aug, _ in first_scene[1:]:
        torch.testing.assert_close(aug, first_scene[0][1])
    assert any(not torch.allclose(K, first_scene[0][2]) for _, _, K in first_scene[1:])


def test_the_bank_carries_instances_from_batch_to_batch_by_scene(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, tmp_path, *TEMPORAL))
    model = instantiate(cfg.model)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    bank = model.detector.bank
    assert bank is not None and dm.sequential_scenes
    model.train()
    it = iter(dm.train_dataloader())
    keys_before = set()
    for step in range(3):
        batch = next(it)
        carried_now = set(batch["scene"]) & keys_before
        losses = model.compute_loss(model(batch), batch)
        assert torch.isfinite(losses["loss"])
        losses["loss"].backward()
        if step > 0:
            assert carried_now, "consecutive batches of a stream share their scene"
        keys_before = set(bank.streams)
        assert keys_before == set(batch["scene"])
        assert all(s.feature.shape == (16, model.detector.head.embed_dims) for s in bank.streams.values())
        assert not any(s.feature.requires_grad for s in bank.streams.values())


def test_fast_dev_run(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.train import train

    result = train(
        compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, tmp_path, "debug=fdr", *TEMPORAL))
    )
    assert result["global_step"] == 1 and np.isfinite(result["metrics"]["train/loss"])


def test_evaluation_tracks_with_the_banks_ids(compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from trainer.evaluate import evaluate, predict
    from trainer.lit_base import load_checkpoint
    from trainer.train import train

    extra = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        *TEMPORAL,
        *ALL_IDS,
    ]
    result = train(
        compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, tmp_path / "run", *extra))
    )
    ckpt = Path(result["last_ckpt"])
    loaded = load_checkpoint(ckpt)
    assert loaded.model.detector.bank is not None
    from trainer.evaluate import build_datamodule

    dm = build_datamodule(loaded.config, num_workers=0)
    dm.setup("predict")
    preds = predict(loaded.model, dm, "val")
    assert all("track_ids" in p for p in preds) and len(preds) == len(dm.frames("val"))
    ids = [int(i) for p in preds for i in p["track_ids"].tolist() if i >= 0]
    assert len(ids) > 0
    # a carried query keeps its id: some id appears in more than one keyframe of the val scene
    per_frame = [set(int(i) for i in p["track_ids"].tolist() if i >= 0) for p in preds]
    assert any(per_frame[k] & per_frame[k + 1] for k in range(len(per_frame) - 1))
    summary = evaluate(ckpt, out=tmp_path / "eval", num_workers=0)
    assert "tracking" in summary and summary["tracking"]["amota"] is not None
    assert (tmp_path / "eval" / "tracking" / "metrics_summary.json").is_file()


@pytest.mark.parametrize("experiment", ["dvd_temporal", "dvd_dino_temporal", "dvd_proposals_temporal"])
def test_temporal_configs_build_unshrunk(experiment, compose_train, synth_tiny, synth_tiny_store, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(train_overrides(experiment, synth_tiny, synth_tiny_store, tmp_path, tiny=False))
    model = instantiate(cfg.model)
    det = model.detector
    assert det.bank.num_temp_instances == det.head.num_temp_instances == 600 and det.head.num_anchors == 900
    assert "temp_attn" in det.head.decoder.operation_order
    assert instantiate(cfg.data).sequential_scenes
    # dense proposals fill new queries only: 200 of the 900 - 600 the bank leaves
    assert (det.proposals is not None) == ("proposals" in experiment)
    if det.proposals is not None:
        assert det.proposals.num_proposals == 200
