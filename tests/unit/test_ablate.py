"""trainer.bench.ablate (scripts/ablate.py) with fake runs: an interrupted sweep resumes without redoing finished runs,
and its table equals a hand computation of means and spreads over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.bench import ablate
from trainer.bench import runs as bt
from trainer.bench.tables import summarise

#: what each fake run scores: (row, seed) -> NDS, mAP, AMOTA, IDS, car AP, fg AbsRel
SCORES = {
    ("base", 1): (0.30, 0.20, 0.10, 40, 0.50, 0.30),
    ("base", 2): (0.34, 0.24, 0.14, 60, 0.54, 0.26),
    ("new", 1): (0.40, 0.21, 0.11, 30, 0.60, 0.20),
    ("new", 2): (0.44, 0.25, 0.09, 34, 0.64, 0.22),
}

ABLATION = """
description: two rows
stores:
  s: [features=synthetic_oracle]
rows:
  - {name: base, store: s, overrides: [experiment=dvd]}
  - {name: new, store: s, overrides: [experiment=dvd_dino]}
"""


class FakeRuns:
    """Stands in for :func:`trainer.bench.runs.run`: a train command writes a checkpoint, an evaluate command the summaries."""

    def __init__(self, fail_on: int | None = None):
        self.trained: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cmd: list[str], log_path: Path):
        import torch

        if "trainer.train" in cmd:
            run_dir = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
            if self.fail_on is not None and len(self.trained) == self.fail_on:
                raise KeyboardInterrupt("interrupted")
            self.trained.append(run_dir.name)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            torch.save({"global_step": 600, "epoch": 14}, run_dir / "checkpoints" / "last.ckpt")
            return 100.0, 2**30
        if "trainer.evaluate" in cmd:
            ev = Path(next(c for c in cmd if c.startswith("out=")).split("=", 1)[1])
            row, seed = ev.parent.name.rsplit("-s", 1)
            nds, m_ap, amota, ids, car, absrel = SCORES[row, int(seed)]
            ev.mkdir(parents=True, exist_ok=True)
            summary = {
                "nd_score": nds,
                "mean_ap": m_ap,
                "mean_dist_aps": {"car": car, "pedestrian": car / 2},
                "tp_errors": {"trans_err": 1.0, "scale_err": 0.3, "orient_err": 1.2, "vel_err": 1.0},
                "tracking": {"amota": amota, "ids": ids},
            }
            (ev / "metrics_summary.json").write_text(json.dumps(summary))
            extra = {"fg_depth/abs_rel": absrel, "fg_depth/silog": 20.0, "fg_depth/rmse": 5.0}
            (ev / "extra_metrics.json").write_text(json.dumps(extra))
            return 10.0, 2**29
        return 1.0, 0  # synth, labels


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    spec = tmp_path / "two.yaml"
    spec.write_text(ABLATION)
    monkeypatch.setattr(bt, "store_complete", lambda path: True)
    monkeypatch.setenv("BEVLABELS_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "synthetic" / "small-seed0" / "v1.0-mini").mkdir(parents=True)
    (tmp_path / "data" / "synthetic" / "small-seed0" / "oracle").mkdir()
    out = tmp_path / "out"
    return lambda *extra: ablate.main(
        [str(spec), "--seeds", "1", "2", "--steps", "600", "--out", str(out), *extra]
    ), out


def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(sweep, monkeypatch):
    go, out = sweep
    first = FakeRuns(fail_on=2)
    monkeypatch.setattr(bt, "run", first)
    with pytest.raises(KeyboardInterrupt):
        go()
    assert first.trained == ["base-s1", "base-s2"]
    second = FakeRuns()
    monkeypatch.setattr(bt, "run", second)
    assert go() == 0
    assert second.trained == ["new-s1", "new-s2"]  # the finished runs were reused, not retrained
    third = FakeRuns()
    monkeypatch.setattr(bt, "run", third)
    assert go() == 0 and third.trained == []


def test_the_table_equals_a_hand_computation(sweep, monkeypatch):
    go, out = sweep
    monkeypatch.setattr(bt, "run", FakeRuns())
    assert go() == 0
    runs = json.loads((out / "ablation.json").read_text())
    assert [(r["experiment"], r["seed"]) for r in runs] == [("base", 1), ("base", 2), ("new", 1), ("new", 2)]
    summary = {r["experiment"]: r for r in summarise(runs, tuple(ablate.summary_keys(runs)))}
    # by hand: base NDS (0.30, 0.34) -> 0.32 +- 0.02; new (0.40, 0.44) -> 0.42 +- 0.02: +0.10, beyond both spreads
    assert summary["base"]["NDS"] == "0.3200 +- 0.0200" and summary["new"]["NDS"] == "0.4200 +- 0.0200"
    assert summary["new"]["NDS vs base"] == "+0.1000 (beyond spread)"
    # mAP base (0.20, 0.24) -> 0.22 +- 0.02, new (0.21, 0.25) -> 0.23 +- 0.02: +0.01, within
    assert summary["new"]["mAP vs base"] == "+0.0100 (within spread)"
    # AMOTA base 0.12 +- 0.02, new 0.10 +- 0.01: -0.02, within (not more than base's 0.02)
    assert (
        summary["new"]["AMOTA"] == "0.1000 +- 0.0100" and summary["new"]["AMOTA vs base"] == "-0.0200 (within spread)"
    )
    # IDS base (40, 60) -> 50 +- 10, new (30, 34) -> 32 +- 2: -18, beyond
    assert summary["new"]["IDS"] == "32.0000 +- 2.0000" and summary["new"]["IDS vs base"] == "-18.0000 (beyond spread)"
    assert "distill cos obj" not in summary["new"]  # the fake runs have no distillation fit: not summarised
    # foreground AbsRel base (0.30, 0.26) -> 0.28 +- 0.02, new (0.20, 0.22) -> 0.21 +- 0.01: -0.07, beyond
    assert summary["new"]["fg AbsRel vs base"] == "-0.0700 (beyond spread)"
    text = (out / "ablation.md").read_text()
    assert "0.4200 +- 0.0200" in text and "+0.1000 (beyond spread)" in text
    assert "## Per-class AP" in text and "0.6200 +- 0.0200" in text  # AP car of new: (0.60, 0.64)
    assert "2 of 2 runs" not in text and "4 of 4 runs finished" in text


def test_parallel_jobs_give_the_same_table_and_ledger(sweep, monkeypatch, tmp_path):
    """--jobs 2 runs two runs at once: every run once, the table in the file's order, one ledger line each."""
    go, out = sweep
    monkeypatch.setattr(bt, "run", FakeRuns())
    assert go() == 0
    serial = (out / "ablation.json").read_text()
    import shutil

    shutil.rmtree(out)
    fake = FakeRuns()
    monkeypatch.setattr(bt, "run", fake)
    ledger = tmp_path / "jobs.jsonl"
    assert go("--jobs", "2", "--ledger", str(ledger)) == 0
    assert sorted(fake.trained) == ["base-s1", "base-s2", "new-s1", "new-s2"]
    assert (out / "ablation.json").read_text() == serial
    lines = [json.loads(ln) for ln in ledger.read_text().splitlines()]
    assert sorted((e["row"]["experiment"], e["row"]["seed"]) for e in lines) == [
        ("base", 1), ("base", 2), ("new", 1), ("new", 2)
    ]  # fmt: skip


