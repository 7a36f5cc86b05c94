"""1x1 convolutions as matrix products on the CPU, off oneDNN's 1x1 convolution kernels.

Why. On x86 CPUs with AVX-512 (e.g. AMD EPYC with ``avx512_bf16``/``avx512_vnni``), torch 2.13's
oneDNN picks ``jit_avx512_common_1x1_convolution_bwd_weights_t`` for the weight gradient of a 1x1
convolution; with a stride of 2, fewer than 16 input channels and the channels-last layout it
corrupts the heap (SIGSEGV, "free(): invalid next size"). ``nn.Conv2d(8, 16, 1, stride=2)`` on a
channels-last ``(2, 8, 64, 64)`` input is enough. The same family of kernels runs every other 1x1
convolution on such CPUs, and which shapes are safe is not documented, so instead of steering
around the known shape every 1x1 convolution of the models runs without it.

How. A 1x1 convolution with stride ``s`` (no padding, no dilation, one group) is, exactly, the
input subsampled every ``s``-th row and column followed by a per-pixel linear map of the channels:
``y[b, :, i, j] = W @ x[b, :, s*i, s*j] + bias``. :class:`PointwiseConv2d` computes that with one
GEMM (``torch.matmul`` / ``F.linear``, i.e. BLAS), in whichever memory layout the input has, and
returns the output in that layout: channels-last in, channels-last out (the ``(B, H, W, C)`` view is
what the GEMM reads and writes, with no copy); contiguous in, contiguous out. On other devices
(CUDA) it is ``nn.Conv2d.forward`` unchanged: the bug is oneDNN's, on x86.

It is a subclass of ``nn.Conv2d`` with the same parameters, so state dicts, pretrained weights and
initialisations are unchanged; :func:`pointwise_as_gemm` converts the 1x1 convolutions of a module
built elsewhere (``transformers``' ResNet shortcuts) in place. ``tests/unit/test_pointwise.py``
proves the outputs and gradients equal ``nn.Conv2d``'s and that no 1x1 convolution of a shipped model
reaches oneDNN (read from oneDNN's own verbose log, on any CPU).

Shape letters: B batch, C channels, H/W rows/columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1, stride=s, bias=...)`` computed as a GEMM on the CPU (module docstring).

    ``(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))``, in the input's memory format.
    """

    #: False sends CPU inputs to ``nn.Conv2d.forward`` (oneDNN) again: for the before/after benchmark only
    gemm_on_cpu: bool = True

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True, **kwargs):
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias, **kwargs)
        if not is_pointwise_params(self):
            raise ValueError(f"PointwiseConv2d: not a plain 1x1 convolution: {self}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not self.gemm_on_cpu:
            return super().forward(x)
        sh, sw = self.stride
        if sh > 1 or sw > 1:
            # (B, C_in, ceil(H/s), ceil(W/s)): the pixels a 1x1 kernel reads; the input's layout is kept
            x = x[:, :, ::sh, ::sw].contiguous(memory_format=_layout(x))
        return _pointwise(x, self.weight.flatten(1), self.bias)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``x (B, C, H, W)`` is laid out so (and not also plainly contiguous), else contiguous."""
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y[b, :, i, j] = weight @ x[b, :, i, j] + bias``: ``x (B, C_in, H, W)``, ``weight (C_out, C_in)``, one GEMM, layout kept."""
    assert x.ndim == 4 and x.shape[1] == weight.shape[1], (
        f"x must be (B, {weight.shape[1]}, H, W); got {tuple(x.shape)}"
    )
    if _layout(x) == torch.channels_last:
        y = F.linear(x.permute(0, 2, 3, 1), weight, bias)  # (B, H, W, C_out): the tensor's own memory, no copy
        return y.permute(0, 3, 1, 2)  # (B, C_out, H, W), channels-last strides
    B, C, H, W = x.shape
    y = torch.matmul(weight, x.reshape(B, C, H * W))  # (B, C_out, H*W)
    if bias is not None:
        y = y + bias[:, None]
    return y.view(B, -1, H, W)


class PointwiseConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(c_in, c_out, 1)`` (stride 1) as a GEMM on the CPU: ``y = W^T x`` per pixel.

    oneDNN runs a 1x1 transposed convolution through the same 1x1 convolution kernels (its verbose
    log names ``conv:any+jit_1x1``), so it is taken off them too. The weight keeps its
    ``(C_in, C_out, 1, 1)`` shape.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None or not PointwiseConv2d.gemm_on_cpu:
            return super().forward(x, output_size)
        return _pointwise(x, self.weight.flatten(1).t(), self.bias)  # W^T: (C_out, C_in)


def is_pointwise_transpose_params(conv: nn.Module) -> bool:
    """True for a 1x1, stride-1 transposed convolution with no padding, dilation or groups."""
    return (
        isinstance(conv, nn.ConvTranspose2d)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.output_padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
    )


def is_pointwise_params(conv: nn.Module) -> bool:
    """True for a plain 1x1 convolution (``nn.Conv2d`` or a subclass): kernel 1x1, no padding, no dilation, one group."""
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def pointwise_as_gemm(module: nn.Module) -> int:
    """Turn every plain 1x1 ``nn.Conv2d`` (and 1x1 stride-1 ``nn.ConvTranspose2d``) inside ``module`` into a
    :class:`PointwiseConv2d` (:class:`PointwiseConvTranspose2d`), in place.

    The parameter tensors are kept (same objects, same names), so nothing about the weights changes.
    Returns how many were converted.
    """
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and is_pointwise_params(m):
            m.__class__ = PointwiseConv2d
            n += 1
        elif type(m) is nn.ConvTranspose2d and is_pointwise_transpose_params(m):
            m.__class__ = PointwiseConvTranspose2d
            n += 1
    return n
