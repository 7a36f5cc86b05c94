"""The frozen image-encoder interface, its resize/normalise policy, and pixel <-> feature-grid mapping.

Letters
-------
N images (the cameras of a keyframe, batched), C feature channels, ``H, W`` the original image
height and width in pixels, ``H_in, W_in`` the resized encoder input (multiples of the patch size
``p``), ``h, w`` the patch-feature grid (``h = H_in / p``, ``w = W_in / p``), P query points.

Pixel convention
----------------
bevlabels uses continuous pixel coordinates (see :mod:`bevlabels.geometry`): ``(u, v)`` with u
right and v down, pixel ``(i, j)`` covering ``[i, i+1) x [j, j+1)``; pixel centres sit at
half-integers. The encoder input is the *whole* image resized to ``(W_in, H_in)`` (no crop, no
padding), and feature cell ``(r, c)`` is the patch covering input pixels ``[c p, (c+1) p) x
[r p, (r+1) p)``. In continuous coordinates of the same kind on the feature grid (cell ``c``
covers ``[c, c+1)``)::

    feat_x = u * (w / W)        feat_y = v * (h / H)

exactly, for any aspect-ratio change the rounding to multiples of ``p`` introduces. The feature
vector of cell ``(r, c)`` is attached to its centre ``(c + 0.5, r + 0.5)``; :func:`sample_features`
interpolates bilinearly between those centres (``grid_sample(align_corners=False)``, which uses
the same half-pixel convention), clamping to the border cells within half a cell of the image edge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# torchvision / timm / DINOv2 ImageNet statistics, used when a model ships no image-processor config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``device``: ``"auto"`` is ``cuda`` when available, else ``cpu``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_dtype_on(device: str | torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype an extractor configured with ``dtype`` computes in on ``device``: ``dtype`` under autocast on CUDA,
    float32 elsewhere (what its ``describe()["dtype"]`` then says). ``device`` is only named, never opened."""
    return resolve_dtype(dtype) if resolve_device(device).type == "cuda" else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Return the torch dtype named by ``dtype`` (None -> float32; accepts ``"bfloat16"``, ``"bf16"``...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def round_to_multiple(x: float, multiple: int) -> int:
    """Return ``x`` rounded to the nearest positive multiple of ``multiple`` (halves round up)."""
    return max(multiple, int(math.floor(x / multiple + 0.5)) * multiple)


def load_frame_images(frame) -> list:
    """The keyframe's camera images, each ``(H_n, W_n, 3)`` uint8 at its own size, or ``DatasetError`` naming the file."""
    import numpy as np
    from PIL import Image

    from bevlabels.datasets.base import DatasetError

    imgs = []
    for cam in frame.cameras:
        if not cam.has_image:
            raise DatasetError(f"missing image for {cam.name} of keyframe {frame.token}: {cam.image_path}")
        try:
            with Image.open(cam.image_path) as im:
                arr = np.array(im.convert("RGB"))  # writable, for torch.from_numpy
        except OSError as e:
            raise DatasetError(f"cannot decode image {cam.image_path}: {e}") from e
        if arr.shape[:2] != (cam.height, cam.width):
            raise DatasetError(
                f"image {cam.image_path} is {arr.shape[1]}x{arr.shape[0]}, calibration says {cam.width}x{cam.height}"
            )
        imgs.append(arr)
    return imgs


def pixel_to_feature(uv: torch.Tensor, image_size: tuple[int, int], feature_size: tuple[int, int]) -> torch.Tensor:
    """Return continuous feature-grid coordinates ``(..., 2)`` of original-image pixels ``uv``.

    ``feat_xy = uv * (w / W, h / H)``; cell ``c`` of the grid covers ``[c, c+1)``, so its centre is
    ``c + 0.5`` (see the module docstring).

    Args:
        uv: ``(..., 2)`` continuous pixel coordinates ``(u, v)`` in the original image.
        image_size: ``(W, H)`` of the original image.
        feature_size: ``(w, h)`` of the feature grid.
    """
    assert uv.shape[-1] == 2, f"uv must be (..., 2), got {tuple(uv.shape)}"
    (W, H), (w, h) = image_size, feature_size
    scale = torch.tensor([w / W, h / H], dtype=uv.dtype if uv.is_floating_point() else torch.float32)
    return uv * scale.to(uv.device)


def sample_features(
    feats: torch.Tensor,
    uv: torch.Tensor,
    image_size: tuple[int, int],
    padding_mode: str = "border",
) -> torch.Tensor:
    """Return features ``(P, C)`` (or ``(N, P, C)``) sampled bilinearly at original-image pixels ``uv``.

    At a pixel that projects onto a feature-cell centre the result is that cell's vector; between
    centres it is the bilinear blend (``grid_sample(align_corners=False)``, consistent with
    :func:`pixel_to_feature`). Points within half a cell of the image edge get the border cells'
    values (``padding_mode="border"``); points outside the image are clamped the same way, so mask
    them beforehand (``padding_mode="zeros"`` blends towards zero instead).

    Args:
        feats: ``(C, h, w)`` features of one image, or ``(N, C, h, w)`` for N images.
        uv: ``(P, 2)`` continuous pixel coordinates in the original image, or ``(N, P, 2)``.
        image_size: ``(W, H)`` of the original image.
        padding_mode: passed to :func:`torch.nn.functional.grid_sample`.
    """
    single = feats.ndim == 3
    if single:
        assert uv.ndim == 2 and uv.shape[1] == 2, f"uv must be (P, 2), got {tuple(uv.shape)}"
        feats, uv = feats[None], uv[None]  # (1, C, h, w), (1, P, 2)
    assert feats.ndim == 4, f"feats must be (C, h, w) or (N, C, h, w), got {tuple(feats.shape)}"
    assert uv.ndim == 3 and uv.shape[0] == feats.shape[0] and uv.shape[2] == 2, (
        f"uv must be (N, P, 2) matching feats (N, C, h, w); got {tuple(uv.shape)} and {tuple(feats.shape)}"
    )
    h, w = feats.shape[-2:]
    fxy = pixel_to_feature(uv.to(feats.dtype), image_size, (w, h))  # (N, P, 2)
    size = torch.tensor([w, h], dtype=feats.dtype, device=feats.device)
    grid = (2.0 * fxy / size - 1.0)[:, :, None, :]  # (N, P, 1, 2), x then y in [-1, 1]
    out = F.grid_sample(feats, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    out = out[..., 0].transpose(1, 2)  # (N, P, C)
    return out[0] if single else out


class FeatureExtractor(nn.Module, ABC):
    """A frozen image encoder: images ``(N, 3, H, W)`` in, patch features ``(N, C, h, w)`` out.

    The base class owns the policy shared by every backbone: the resize to a multiple of the patch
    size (:meth:`input_size`), the conversion of uint8 or [0, 1] images, the mean/std
    normalisation, ``torch.inference_mode`` and the optional autocast; subclasses implement
    :meth:`_encode` on normalised ``(N, 3, H_in, W_in)`` inputs.

    Attributes:
        name: what the model is (a Hugging Face id such as ``facebook/dinov2-small``).
        provenance: ``"pretrained:<id-or-path>"`` or ``"random-init"``, recorded in store attrs.
        out_channels: C.
        patch_size: p, in input pixels.
        image_height: the configured input height before rounding (None: the image's own height).
        compute_dtype: float32, or bfloat16/float16 autocast on CUDA.
    """

    def __init__(
        self,
        *,
        name: str,
        provenance: str,
        out_channels: int,
        patch_size: int,
        image_height: int | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
    ):
        super().__init__()
        if image_height is not None and int(image_height) <= 0:
            raise ValueError(f"image_height must be positive or None, got {image_height}")
        self.name = name
        self.provenance = provenance
        self.out_channels = int(out_channels)
        self.patch_size = int(patch_size)
        self.image_height = None if image_height is None else int(image_height)
        # Autocast only on CUDA; on CPU everything runs (and is reported) in float32.
        self.compute_dtype = compute_dtype_on(device, dtype)
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

    # -- geometry -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Return the device the encoder runs on (where :meth:`forward` returns its features)."""
        return self.mean.device

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(W_in, H_in)``, the encoder input size for a ``width x height`` image.

        ``H_in`` is ``image_height`` (or, when None, the image's own height) rounded to the nearest
        multiple of the patch size; ``W_in`` keeps the aspect ratio, ``width * H_in / height``,
        rounded the same way. E.g. 704x256 with ``image_height=224`` and p=14 gives 616x224.
        """
        target = self.image_height if self.image_height is not None else height
        h_in = round_to_multiple(target, self.patch_size)
        w_in = round_to_multiple(width * h_in / height, self.patch_size)
        return w_in, h_in

    def feature_size(self, width: int, height: int) -> tuple[int, int]:
        """Return ``(w, h)``, the patch-grid size of the features of a ``width x height`` image."""
        w_in, h_in = self.input_size(width, height)
        return w_in // self.patch_size, h_in // self.patch_size

    def pixel_to_feature(self, uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Return feature-grid coordinates ``(..., 2)`` of pixels ``uv (..., 2)`` of a ``(W, H)`` image."""
        return pixel_to_feature(uv, image_size, self.feature_size(*image_size))

    # -- encoding -----------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Return normalised encoder inputs ``(N, 3, H_in, W_in)`` float32 on the encoder's device.

        Args:
            images: ``(N, 3, H, W)`` RGB, either uint8 in [0, 255] or floating point in [0, 1].
                Resized with bilinear antialiasing (half-pixel centres), then ``(x - mean) / std``.
        """
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be (N, 3, H, W) RGB, got {tuple(images.shape)}"
        H, W = images.shape[-2:]
        w_in, h_in = self.input_size(W, H)
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
        else:
            raise TypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
        if (h_in, w_in) != (H, W):
            x = F.interpolate(x, size=(h_in, w_in), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std  # (N, 3, H_in, W_in)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Return self, kept in eval mode whatever ``mode``: the encoder is frozen (no dropout/drop-path)."""
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return patch features ``(N, C, h, w)`` float32 (inference tensors) on the encoder's device.

        Args:
            images: ``(N, 3, H, W)`` RGB, uint8 in [0, 255] or floating point in [0, 1]; all N share
                one size (the six cameras of a keyframe go in one batch). ``h = H_in / p`` and
                ``w = W_in / p`` with ``(W_in, H_in) = input_size(W, H)``.
        """
        x = self.preprocess(images)  # (N, 3, H_in, W_in)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)
            if self.compute_dtype != torch.float32
            else nullcontext()
        )
        with autocast:
            feats = self._encode(x)  # (N, C, h, w)
        N, _, h_in, w_in = x.shape
        expected = (N, self.out_channels, h_in // self.patch_size, w_in // self.patch_size)
        assert tuple(feats.shape) == expected, f"encoder returned {tuple(feats.shape)}, expected {expected}"
        return feats.float()

    def load_inputs(self, frame) -> list[torch.Tensor]:
        """What the encoder reads for a keyframe: each camera's image ``(3, H_n, W_n)`` uint8 (:func:`load_frame_images`).

        An extractor that reads something else (the synthetic oracle: label maps) overrides it; the
        label stage calls it, then :meth:`encode_cameras`.
        """
        return [torch.from_numpy(im).permute(2, 0, 1) for im in load_frame_images(frame)]

    def encode_cameras(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return each camera's patch features ``(C, h_n, w_n)`` for images ``(3, H_n, W_n)`` of any sizes.

        Cameras of one image size go through :meth:`forward` as one batch, so a rig of one size
        (nuScenes) costs one call and AV2's portrait front camera beside six landscape ones two.
        Each map has the patch grid of its own image (:meth:`feature_size`).
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for n, im in enumerate(images):
            assert im.ndim == 3, f"input {n} must be (channels, H, W), got {tuple(im.shape)}"
            groups.setdefault(tuple(im.shape), []).append(n)
        out: list[torch.Tensor | None] = [None] * len(images)
        for idx in groups.values():
            feats = self(torch.stack([images[n] for n in idx]))  # (n_size, C, h, w)
            for j, n in enumerate(idx):
                out[n] = feats[j]
        return out  # type: ignore[return-value]

    @abstractmethod
    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return features ``(N, C, H_in / p, W_in / p)`` of normalised inputs ``(N, 3, H_in, W_in)``."""

    # -- provenance ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able description for the store's ``feature_model`` attrs.

        Keys: ``name``, ``weights`` (the provenance: ``pretrained:<id-or-path>`` or ``random-init``),
        ``out_channels``, ``patch_size``, ``image_height`` (configured; None = native height),
        ``dtype`` (the compute dtype), ``image_mean``, ``image_std``; subclasses add more.
        """
        return {
            "name": self.name,
            "weights": self.provenance,
            "out_channels": self.out_channels,
            "patch_size": self.patch_size,
            "image_height": self.image_height,
            "dtype": str(self.compute_dtype).removeprefix("torch."),
            "image_mean": [round(float(v), 6) for v in self.mean.flatten()],
            "image_std": [round(float(v), 6) for v in self.std.flatten()],
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights={self.provenance!r}, C={self.out_channels}, p={self.patch_size}"
