"""Tiny networks: Hydra overrides that shrink the shipped models to seconds per step on a CPU.

One home for the sizes the smoke run (``scripts/smoke.py``) and the tests use; each list is a set of overrides of
the experiment it names, so ``experiment=bevdepth`` plus :data:`TINY_CAMERA` and :data:`TINY_CENTER_HEAD` is a
BEVDepth of a few thousand parameters on 64x176 images.

The benchmarks' CPU-sized model (an hour of training on a CPU) is :mod:`trainer.bench.cpu`, in the same form.
"""

from __future__ import annotations

#: the camera student (CameraBEV) at a few thousand parameters on 64x176 images (camera experiments)
TINY_CAMERA = [
    "data.image_aug.final_hw=[64,176]",
    "model.detector.camera_bev.backbone.depths=[1,1,1,1]",
    "model.detector.camera_bev.backbone.hidden_sizes=[8,16,32,64]",
    "model.detector.camera_bev.backbone.embedding_size=8",
    "model.detector.camera_bev.neck.in_channels=[32,64]",
    "model.detector.camera_bev.neck.out_channels=16",
    "model.detector.camera_bev.depth_net.mid_channels=16",
    "model.detector.camera_bev.depth_net.context_channels=8",
    "model.detector.camera_bev.depth_net.num_res_blocks=1",
    "model.detector.camera_bev.depth_net.aspp=false",
    "model.detector.camera_bev.depth_net.depth_bins=16",
    "model.detector.camera_bev.lift_splat.dbound=[1.0,33.0,2.0]",
    "model.detector.camera_bev.bev_encoder.channels=[8,16]",
    "model.detector.camera_bev.bev_encoder.num_blocks=[1,1]",
    "model.detector.camera_bev.bev_encoder.strides=[1,2]",
    "model.detector.camera_bev.bev_encoder.out_channels=16",
]
#: BEVDepth's CenterHead, shrunk
TINY_CENTER_HEAD = ["model.detector.head.share_conv_channels=8", "model.detector.head.head_channels=8"]
#: DualViewDistill's sparse head, shrunk
TINY_SPARSE_HEAD = [
    "model.detector.head.num_anchors=32",
    "model.detector.head.num_heads=2",
    "model.detector.head.num_dn_groups=2",
    "model.detector.head.operation_order.num_layers=2",
    "model.detector.topk=50",
]
#: the LiDAR teacher (CenterPoint pillars), shrunk
TINY_TEACHER = [
    "model.detector.encoder.feat_channels=[8]",
    "model.detector.backbone.in_channels=8",
    "model.detector.backbone.layer_nums=[1,1]",
    "model.detector.backbone.layer_strides=[1,2]",
    "model.detector.backbone.layer_channels=[8,16]",
    "model.detector.backbone.upsample_strides=[1,2]",
    "model.detector.backbone.upsample_channels=[8,8]",
    "model.detector.head.in_channels=16",
    "model.detector.head.share_conv_channels=8",
    "model.detector.head.head_channels=8",
    "model.detector.head.num_head_convs=1",
    "model.detector.voxelizer.max_pillars=[6000,6000]",
    "data.n_sweeps=2",
]
