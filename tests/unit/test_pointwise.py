"""1x1 convolutions off oneDNN's 1x1 kernels (``trainer.models.components.pointwise``).

On AVX-512 CPUs, oneDNN's ``jit_avx512_common_1x1_convolution_bwd_weights_t`` corrupts the heap for a
stride-2 1x1 convolution with 8 input channels in channels-last (``make test`` died with SIGSEGV in
the tiny BEV encoder's shortcut). These tests:

- prove :class:`PointwiseConv2d` / :class:`PointwiseConvTranspose2d` compute what ``nn.Conv2d`` /
  ``nn.ConvTranspose2d`` compute (values and gradients, both layouts, strides 1 and 2);
- run the issue's reproduction through the project's own code path in a subprocess, so a crash
  fails this test instead of killing the suite;
- read oneDNN's own verbose log (``ONEDNN_VERBOSE=1``, in a subprocess) of a training step of every
  shipped camera and teacher model, and of the tests' tiny one, and assert that no 1x1 convolution
  problem reaches oneDNN at all. The problem descriptor (``kh1 ... kw1``) does not depend on the
  CPU, so this holds on AVX-512 machines although it runs anywhere; a control shows the check sees
  a plain ``nn.Conv2d``'s 1x1 problem.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.models.components.pointwise import PointwiseConv2d, PointwiseConvTranspose2d, pointwise_as_gemm

REPO = Path(__file__).resolve().parents[2]


def _fmt(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_equals_conv2d_in_values_gradients_and_layout(channels_last, stride, bias):
    torch.manual_seed(stride + 2 * bias)
    ref = nn.Conv2d(8, 16, 1, stride=stride, bias=bias).double()
    conv = PointwiseConv2d(8, 16, stride=stride, bias=bias)
    conv.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 13, 17, dtype=torch.float64)  # odd sizes: ceil(H / s) rows
    xr = x.clone().requires_grad_()
    xg = _fmt(x.float(), channels_last).requires_grad_()
    yr, yg = ref(xr), conv(xg)
    assert yg.shape == yr.shape == (2, 16, (13 - 1) // stride + 1, (17 - 1) // stride + 1)
    assert yg.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(yg.double(), yr, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yr)
    yr.backward(g)
    yg.backward(g.float())
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad.double(), ref.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(conv.bias.grad.double(), ref.bias.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_transposed_conv_equals_conv_transpose2d(channels_last):
    torch.manual_seed(1)
    ref = nn.ConvTranspose2d(8, 12, 1, bias=True).double()
    conv = nn.ConvTranspose2d(8, 12, 1, bias=True)
    assert pointwise_as_gemm(conv) == 1 and type(conv) is PointwiseConvTranspose2d
    conv.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    xr, xg = x.clone().requires_grad_(), _fmt(x.float(), channels_last).requires_grad_()
    yr, yg = ref(xr), conv(xg)
    torch.testing.assert_close(yg.double(), yr, rtol=1e-5, atol=1e-5)
    yr.square().sum().backward()
    yg.square().sum().backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad.double(), ref.weight.grad, rtol=1e-5, atol=1e-4)


def test_pointwise_as_gemm_converts_only_plain_1x1_convs_and_keeps_the_parameters():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 1, stride=2, bias=False),
        nn.Conv2d(8, 8, 1, groups=2),
        nn.ConvTranspose2d(8, 8, 2, stride=2),
        nn.ConvTranspose2d(8, 8, 1),
    )
    before = {k: v for k, v in net.named_parameters()}
    assert pointwise_as_gemm(net) == 3
    assert [type(m).__name__ for m in net] == [
        "PointwiseConv2d",
        "Conv2d",
        "PointwiseConv2d",
        "Conv2d",
        "ConvTranspose2d",
        "PointwiseConvTranspose2d",
    ]
    assert all(p is before[k] for k, p in net.named_parameters())  # same tensors, same names


# -- in a subprocess: the reproduction, and oneDNN's own log of what it runs -------------------------------

ONEDNN_1X1 = re.compile(r"^onednn_verbose,.*,(?:de)?convolution,.*kh1[^_]*_iw\d+ow\d+kw1", re.M)


def _run(code: str, verbose: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _died(p: subprocess.CompletedProcess) -> str:
    how = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
    return f"the subprocess {how}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def test_the_crash_reproduction_runs_through_the_projects_code_path():
    """The issue's reproduction (8 -> 16 channels, 1x1, stride 2, channels-last, (2, 8, 64, 64), backward)
    as the BEV encoder's residual block runs it; gradients checked against a float64 reference."""
    p = _run(
        """
        import torch
        from trainer.models.components.bev_encoder import ResBlock
        torch.manual_seed(0)
        block = ResBlock(8, 16, stride=2).to(memory_format=torch.channels_last)
        shortcut = block.shortcut[0]
        assert type(shortcut).__name__ == "PointwiseConv2d", type(shortcut)
        x = torch.randn(2, 8, 64, 64).contiguous(memory_format=torch.channels_last).requires_grad_()
        y = shortcut(x)
        y.sum().backward()
        block(x).sum().backward()
        ref = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).double()
        ref.weight.data.copy_(shortcut.weight.detach().double())
        xr = x.detach().double().contiguous().requires_grad_()
        ref(xr).sum().backward()
        grad_w = torch.autograd.grad(shortcut(x).sum(), shortcut.weight)[0]
        torch.testing.assert_close(grad_w.double(), ref.weight.grad, rtol=1e-5, atol=1e-3)
        print("OK", tuple(y.shape))
        """
    )
    assert p.returncode == 0 and "OK (2, 16, 32, 32)" in p.stdout, _died(p)
    assert not ONEDNN_1X1.search(p.stdout), ONEDNN_1X1.search(p.stdout).group(0)


