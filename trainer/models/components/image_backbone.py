"""The image backbone of the camera student: a ``transformers`` ResNet returning multi-scale feature maps.

BEVDepth and TiG-BEV use a ResNet (18/50/101) on every camera image. Here it is
``transformers.ResNetModel`` (no torchvision, no timm), randomly initialised from a
:class:`~transformers.ResNetConfig` built from the constructor's arguments, or loaded with
``ResNetModel.from_pretrained(pretrained_path)`` from a local directory (never from the network:
see the README's section on offline weights).

Images arrive as uint8 ``(B*N, 3, H, W)`` (or float in [0, 255]) and are normalised here with the
ImageNet mean and std the pretrained ResNets were trained with, so the data pipeline can keep
images as bytes (4x less to move between worker processes) and drawing code sees raw pixels.

Stages and strides: the stem (7x7 conv stride 2, 3x3 max-pool stride 2) brings the image to
stride 4; stage ``i`` (1-based, ``stage1 .. stage4``) has stride ``4 * 2**(i-1)`` with the
default ``downsample_in_first_stage=False``: 4, 8, 16, 32. ``out_stages`` picks the stages
returned, e.g. ``(2, 3, 4)`` for strides 8, 16, 32.

Shape letters: B batch, N cameras (the caller folds them into the batch), C channels, H/W image
height/width in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from trainer.models.components.pointwise import pointwise_as_gemm

#: ImageNet statistics in [0, 255] units (the pretrained ResNets' input normalisation)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ResNetBackbone(nn.Module):
    """Images ``(B*N, 3, H, W)`` to a list of feature maps ``(B*N, C_i, H / s_i, W / s_i)``, one per ``out_stages`` entry.

    Args:
        depths: residual blocks per stage (ResNet-18: 2, 2, 2, 2; ResNet-50: 3, 4, 6, 3).
        hidden_sizes: output channels per stage (ResNet-18: 64, 128, 256, 512; ResNet-50: 256 ... 2048).
        embedding_size: channels of the stem.
        layer_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+).
        out_stages: 1-based stages to return, ascending.
        pretrained_path: a local directory saved by ``save_pretrained`` (then the architecture
            arguments above are ignored and the directory's config is used), or ``None`` for random init.
        frozen_stages: freeze the stem and the first ``frozen_stages`` stages (0: train everything).

    Attributes:
        out_channels: channels of each returned map.
        out_strides: stride (pixels per map cell) of each returned map.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        hidden_sizes: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 64,
        layer_type: str = "basic",
        out_stages: Sequence[int] = (2, 3, 4),
        pretrained_path: str | None = None,
        frozen_stages: int = 0,
    ):
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        if pretrained_path:
            path = Path(pretrained_path)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"ResNet weights: {path} is not a directory saved with save_pretrained (no config.json). On a "
                    "connected machine: ResNetModel.from_pretrained('microsoft/resnet-50').save_pretrained(dir), copy "
                    "dir here and pass model.backbone.pretrained_path=dir; or leave it null for random init"
                )
            self.resnet = ResNetModel.from_pretrained(str(path))
        else:
            config = ResNetConfig(
                embedding_size=int(embedding_size),
                hidden_sizes=[int(c) for c in hidden_sizes],
                depths=[int(d) for d in depths],
                layer_type=str(layer_type),
            )
            self.resnet = ResNetModel(config)
        cfg = self.resnet.config
        n_stages = len(cfg.hidden_sizes)
        self.out_stages = tuple(int(s) for s in out_stages)
        if not self.out_stages or list(self.out_stages) != sorted(set(self.out_stages)):
            raise ValueError(f"out_stages must be ascending and unique; got {list(out_stages)}")
        if self.out_stages[0] < 1 or self.out_stages[-1] > n_stages:
            raise ValueError(f"out_stages {list(self.out_stages)} must lie in 1..{n_stages}")
        first_stride = 2 if cfg.downsample_in_first_stage else 1
        strides = [4 * first_stride * 2**i for i in range(n_stages)]  # stage i+1
        self.out_channels = [int(cfg.hidden_sizes[s - 1]) for s in self.out_stages]
        self.out_strides = [strides[s - 1] for s in self.out_stages]
        # The pooler (global average) is never used: drop it so its absence is explicit.
        self.resnet.pooler = nn.Identity()
        # Stages after the last returned one would be parameters no loss reaches (DDP refuses those): drop them.
        self.resnet.encoder.stages = self.resnet.encoder.stages[: self.out_stages[-1]]
        pointwise_as_gemm(self.resnet)  # its 1x1 shortcuts, off oneDNN's 1x1 kernels (components/pointwise.py)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frozen_stages = int(frozen_stages)
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages <= 0:
            return
        frozen = [self.resnet.embedder, *self.resnet.encoder.stages[: self.frozen_stages]]
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        self._freeze()  # frozen stages keep their BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[(B*N, C_i, H / s_i, W / s_i)]`` of images ``(B*N, 3, H, W)`` in [0, 255]."""
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be (B*N, 3, H, W); got {tuple(images.shape)}"
        x = (images.float() - self.mean) / self.std
        x = self.resnet.embedder(x)  # (B*N, C_stem, H/4, W/4)
        out = []
        for i, stage in enumerate(self.resnet.encoder.stages, start=1):
            x = stage(x)  # (B*N, C_i, H/s_i, W/s_i)
            if i in self.out_stages:
                out.append(x)
        return out
