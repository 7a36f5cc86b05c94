"""The ledger of finished benchmark runs: one JSON object a line, committed under ``results/ledgers/``.

A ledger for benchmarks longer than one machine's life. ``--ledger results/ledgers/<name>.jsonl``
(``scripts/bench_train.py``, ``scripts/ablate.py``) keeps each finished run's row in a JSON-lines file meant to be
committed: a run whose key (experiment, seed, steps, lr, batch size, model and the Hydra overrides, data paths left
out) is in the ledger is not retrained, and each run that finishes is appended at once, with the date, the commit and
the CPU. So a sweep spread over sessions on fresh machines (whose ``outputs/`` is gone) resumes from the ledger, and
its table keeps every run. To redo a run (its code changed), delete its line.

:meth:`Ledger.key` must stay byte-identical for the same command line: the ledgers hold hour-long runs keyed by
it (``tests/unit/test_bench_ledger.py`` checks keys against rows of ``results/ledgers/bench_dvd_cpu.jsonl`` and
``results/ledgers/bench_tig_cpu.jsonl``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: overrides that name a path on this machine, left out of a ledger key (the same run elsewhere has the same key)
MACHINE_OVERRIDES = ("data.label_store=", "dataset.root=", "hydra.run.dir=")


class Ledger:
    """Finished runs' rows, one JSON object a line (module docstring): ``{"key", "row", "recorded"}``.

    ``path`` None: an empty ledger that records nothing.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.entries: list[dict] = []
        self._lock = threading.Lock()  # runs finishing at once in ``ablate.py --jobs N`` append one line each
        if self.path is not None and self.path.is_file():
            for i, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    entry["key"], entry["row"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{self.path}:{i}: not a ledger entry ({e}); fix or delete the line") from e
                self.entries.append(entry)

    @staticmethod
    def key(name: str, seed: int, overrides: list[str], a, store: Sequence[str] = ()) -> dict:
        """What makes two runs the same run: never a path of one machine. The label store's path is left out, so
        ``store`` gives what made it (its ``pipelines.labels`` overrides; none: ``make labels``' own store on the
        preset and grid of ``overrides``). A ``--store`` of your own is not in the key. The label store's schema
        version is: a run on labels of another version (schema 1's leaked object features onto the ground behind
        objects, issue 32) is another run, so a ledger never answers for it."""
        from bevlabels.cache import SCHEMA_VERSION

        kept = [o for o in overrides if not o.startswith(MACHINE_OVERRIDES)]
        return {
            "experiment": name,
            "seed": seed,
            "steps": a.steps,
            "lr": a.lr if a.steps else None,
            "batch_size": a.batch_size,
            "model": a.model,
            "overrides": kept,
            "store": list(store),
            "labels_schema": SCHEMA_VERSION,
        }

    def find(self, key: dict) -> dict | None:
        """The row recorded under ``key`` (the last one, if recorded twice), or None."""
        rows = [e["row"] for e in self.entries if e["key"] == key]
        return rows[-1] if rows else None

    def record(self, key: dict, row: dict) -> None:
        if self.path is None:
            return
        entry = {"key": key, "row": row, "recorded": recorded_where()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a") as f:  # one line per run, as it finishes: nothing lost on a crash
            self.entries.append(entry)
            f.write(json.dumps(entry) + "\n")


def recorded_where() -> dict:
    """The date, the commit and the CPU of this machine, for a ledger entry."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cpu": cpu, "cores": os.cpu_count()}