def test_the_onednn_log_check_sees_a_plain_1x1_convolution():
    """Control: a plain ``nn.Conv2d`` 1x1 (a shape not known to crash) does reach oneDNN and the pattern finds it."""
    p = _run(
        """
        import torch
        x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(16, 16, 1).to(memory_format=torch.channels_last)
        conv(x).sum().backward()
        """
    )
    assert p.returncode == 0, _died(p)
    if "onednn_verbose" not in p.stdout:
        pytest.skip("this torch build prints no oneDNN verbose log (ONEDNN_VERBOSE unsupported)")
    assert ONEDNN_1X1.search(p.stdout), p.stdout[-2000:]


#: a training step (forward, backward) of each model named on the command line, one process for all
PROBE = """
import json
import sys
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import trainer  # noqa: F401  (the config resolvers: ${len:}, ${mul:})

for name, overrides in json.loads(sys.argv[1]).items():
    print("PROBE MODEL", name, flush=True)
    with initialize_config_dir(config_dir="{conf}", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run_dir=/tmp/unused", *overrides])
    det = instantiate(cfg.model).detector.train()
    torch.manual_seed(0)
    if name.startswith("teacher"):
        pts = torch.rand(4000, 5) * torch.tensor([60.0, 60.0, 4.0, 1.0, 0.5]) - torch.tensor([30.0, 30.0, 2.0, 0, 0])
        out = det([pts, pts[:2000]])
    else:
        B, N, H, W = 1, 6, 64, 176
        images = torch.randint(0, 256, (B, N, 3, H, W), dtype=torch.uint8)
        K = torch.tensor([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]]).expand(B, N, 3, 3)
        cam = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])  # looks along ego +x
        yaw = [torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) for c, s in
               ((torch.cos(a), torch.sin(a)) for a in torch.linspace(0, 5.24, N))]
        ego_from_cam = torch.stack([r @ cam for r in yaw]).expand(B, N, 4, 4)
        out = det(images, K, ego_from_cam)
    def tensors(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from tensors(v)
    loss = sum(t.float().mean() for t in tensors(out) if t.requires_grad)
    loss.backward()
    print("STEP OK", name, flush=True)
"""

from conftest import TINY_CAMERA_MODEL as TINY_CAMERA  # noqa: E402  (tests/conftest.py)

#: the shipped models (bevdepth_dino's detector is bevdepth's: its projection runs as F.linear in the loss; the
#: dvd variants differ only in the head's order, which has no convolution; dvd with fewer anchors, same convs)
#: and the tests' tiny camera model in both layouts
MODELS = {
    "bevdepth": ["experiment=bevdepth"],
    "dvd": ["experiment=dvd", "model.detector.head.num_anchors=100"],
    "dvd_proposals": ["experiment=dvd_proposals", "model.detector.head.num_anchors=300"],  # + a CenterHead
    "bevdepth_tiny_channels_last": ["experiment=bevdepth", "grid=near", *TINY_CAMERA],
    "bevdepth_tiny_contiguous": [
        "experiment=bevdepth",
        "grid=near",
        *TINY_CAMERA,
        "model.detector.camera_bev.channels_last=false",
    ],
    "teacher_centerpoint": ["experiment=teacher_centerpoint"],
    "teacher_centerpoint_cpu": ["experiment=teacher_centerpoint_cpu"],
}


def test_no_1x1_convolution_of_a_shipped_model_reaches_onednn():
    import json

    code = PROBE.replace("{conf}", str(REPO / "conf"))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", ONEDNN_VERBOSE="1")
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(MODELS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, _died(p)
    logs = dict(re.findall(r"^PROBE MODEL (\S+)\n(.*?)^STEP OK \1$", p.stdout, re.M | re.S))
    assert sorted(logs) == sorted(MODELS), f"models that did not finish a step: {sorted(set(MODELS) - set(logs))}"
    for name, log in logs.items():
        if "onednn_verbose" in p.stdout:  # a build without the verbose log skips only the log check
            assert re.search(r"^onednn_verbose,.*,convolution,", log, re.M), f"{name}: oneDNN logged no convolution"
        hit = ONEDNN_1X1.search(log)
        assert hit is None, f"a 1x1 convolution of {name} reached oneDNN: {hit.group(0)}"
