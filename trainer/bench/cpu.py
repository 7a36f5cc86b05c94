"""The CPU bench model: Hydra overrides that shrink the shipped camera detectors to a CPU benchmark's size.

The counterpart of :mod:`trainer.tiny` (seconds per step, for the smoke run and the tests) at the size the CPU
benchmarks train for an hour: ``scripts/bench_train.py --model cpu`` (the default), ``scripts/ablate.py``,
:mod:`trainer.bench.step` and ``scripts/overfit_one_scene.sh``. ResNet-18 at half width on 128x352 images,
one-metre depth bins over the grid's reach (:data:`CPU_DEPTH`), a half-width BEV encoder with a 1x1 fusion, a
quarter-width CenterHead whose maps are one conv each off the shared conv, a 300-anchor 4-layer sparse head.

These lists are part of every CPU run's ledger key (:meth:`trainer.bench.ledger.Ledger.key`): the
``results/ledgers/*.jsonl`` ledgers hold finished runs keyed by them, so a change here means retraining those runs
(``tests/unit/test_bench_ledger.py`` holds keys to ledger rows).
"""

from __future__ import annotations

#: the shrunk camera network of CPU benchmarks and the demo (overrides of conf/model/camera_bev/default.yaml),
#: the same for every camera detector
CPU_CAMERA = [
    "data.image_aug.final_hw=[128,352]",
    "model.detector.camera_bev.backbone.hidden_sizes=[32,64,128,256]",
    "model.detector.camera_bev.backbone.embedding_size=32",
    "model.detector.camera_bev.neck.in_channels=[128,256]",
    "model.detector.camera_bev.neck.out_channels=64",
    "model.detector.camera_bev.depth_net.mid_channels=64",
    "model.detector.camera_bev.depth_net.context_channels=32",
    "model.detector.camera_bev.bev_encoder.channels=[32,64,128]",
    "model.detector.camera_bev.bev_encoder.out_channels=64",
    "model.detector.camera_bev.bev_encoder.fuse_kernel=1",  # a 3x3 fusion at full BEV size was a sixth of the step
]
#: the shrunk heads: BEVDepth's CenterHead (conf/model/bevdepth.yaml) and DualViewDistill's sparse head
#: (conf/model/dualviewdistill.yaml; embed_dims follows the camera network's 64 channels)
CPU_HEAD = {
    "bevdepth": [
        "model.detector.head.share_conv_channels=32",
        "model.detector.head.head_channels=16",
        "model.detector.head.num_head_convs=1",  # 36 hidden convs (6 tasks x 6 maps) at full BEV size: over a quarter
    ],
    "dvd": [
        # The small world has 42 boxes with LiDAR points in the grid a keyframe (max 63; counted with the devkit,
        # 2026-12-02), so 7 anchors a box where Sparse4D has about 20 (900 anchors); 900 here costs ~1.6x per step
        # (scripts/profile_step.py), and denoising covers the first max_dn_gt=32 boxes of a keyframe only.
        "model.detector.head.num_anchors=300",
        "model.detector.head.operation_order.num_layers=4",  # Sparse4Dv3: 6
        "model.detector.head.num_dn_groups=2",
    ],
}
#: the CenterHead models (experiment=bevdepth*), all others the sparse-head ones (experiment=dvd*)
CPU_MODEL = CPU_CAMERA + CPU_HEAD["bevdepth"]


def cpu_model(experiment: str) -> list[str]:
    """The CPU model's overrides for an experiment: the shared camera network and its head family's."""
    out = CPU_CAMERA + CPU_HEAD["dvd" if experiment.startswith("dvd") else "bevdepth"]
    if "temporal" in experiment:  # two thirds of the queries carried, as Sparse4Dv3's 600 of 900
        out = out + ["model.detector.bank.num_temp_instances=200"]
    if "proposals" in experiment:  # the dense proposals' CenterHead shrunk as BEVDepth's; 100 of the 300 queries
        out = out + [o.replace(".head.", ".proposals.head.") for o in CPU_HEAD["bevdepth"]]
        out = out + ["model.detector.proposals.num_proposals=100"]
    return out


#: one-metre depth bins over each grid's reach (BEVDepth's 2-58 m for the default 51.2 m grid)
CPU_DEPTH = {
    "default": [
        "model.detector.camera_bev.lift_splat.dbound=[2.0,58.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=56",
    ],
    "av2": [  # conf/grid/av2.yaml: the default grid's extent
        "model.detector.camera_bev.lift_splat.dbound=[2.0,58.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=56",
    ],
    "near": [
        "model.detector.camera_bev.lift_splat.dbound=[1.0,45.0,1.0]",
        "model.detector.camera_bev.depth_net.depth_bins=44",
    ],
}
