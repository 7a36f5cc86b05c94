"""``features=synthetic_oracle``: patch features whose knowledge is known, from the synthetic world's label maps.

A randomly initialised ViT (all this machine has of DINOv2) knows nothing; an ablation that distils it
cannot say whether distilling *knowledgeable* features helps. The synthetic world writes, beside each
camera image, each pixel's semantic class and instance (``oracle/<CAM>/<stem>.png``,
:func:`bevlabels.synthetic.generate.read_oracle`). This extractor turns them into patch features the way
a foundation model's would look, with the knowledge controlled:

    feature(patch) = sum_c  frac_c  * d_c                  each class c a fixed unit direction d_c
                   + sum_i  frac_i  * instance_scale * e_i  each instance i a smaller fixed perturbation
                   + noise * n                            n ~ N(0, 1/C) per patch and channel

``frac`` are the shares of the patch's pixels of each class and instance (the label map resized to
the encoder input by nearest neighbour, as DINOv2's input is resized, then counted per patch). The
class directions are orthonormal; ``e_i`` are unit vectors drawn per (scene agent) instance index.
All of it is deterministic: directions from ``seed``, the noise from ``seed`` and the label map's
bytes, so a label stage that is killed and resumed writes the same arrays.

The patch grid and channel count are DINOv2 ViT-S/14's (``patch_size`` 14, ``out_channels`` 384, the
same ``image_height`` rule: :meth:`FeatureExtractor.input_size`), so a store of oracle features fits
every model configured for DINOv2-S. The store records ``name: synthetic_oracle`` and weights
``oracle:synthetic(...)``, never DINOv2.

Letters: N cameras, K classes, U instances in a batch, P patches, C channels.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import FeatureExtractor


class SyntheticOracle(FeatureExtractor):
    """Oracle patch features of the synthetic world's camera images (see the module docstring).

    Args:
        noise: standard deviation of the per-channel noise, relative to a class direction's unit length
            (times ``1/sqrt(C)`` per channel, so ``noise=1`` is a noise vector as long as a direction).
        instance_scale: length of an instance's perturbation (a class direction has length 1).
        seed: directions and noise.
        out_channels, patch_size, image_height: DINOv2-S's by default (384, 14, native height).
    """

    def __init__(
        self,
        noise: float = 0.3,
        instance_scale: float = 0.25,
        seed: int = 0,
        out_channels: int = 384,
        patch_size: int = 14,
        image_height: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ):
        from bevlabels.synthetic.generate import ORACLE_CLASSES

        if noise < 0 or instance_scale < 0:
            raise ValueError(f"noise ({noise}) and instance_scale ({instance_scale}) must be >= 0")
        self.noise, self.instance_scale, self.seed = float(noise), float(instance_scale), int(seed)
        provenance = f"oracle:synthetic(noise={self.noise:g},instance_scale={self.instance_scale:g},seed={self.seed})"
        super().__init__(
            name="synthetic_oracle",
            provenance=provenance,
            out_channels=out_channels,
            patch_size=patch_size,
            image_height=image_height,
            device=device,
            dtype=dtype,
        )
        self.classes = tuple(ORACLE_CLASSES)
        K, C = len(self.classes), self.out_channels
        if K > C:
            raise ValueError(f"{K} classes need at least {K} channels, got out_channels={C}")
        g = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(C, K, generator=g, dtype=torch.float64))
        self.register_buffer("class_dirs", q.T.float().contiguous())  # (K, C) orthonormal rows

    # -- inputs ---------------------------------------------------------------------------------------

    def load_inputs(self, frame) -> list[torch.Tensor]:
        """Each camera's label map ``(2, H, W)`` int64 (class, instance), read beside its image."""
        from bevlabels.synthetic.generate import oracle_path, read_oracle

        out = []
        for cam in frame.cameras:
            cls, inst = read_oracle(oracle_path(Path(cam.image_path)))
            if cls.shape != (cam.height, cam.width):
                raise ValueError(
                    f"oracle map of {cam.image_path} is {cls.shape[1]}x{cls.shape[0]}, the image {cam.width}x{cam.height}"
                )
            out.append(torch.from_numpy(np.stack([cls, inst])))
        return out

    def instance_dirs(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit perturbations ``(U, C)`` of instance indices ``ids (U,)``: the same vector for an index, always."""
        rows = []
        for i in ids.tolist():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (int(i) + 1))
            v = torch.randn(self.out_channels, generator=g)
            rows.append(v / v.norm())
        return torch.stack(rows) if rows else torch.zeros(0, self.out_channels)

    # -- encoding -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Patch features ``(N, C, h, w)`` float32 of label maps ``(N, 2, H, W)`` (class, instance; same size)."""
        assert labels.ndim == 4 and labels.shape[1] == 2, f"labels must be (N, 2, H, W), got {tuple(labels.shape)}"
        N, _, H, W = labels.shape
        w_in, h_in = self.input_size(W, H)
        p = self.patch_size
        h, w = h_in // p, w_in // p
        # nearest resize to the encoder input (pixel centres), then each input pixel's patch
        ys = ((torch.arange(h_in, dtype=torch.float64) + 0.5) * H / h_in).long().clamp(max=H - 1)
        xs = ((torch.arange(w_in, dtype=torch.float64) + 0.5) * W / w_in).long().clamp(max=W - 1)
        lab = labels.long()[:, :, ys][:, :, :, xs]  # (N, 2, h_in, w_in)
        patch = (torch.arange(h_in)[:, None] // p * w + torch.arange(w_in)[None, :] // p).reshape(-1)  # (h_in*w_in,)
        P = h * w
        flat_patch = (torch.arange(N)[:, None] * P + patch[None]).reshape(-1)  # (N*h_in*w_in,)
        share = 1.0 / (p * p)
        cls = lab[:, 0].reshape(-1)
        K = len(self.classes)
        frac_c = torch.bincount(flat_patch * K + cls, minlength=N * P * K).view(N * P, K).float() * share
        feat = frac_c @ self.class_dirs.cpu()  # (N*P, C)
        inst = lab[:, 1].reshape(-1)
        has = inst >= 0
        if has.any() and self.instance_scale > 0:
            ids, which = torch.unique(inst[has], return_inverse=True)
            U = len(ids)
            frac_i = torch.bincount(flat_patch[has] * U + which, minlength=N * P * U).view(N * P, U).float() * share
            feat = feat + self.instance_scale * (frac_i @ self.instance_dirs(ids))
        if self.noise > 0:
            for n in range(N):  # each image's noise from its own labels: independent of the batching
                key = zlib.crc32(labels[n].cpu().numpy().tobytes()) ^ (self.seed * 2654435761 % 2**32)
                g = torch.Generator().manual_seed(int(key))
                rows = slice(n * P, (n + 1) * P)
                feat[rows] += self.noise / self.out_channels**0.5 * torch.randn(P, self.out_channels, generator=g)
        out = feat.view(N, h, w, self.out_channels).permute(0, 3, 1, 2).contiguous()
        return out.to(self.device)

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - forward is overridden
        raise NotImplementedError("SyntheticOracle encodes label maps (forward), not pixels")

    def describe(self) -> dict[str, Any]:
        """The store's ``feature_model`` record: an oracle, with its knobs; no image statistics (it reads no pixels)."""
        d = super().describe()
        for k in ("image_mean", "image_std"):
            d.pop(k, None)
        d.update(
            {
                "oracle": True,
                "noise": self.noise,
                "instance_scale": self.instance_scale,
                "seed": self.seed,
                "classes": list(self.classes),
            }  # fmt: skip
        )
        return d
