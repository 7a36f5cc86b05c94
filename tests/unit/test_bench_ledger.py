"""The ledger key of a known command line equals the key its finished run was recorded under in ``results/ledgers/``.

The ``results/ledgers/*.jsonl`` ledgers hold hour-long CPU runs keyed by :meth:`trainer.bench.ledger.Ledger.key`
(experiment, seed, steps, lr, batch size, model and the Hydra overrides, the CPU bench model's among them): a key
that drifts (an override list of :mod:`trainer.bench.cpu` reordered, a field renamed, the script composing its
overrides in another order) silently turns those runs into runs to retrain. These rows were recorded before the key gained
``labels_schema`` (they trained on schema-1 stores, which a ledger no longer answers for); every other field must
still be byte-identical, and ``labels_schema`` comes last. Rows recorded since (the `dvd` hour retrained on a schema-2
store, 2026-12-07) carry it already; the ledger answers with the last row of a key.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.bench.cpu import CPU_DEPTH, cpu_model
from trainer.bench.ledger import Ledger
from trainer.bench.runs import add_run_arguments

REPO = Path(__file__).resolve().parents[2]
LEDGERS = REPO / "results" / "ledgers"

#: README's hour of CPU for ``dvd`` (its ``--out`` and ``--ledger`` aside): line 5 of
#: results/ledgers/bench_dvd_cpu.jsonl
DVD_HOUR = ["--experiments", "dvd", "--steps", "3000", "--budget", "00:01:00:00", "--seeds", "12345"]
#: ``make bench-tig`` (Makefile: BENCH_TIG_SEEDS, BENCH_TIG_STEPS): every line of results/ledgers/bench_tig_cpu.jsonl
TIG = ["bevdepth", "bevdepth_tig_depth", "bevdepth_tig_bev", "bevdepth_tig"]
BENCH_TIG = ["--experiments", *TIG, "--seeds", "1", "2", "--steps", "1400", "--budget", "00:02:00:00"]


def _entries(ledger: str) -> list[dict]:
    return [json.loads(line) for line in (LEDGERS / ledger).read_text().splitlines() if line.strip()]


def _overrides(name: str, grid: str = "default", preset: str = "small") -> list[str]:
    """What ``scripts/bench_train.py`` passes ``trainer.train`` for ``--experiments name`` (``--model cpu``)."""
    dataset = ["dataset=synthetic", f"dataset.root=/data/synthetic/{preset}-seed0", f"dataset.generate.preset={preset}"]
    overrides = [f"experiment={name}", *dataset, f"grid={grid}", "data.label_store=/data/labels/synthetic.zarr"]
    return overrides + cpu_model(name) + CPU_DEPTH[grid]


def _recorded(key: dict) -> str:
    """The key as a ledger line holds it, with today's ``labels_schema`` added to a row recorded before the key had
    one (module docstring); a row recorded since keeps its own."""
    from bevlabels.cache import SCHEMA_VERSION

    return json.dumps(key if "labels_schema" in key else {**key, "labels_schema": SCHEMA_VERSION})


@pytest.mark.parametrize(
    ("ledger", "row", "name", "seed", "argv"),
    [
        ("bench_dvd_cpu.jsonl", 4, "dvd", 12345, ["--steps", "3000", "--budget", "00:01:00:00"]),
        ("bench_tig_cpu.jsonl", 0, "bevdepth", 1, ["--steps", "1400", "--budget", "00:02:00:00"]),
        ("bench_tig_cpu.jsonl", 7, "bevdepth_tig", 2, ["--steps", "1400", "--budget", "00:02:00:00"]),
    ],
)
def test_the_key_of_a_known_run_is_byte_identical_to_its_ledger_row(ledger, row, name, seed, argv):
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    key = Ledger.key(name, seed, _overrides(name), p.parse_args(argv))
    assert json.dumps(key) == _recorded(_entries(ledger)[row]["key"])


@pytest.mark.parametrize(
    ("ledger", "argv", "runs"),
    [
        ("bench_dvd_cpu.jsonl", DVD_HOUR, [("dvd", 12345, 3000)]),
        ("bench_tig_cpu.jsonl", BENCH_TIG, [(n, s, 1400) for s in (1, 2) for n in TIG]),  # seed-major, as it runs
    ],
)
def test_the_command_line_finds_its_rows_in_the_ledger(ledger, argv, runs, tmp_path):
    """``scripts/bench_train.py ... --collect`` as a user runs it: the ledger's rows are found by the keys the script
    composes from its command line (nothing is trained: a row not found is "not run yet", and no row at all fails)."""
    copy = tmp_path / ledger
    entries = _entries(ledger)
    copy.write_text("".join(json.dumps({**e, "key": json.loads(_recorded(e["key"]))}) + "\n" for e in entries))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), BEVLABELS_DATA=str(tmp_path / "data"))
    cmd = [sys.executable, "scripts/bench_train.py", *argv, "--out", str(out), "--ledger", str(copy), "--collect"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not run yet" not in r.stdout, r.stdout
    got = json.loads((out / "comparison.json").read_text())
    by_run = {(e["key"]["experiment"], e["key"]["seed"], e["key"]["steps"]): e["row"] for e in entries}
    assert got == [by_run[run] for run in runs]
    assert copy.read_text().count("\n") == len(entries)  # found, so nothing recorded again
