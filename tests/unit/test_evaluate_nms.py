"""``trainer.evaluate``'s ``nms`` option: which detectors take it, and what it records."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer.eval.decoding import set_decoding_nms


class _Sparse:
    """Stands in for DualViewDistill: ``set_nms``, ``nms_radius`` and ``class_names`` only."""

    class_names = ("car", "pedestrian")

    def __init__(self):
        self.nms_radius = None

    def set_nms(self, radius):
        self.nms_radius = None if radius is None else torch.tensor([float(radius[c]) for c in self.class_names])


def _loaded(detector, config=None):
    return SimpleNamespace(model=SimpleNamespace(detector=detector), config=config or {}, path="run/last.ckpt")


def test_circle_takes_the_checkpoints_radii_and_none_or_auto_leave_it_off():
    det = _Sparse()
    cfg = {"dataset": {"nms_radius": {"car": 2.0, "pedestrian": 0.4183, "bus": 3.0}}}
    assert set_decoding_nms(_loaded(det, cfg), "auto") == {"nms": "none"}
    out = set_decoding_nms(_loaded(det, cfg), "circle")
    assert out["nms"] == "circle" and out["radius"] == pytest.approx({"car": 2.0, "pedestrian": 0.4183})
    assert set_decoding_nms(_loaded(det, cfg), "auto")["nms"] == "circle"  # auto keeps what the model has
    assert set_decoding_nms(_loaded(det, cfg), "none") == {"nms": "none"} and det.nms_radius is None


def test_nms_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="needs dataset.nms_radius"):
        set_decoding_nms(_loaded(_Sparse(), {"dataset": {}}), "circle")
    dense = SimpleNamespace()  # a CenterHead detector decodes with its own NMS
    with pytest.raises(ValueError, match="needs a sparse detector"):
        set_decoding_nms(_loaded(dense), "none")
    assert set_decoding_nms(_loaded(dense), "auto") is None
