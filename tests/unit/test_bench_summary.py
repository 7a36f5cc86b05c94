"""scripts/bench_train.py's seed summary: mean, spread (half the range) and the beyond-the-spread verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_train import summarise  # noqa: E402


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