def test_print_commands_lists_only_pending_runs(sweep, monkeypatch, capsys):
    go, out = sweep
    monkeypatch.setattr(bt, "run", FakeRuns(fail_on=1))
    with pytest.raises(KeyboardInterrupt):
        go()
    capsys.readouterr()
    assert go("--print-commands") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("trainer.train" in ln and "trainer.evaluate" in ln for ln in lines)
    assert not any("base-s1" in ln for ln in lines)


def test_a_ledger_carries_a_sweep_to_a_fresh_machine(sweep, monkeypatch, tmp_path):
    """Runs recorded in the ledger are not retrained where outputs/ and the data live elsewhere; a deleted line is."""
    go, out = sweep
    ledger = tmp_path / "results" / "two.jsonl"
    first = FakeRuns(fail_on=3)
    monkeypatch.setattr(bt, "run", first)
    with pytest.raises(KeyboardInterrupt):
        go("--ledger", str(ledger))
    lines = ledger.read_text().splitlines()
    assert len(lines) == 3  # each finished run was appended as it finished, before the interruption
    entry = json.loads(lines[0])
    assert entry["key"]["experiment"] == "dvd" and entry["key"]["seed"] == 1 and entry["key"]["steps"] == 600
    assert entry["row"]["experiment"] == "base"  # the row keeps the ablation's name; the key says what ran
    assert not any("/" in o for o in entry["key"]["overrides"])  # no path of this machine in the key
    assert entry["key"]["store"] == ["features=synthetic_oracle"]  # but what made the store, in its place
    assert entry["row"]["NDS"] == SCORES["base", 1][0] and entry["recorded"]["date"]

    # a fresh machine: no run folders, the data somewhere else; only the run missing from the ledger trains
    import shutil

    shutil.rmtree(out)
    other = tmp_path / "elsewhere"
    (other / "synthetic" / "small-seed0" / "oracle").mkdir(parents=True)
    (other / "synthetic" / "small-seed0" / "v1.0-mini").mkdir()
    monkeypatch.setenv("BEVLABELS_DATA", str(other))
    second = FakeRuns()
    monkeypatch.setattr(bt, "run", second)
    assert go("--ledger", str(ledger)) == 0
    assert second.trained == ["new-s2"]
    runs = json.loads((out / "ablation.json").read_text())
    assert [(r["experiment"], r["seed"], r["NDS"]) for r in runs] == [
        (n, s, SCORES[n, s][0]) for n, s in [("base", 1), ("base", 2), ("new", 1), ("new", 2)]
    ]
    assert len(ledger.read_text().splitlines()) == 4

    # delete a run's line (its code changed) and its folder: it is redone, the others are not
    shutil.rmtree(out)
    ledger.write_text(
        "\n".join(ln for ln in ledger.read_text().splitlines() if '"seed": 2' not in ln or "base" not in ln)
    )
    third = FakeRuns()
    monkeypatch.setattr(bt, "run", third)
    assert go("--ledger", str(ledger)) == 0 and third.trained == ["base-s2"]


