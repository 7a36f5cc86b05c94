"""Models of the trainer: plain ``nn.Module`` s, each built by ``hydra.utils.instantiate`` from a ``_target_`` config.

``components/`` holds the parts (pillar voxeliser and encoder, BEV backbone, CenterHead, ...);
the modules beside it (``centerpoint.py``, ...) assemble them into whole models.
"""
