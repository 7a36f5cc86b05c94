"""The benchmarks' seed summary (trainer.bench.tables, scripts/bench_train.py): mean, spread (half the range) and the
beyond-the-spread verdict; a run folder of another run refused (trainer.bench.runs)."""

from __future__ import annotations

import pytest

from trainer.bench.tables import summarise


def rows(name, nds, car):
    return [{"experiment": name, "NDS": a, "mAP": a / 2, "car AP": b} for a, b in zip(nds, car)]


def test_mean_spread_and_verdicts():
    table = summarise(rows("base", [0.30, 0.34], [0.40, 0.44]) + rows("new", [0.40, 0.42], [0.41, 0.45]))
    base, new = table
    assert base["seeds"] == 2 and base["NDS"] == "0.3200 +- 0.0200" and base["NDS vs base"] == "-"
    assert new["NDS"] == "0.4100 +- 0.0100"
    assert new["NDS vs base"] == "+0.0900 (beyond spread)"  # 0.09 > max(0.02, 0.01)
    assert new["car AP vs base"] == "+0.0100 (within spread)"  # 0.01 < 0.02
    assert new["mAP vs base"] == "+0.0450 (beyond spread)"


def test_one_seed_has_no_verdict():
    table = summarise(rows("a", [0.3], [0.4]) + rows("b", [0.5], [0.6]))
    assert table[1]["NDS"] == "0.5000 +- 0.0000" and table[1]["NDS vs a"] == "n/a (one seed)"


@pytest.mark.parametrize("order", [0, 1])
def test_experiments_keep_their_first_seen_order(order):
    both = [rows("x", [0.1, 0.2], [0.1, 0.2]), rows("y", [0.3, 0.3], [0.3, 0.3])]
    table = summarise(both[order] + both[1 - order])
    assert [r["experiment"] for r in table] == (["x", "y"] if order == 0 else ["y", "x"])


def test_a_run_folder_of_another_seed_is_refused_not_reused(tmp_path):
    """A single-seed sweep names its folder without the seed: a second seed into the same --out once reused
    the first seed's evaluation and recorded it under the second seed. Now it is refused, naming both."""
    import argparse
    import json

    from trainer.bench import runs as bt
    from trainer.bench.ledger import Ledger

    run = tmp_path / "dvd"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 12345\ntrainer:\n  max_steps: 3000\n")
    (run / "eval").mkdir()
    (run / "eval" / "metrics_summary.json").write_text("{}")
    (run / "bench_timing.json").write_text(json.dumps({"train_s": 1.0}))
    p = argparse.ArgumentParser()
    bt.add_run_arguments(p)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for seed, steps, what in ((2, 3000, "seed 12345 (this run: 2)"), (12345, 600, "steps 3000 (this run: 600)")):
        a = p.parse_args(["--steps", str(steps), "--ledger", str(ledger.path)])
        with pytest.raises(ValueError, match=rf"{run}.*{what.replace('(', '.').replace(')', '.')}"):
            bt.train_and_evaluate("dvd", run, ["experiment=dvd"], seed, a, tmp_path, "dvd", ledger=ledger)
    assert not ledger.path.exists() or not ledger.path.read_text().strip()  # nothing recorded
    bt.check_run_folder(run, 12345, 3000)  # the run it holds passes
