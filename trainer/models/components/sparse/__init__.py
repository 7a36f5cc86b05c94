"""The Sparse4D-style query head of DualViewDistill (DESIGN.md, "The camera models"): anchors, keypoints,
deformable aggregation over the BEV map and the cameras' feature pyramids, the decoder, matching and its losses."""