def test_two_ablations_sharing_a_ledger_train_a_shared_run_once(sweep, monkeypatch, tmp_path, capsys):
    """A row of another ablation with the same overrides and store under another name (Table X's w7 is Table VII's
    dvd_oracle) is reused from the ledger, under its own name; a row that differs in one override is trained."""
    go, out = sweep
    ledger = tmp_path / "results" / "shared.jsonl"
    monkeypatch.setattr(bt, "run", FakeRuns())
    assert go("--ledger", str(ledger)) == 0
    other = tmp_path / "other.yaml"
    other.write_text(
        "stores:\n  o: [features=synthetic_oracle]\nrows:\n"
        "  - {name: w7, store: o, overrides: [experiment=dvd_dino]}\n"  # = 'new' of the first ablation
        "  - {name: base, store: o, overrides: [experiment=dvd, model.loss.distill_weight=3.0]}\n"  # not 'base'
    )
    out2 = tmp_path / "out2"
    args = [str(other), "--seeds", "1", "2", "--steps", "600", "--out", str(out2), "--ledger", str(ledger)]
    capsys.readouterr()
    assert ablate.main([*args, "--print-commands"]) == 0
    pending = capsys.readouterr().out.strip().splitlines()
    assert len(pending) == 2 and all("base-s" in ln and "w7-s" not in ln for ln in pending)  # the same key as a run
    fake = FakeRuns()
    monkeypatch.setattr(bt, "run", fake)
    assert ablate.main(args) == 0
    assert fake.trained == ["base-s1", "base-s2"]  # w7 came from the ledger
    runs = {(r["experiment"], r["seed"]): r for r in json.loads((out2 / "ablation.json").read_text())}
    assert runs["w7", 1]["NDS"] == SCORES["new", 1][0] and runs["w7", 2]["NDS"] == SCORES["new", 2][0]


def test_collect_trains_nothing_and_a_broken_ledger_line_is_named(sweep, monkeypatch, tmp_path):
    go, out = sweep
    ledger = tmp_path / "l.jsonl"
    first = FakeRuns(fail_on=1)
    monkeypatch.setattr(bt, "run", first)
    with pytest.raises(KeyboardInterrupt):
        go("--ledger", str(ledger))
    idle = FakeRuns()
    monkeypatch.setattr(bt, "run", idle)
    assert go("--ledger", str(ledger), "--collect") == 0 and idle.trained == []
    assert "1 of 4 runs finished" in (out / "ablation.md").read_text()
    ledger.write_text(ledger.read_text() + "{not json\n")
    with pytest.raises(SystemExit, match=r"l\.jsonl:2: not a ledger entry"):
        go("--ledger", str(ledger), "--collect")


def test_paired_differences_equal_a_hand_computation():
    """Per-seed differences against each row's reference: mean +- sample SD and how many seeds share the mean's sign."""
    from trainer.bench.tables import paired

    rows = [
        {"experiment": "w0", "seed": 1, "mAP": 0.20},
        {"experiment": "w0", "seed": 2, "mAP": 0.30},
        {"experiment": "w0", "seed": 3, "mAP": 0.25},
        {"experiment": "w7", "seed": 1, "mAP": 0.22},  # +0.02
        {"experiment": "w7", "seed": 2, "mAP": 0.34},  # +0.04
        {"experiment": "w7", "seed": 3, "mAP": 0.24},  # -0.01
        {"experiment": "one", "seed": 2, "mAP": 0.35},  # +0.05, one seed
    ]
    got = {r["experiment"]: r for r in paired(rows, ["mAP"], {"w7": "w0", "one": "w0"})}
    # by hand: d = (0.02, 0.04, -0.01), mean 0.0166..., SD sqrt(((0.00333)^2 + (0.02333)^2 + (0.02667)^2) / 2) = 0.02517
    assert got["w7"]["mAP"] == "+0.0167 +- 0.0252 (2/3)" and got["w7"]["paired seeds"] == 3
    assert got["one"]["mAP"] == "+0.0500 (one seed)" and got["one"]["paired seeds"] == 1
    # the pairing is by seed, not by order: a spread over seeds that are not paired would differ
    assert paired(rows[::-1], ["mAP"], {"w7": "w0"})[0]["mAP"] == got["w7"]["mAP"]


