"""trainer.evaluate picks the evaluation the dataset adapter declares (``DriveDataset.evaluation``), no training needed."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainer.eval.av2_detection
import trainer.eval.nusc_detection
import trainer.eval.predict
import trainer.evaluate as ev
from bevlabels.datasets.av2 import AV2Dataset
from bevlabels.datasets.base import DriveDataset
from bevlabels.datasets.nuscenes import NuScenesDataset
from trainer.lit_base import LoadedCheckpoint


class _Unscored(DriveDataset):
    """An adapter that declares no evaluation."""

    root = Path("/nowhere")

    def scenes(self, split=None):
        return []

    def keyframes(self, scene):
        return []

    def sweeps(self, scene):
        return []

    def load_points(self, sweep):
        raise NotImplementedError


class _DataModule:
    def __init__(self, adapter):
        self.adapter = adapter
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage=None):
        self.calls.append(f"setup:{stage}")


def test_adapters_declare_their_evaluation():
    # the adapters' declarations (instances made without data: dispatch reads the class attribute)
    assert ev.evaluation_of(object.__new__(NuScenesDataset)) == "nuscenes"
    assert ev.evaluation_of(object.__new__(AV2Dataset)) == "av2"
    with pytest.raises(NotImplementedError, match="evaluation=None"):
        ev.evaluation_of(_Unscored())


@pytest.mark.parametrize(
    "adapter_cls, expected", [(NuScenesDataset, "evaluate_nuscenes"), (AV2Dataset, "evaluate_av2"), (_Unscored, None)]
)
def test_evaluate_runs_the_adapters_evaluation(monkeypatch, tmp_path, adapter_cls, expected):
    dm = _DataModule(object.__new__(adapter_cls) if adapter_cls is not _Unscored else _Unscored())
    loaded = LoadedCheckpoint(
        path=tmp_path / "last.ckpt", config={"data": {}}, model=None, state_dict_sha256="", epoch=0, global_step=0
    )
    called: list[tuple[str, dict]] = []
    monkeypatch.setattr(ev, "load_checkpoint", lambda ckpt: loaded)
    monkeypatch.setattr(trainer.eval.predict, "build_datamodule", lambda config, **kw: dm)
    # where the dispatcher looks them up: the benchmark modules
    for module, name in (
        (trainer.eval.nusc_detection, "evaluate_nuscenes"),
        (trainer.eval.av2_detection, "evaluate_av2"),
    ):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **kw: called.append((_n, kw)) or {"ran": _n})
    if expected is None:
        with pytest.raises(NotImplementedError, match="no evaluation for the dataset adapter"):
            ev.evaluate("x.ckpt", tracking=False)
        assert called == []
        return
    out = ev.evaluate("x.ckpt", split="val", out=tmp_path / "o", tracking=False, roi=False, n_jobs=1)
    assert out == {"ran": expected} and [c[0] for c in called] == [expected]
    assert dm.calls == ["prepare_data", "setup:predict"]
    if expected == "evaluate_av2":
        assert called[0][1]["roi"] is False and called[0][1]["n_jobs"] == 1


def test_bad_tracker_fails_before_anything_loads(tmp_path):
    import pytest

    from trainer.evaluate import evaluate

    # the checkpoint does not exist: the tracker value is refused first, naming the field
    with pytest.raises(ValueError, match="tracker"):
        evaluate(tmp_path / "missing.ckpt", tracker="hungarian")


def test_bank_tracker_on_a_model_without_a_bank_is_refused_before_predicting(monkeypatch, tmp_path):
    import types

    model = types.SimpleNamespace(detector=types.SimpleNamespace(bank=None))
    loaded = LoadedCheckpoint(
        path=tmp_path / "last.ckpt", config={"data": {}}, model=model, state_dict_sha256="", epoch=0, global_step=0
    )
    monkeypatch.setattr(ev, "load_checkpoint", lambda ckpt: loaded)

    def no_data(*a, **kw):
        raise AssertionError("the data module was built")

    monkeypatch.setattr(trainer.eval.predict, "build_datamodule", no_data)
    with pytest.raises(ValueError, match="has no instance bank.*tracker=kalman"):
        ev.evaluate("last.ckpt", tracker="bank")
