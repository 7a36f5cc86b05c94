"""The Sparse4D-style query head of DualViewDistill (DESIGN.md, "The camera models"), one job per module:

- ``anchors``: the query state's columns, box <-> anchor conversion, k-means initial anchors;
- ``keypoints``, ``aggregation``: deformable aggregation over the BEV map and the cameras' feature pyramids;
- ``layers``: the decoder's ops; ``decoder``: the decoder, its order of ops as data;
- ``denoising``: the training-time denoising queries; ``head``: the head (learned queries + decoder);
- ``decoding``: detections of the head's output (circle NMS: ``trainer.models.components.nms``);
- ``instance_bank``: the temporal instance bank; ``proposals``: dense proposals from a CenterHead;
- ``matching``: the Hungarian matching of the losses (``trainer.models.losses``).
"""