ABLATION_VS = """
description: a reference per block
papers: "Paper X, Table 1: 0.33 / 0.43"
stores:
  s: [features=synthetic_oracle]
rows:
  - {name: base, store: s, overrides: [experiment=dvd]}
  - {name: new, store: s, overrides: [experiment=dvd_dino], vs: base}
"""


def test_vs_papers_and_unfinished_runs_in_the_table(tmp_path, monkeypatch):
    """A row's ``vs`` names its reference; the papers' numbers are printed; a run that stopped before its steps (a
    wall-clock guard) is listed as unfinished and left out of every summary."""
    spec = tmp_path / "vs.yaml"
    spec.write_text(ABLATION_VS)
    monkeypatch.setattr(bt, "store_complete", lambda path: True)
    monkeypatch.setenv("BEVLABELS_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "synthetic" / "small-seed0" / "v1.0-mini").mkdir(parents=True)
    (tmp_path / "data" / "synthetic" / "small-seed0" / "oracle").mkdir()

    class Stopped(FakeRuns):
        def __call__(self, cmd, log_path):
            got = super().__call__(cmd, log_path)
            if "trainer.train" in cmd and "new-s2" in " ".join(cmd):  # the guard stopped this one at 400 of 600
                import torch

                run_dir = Path(next(c for c in cmd if c.startswith("hydra.run.dir=")).split("=", 1)[1])
                torch.save({"global_step": 400, "epoch": 9}, run_dir / "checkpoints" / "last.ckpt")
            return got

    monkeypatch.setattr(bt, "run", Stopped())
    out = tmp_path / "out"
    assert ablate.main([str(spec), "--seeds", "1", "2", "--steps", "600", "--out", str(out)]) == 0
    text = (out / "ablation.md").read_text()
    assert "Paper X, Table 1: 0.33 / 0.43" in text
    assert "**Unfinished**" in text and "new seed 2 (400 of 600 steps)" in text
    # the paired section pairs seed 1 only (seed 2 of new is unfinished): NDS 0.40 - 0.30
    paired_part = text.split("## Paired differences")[1].split("##")[0]
    assert "+0.1000 (one seed)" in paired_part
    # the summary of new is over its one finished seed: NDS 0.4000 +- 0.0000
    summary_part = text.split("## Mean +- spread")[1]
    assert "| new | 1 |" in summary_part and "0.4000 +- 0.0000" in summary_part
    runs = json.loads((out / "ablation.json").read_text())
    assert [r["finished"] for r in runs] == [True, True, True, False]

    bad = tmp_path / "bad.yaml"
    bad.write_text(ABLATION_VS.replace("vs: base", "vs: nowhere"))
    with pytest.raises(ValueError, match="vs: 'nowhere'"):
        ablate.load_ablation(bad)


def test_ap_at_one_metre_is_the_mean_over_the_devkits_classes():
    from trainer.bench.tables import scores_of

    summary = {
        "nd_score": 0.3,
        "mean_ap": 0.2,
        "mean_dist_aps": {"car": 0.4, "pedestrian": 0.1},
        "label_aps": {"car": {"0.5": 0.1, "1.0": 0.3, "2.0": 0.5, "4.0": 0.7}, "pedestrian": {"1.0": 0.1}},
        "tp_errors": {"trans_err": 1.0, "scale_err": 0.3, "orient_err": 1.2, "vel_err": 1.0},
    }
    assert scores_of(summary)["AP@1m"] == pytest.approx(0.2)
    del summary["label_aps"]
    assert "AP@1m" not in scores_of(summary)  # a summary without per-threshold APs has no such column


def test_rows_runs_only_the_named_rows(sweep, monkeypatch, capsys):
    go, out = sweep
    fake = FakeRuns()
    monkeypatch.setattr(bt, "run", fake)
    assert go("--rows", "new") == 0
    assert fake.trained == ["new-s1", "new-s2"]
    assert "## Paired differences" not in (out / "ablation.md").read_text()  # its reference was not run
    with pytest.raises(SystemExit):
        go("--rows", "nope")
    assert "--rows ['nope'] are not rows" in capsys.readouterr().err
