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
from conftest import nuscenes_dataset  # tests/conftest.py
from test_dvd_train import train_overrides  # tests/integration/test_dvd_train.py

TEMPORAL = ["model.detector.bank.num_temp_instances=16"]  # of the tiny head's 32 queries
#: an untrained model's queries are all below Sparse4D's 0.2: give every one an id to see them flow through
ALL_IDS = ["model.detector.bank.new_id_threshold=0.0"]


def _stream_datamodule(synth_tiny, synth_tiny_store, **kw):
    """A streaming camera data module on the tiny world, image and BEV augmentation on, batch 1."""
    from trainer.data.camera import CameraDataModule

    ds_cfg = nuscenes_dataset(synth_tiny)
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
    from trainer.eval.predict import predict
    from trainer.evaluate import evaluate
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
    from trainer.eval.predict import build_datamodule

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


def _fake_checkpoint(cfg, model, path: Path) -> Path:
    """What trainer.train would write, for the parts init_weights reads: the state dict and the resolved config."""
    from trainer.lit_base import CONFIG_KEY
    from trainer.train import resolved

    torch.save({"state_dict": model.state_dict(), CONFIG_KEY: resolved(cfg)}, path)
    return path


def test_init_weights_maps_a_single_frame_head_onto_the_temporal_one_op_by_op(
    compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    """A temporal decoder has a temp_attn op before the self-attention of every later layer, so its layer indices
    shift: the weights must go to the k-th op of the same kind, not to the same index."""
    from hydra.utils import instantiate

    from trainer.lit_base import CheckpointError, init_from_checkpoint

    src_cfg = compose_train(train_overrides("dvd", synth_tiny, synth_tiny_store, tmp_path / "a"))
    src = instantiate(src_cfg.model)
    ckpt = _fake_checkpoint(src_cfg, src, tmp_path / "single.ckpt")
    cfg = compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, tmp_path / "b", *TEMPORAL))
    model = instantiate(cfg.model)

    src_dec, dec = src.detector.head.decoder, model.detector.head.decoder
    src_ops, ops = list(src_dec.operation_order), list(dec.operation_order)
    assert "temp_attn" in ops and "temp_attn" not in src_ops
    assert [o for o in ops if o != "temp_attn"] == src_ops
    shifted = [i for i in range(len(src_ops)) if ops[i] != src_ops[i]]
    assert shifted, "the orders must differ by index, else this test shows nothing"

    def nth(order, op, k):
        return [i for i, o in enumerate(order) if o == op][k]

    k = src_ops.count("self_attn") - 1  # the last self-attention: after a temp_attn, so at another index
    i_src, i_tgt = nth(src_ops, "self_attn", k), nth(ops, "self_attn", k)
    assert i_src != i_tgt
    before = dec.layers[i_tgt].q_proj.weight.detach().clone()
    assert not torch.equal(before, src_dec.layers[i_src].q_proj.weight)

    report = init_from_checkpoint(model, ckpt)
    torch.testing.assert_close(dec.layers[i_tgt].q_proj.weight, src_dec.layers[i_src].q_proj.weight, rtol=0, atol=0)
    for op in ("refine", "bev_agg", "pv_agg", "norm"):
        for j in range(src_ops.count(op)):
            a = dict(src_dec.layers[nth(src_ops, op, j)].state_dict())
            b = dict(dec.layers[nth(ops, op, j)].state_dict())
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), (op, j)
    # the camera network too, and the temporal attention keeps its initialisation
    for (n, p), (n2, p2) in zip(
        src.detector.camera_bev.named_parameters(), model.detector.camera_bev.named_parameters()
    ):
        assert n == n2 and torch.equal(p, p2), n
    temp = [i for i, o in enumerate(ops) if o == "temp_attn"]
    assert report.not_in_checkpoint and all(
        any(k.startswith(f"detector.head.decoder.layers.{i}.") for i in temp) for k in report.not_in_checkpoint
    ), report.not_in_checkpoint
    assert not report.unused_from_checkpoint
    assert len(report.loaded) + len(report.not_in_checkpoint) == len(model.state_dict())

    # a shape that differs is refused, naming the tensor
    cfg2 = compose_train(
        train_overrides("dvd", synth_tiny, synth_tiny_store, tmp_path / "c", "model.detector.head.num_anchors=24")
    )
    with pytest.raises(CheckpointError, match=r"detector\.head\.anchor"):
        init_from_checkpoint(instantiate(cfg2.model), ckpt)


def test_train_starts_from_init_weights_and_refuses_it_with_ckpt_path(
    compose_train, synth_tiny, synth_tiny_store, tmp_path
):
    import json

    from hydra.utils import instantiate

    from trainer.train import train

    src_cfg = compose_train(train_overrides("dvd", synth_tiny, synth_tiny_store, tmp_path / "a"))
    ckpt = _fake_checkpoint(src_cfg, instantiate(src_cfg.model), tmp_path / "single.ckpt")
    both = [f"init_weights={ckpt}", f"ckpt_path={ckpt}"]
    cfg = compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, tmp_path / "b", *TEMPORAL, *both))
    with pytest.raises(ValueError, match="init_weights=.*ckpt_path="):
        train(cfg)
    run_dir = tmp_path / "c"
    extra = ["debug=fdr", f"init_weights={ckpt}", *TEMPORAL]
    result = train(compose_train(train_overrides("dvd_temporal", synth_tiny, synth_tiny_store, run_dir, *extra)))
    assert result["global_step"] == 1
    report = json.loads((run_dir / "init_weights.json").read_text())
    assert report["path"] == str(ckpt) and len(report["loaded"]) > 100 and report["not_in_checkpoint"]
