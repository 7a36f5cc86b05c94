"""PreciseBN: BatchNorm statistics from the data module's shuffled loader, never its scene streams.

A temporal run streams scenes (each batch slot walks one scene under one held augmentation). Averaging
BatchNorm statistics over the first batches of that loader saw the same two scenes every time, and the
stream-trained ``dvd_temporal``'s validation depth loss was twice the single-frame runs'
(results/bench_dvd_cpu_temporal.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from trainer.callbacks import PreciseBN


class _Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(1, momentum=0.1)
        self.resets = 0

    def forward(self, batch):
        return self.bn(batch)

    def reset_state(self):
        self.resets += 1


class _Data:
    """train_dataloader: the streams (values near +5); bn_dataloader: the shuffled keyframes (near -3)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.stream = [5.0 + 0.1 * torch.randn(4, 1, generator=g) for _ in range(10)]
        self.shuffled = [-3.0 + 2.0 * torch.randn(4, 1, generator=g) for _ in range(10)]

    def train_dataloader(self):
        return self.stream

    def bn_dataloader(self):
        return self.shuffled


def _trainer(datamodule, step=10):
    return SimpleNamespace(datamodule=datamodule, global_step=step, fast_dev_run=False)


def test_statistics_come_from_bn_dataloader_and_the_state_is_reset():
    net, data = _Net(), _Data()
    net.eval()
    PreciseBN(num_batches=6).recompute(_trainer(data), net)
    expected = torch.cat(data.shuffled[:6])
    # the cumulative average of the 6 batches' means (each batch the same size): their overall mean
    assert net.bn.running_mean.item() == pytest.approx(expected.mean().item(), abs=1e-5)
    assert net.bn.running_mean.item() < 0  # not the streams' +5
    assert net.bn.momentum == 0.1 and not net.training  # restored
    assert net.resets == 1  # a temporal model forgets what these unrelated batches carried


def test_without_bn_dataloader_the_train_loader_is_used():
    class Plain:
        def __init__(self, batches):
            self.batches = batches

        def train_dataloader(self):
            return self.batches

    net, data = _Net(), _Data()
    PreciseBN(num_batches=3).recompute(_trainer(Plain(data.stream)), net)
    assert net.bn.running_mean.item() == pytest.approx(torch.cat(data.stream[:3]).mean().item(), abs=1e-5)


def test_camera_datamodule_bn_loader_is_not_a_stream():
    from trainer.data.camera import CameraDataModule

    dm = CameraDataModule.__new__(CameraDataModule)  # only the loader choice is under test
    called = {}

    def fake_loader(split, train):
        called["args"] = (split, train)
        return "shuffled"

    dm._loader = fake_loader
    dm.sequential_scenes = True
    assert dm.bn_dataloader() == "shuffled" and called["args"] == ("train", True)


def test_the_loader_is_built_once_and_reused():
    """A loader with persistent workers built at every validation would leave a set of worker processes behind each
    time: PreciseBN asks the data module for it once, and again only for another data module."""

    class Counting(_Data):
        def __init__(self):
            super().__init__()
            self.built = 0

        def bn_dataloader(self):
            self.built += 1
            return self.shuffled

    net, data = _Net(), Counting()
    cb = PreciseBN(num_batches=2)
    for step in (10, 20, 30):
        cb.recompute(_trainer(data, step=step), net)
    assert data.built == 1 and net.resets == 3
    other = Counting()
    cb.recompute(_trainer(other, step=40), net)
    assert other.built == 1 and cb.loader(_trainer(other)) is other.shuffled
