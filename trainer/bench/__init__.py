"""Benchmarks of the camera detectors: the CPU bench model, the run ledger, the runner and its tables.

- :mod:`trainer.bench.cpu`: the CPU bench model's overrides (``--model cpu``; :mod:`trainer.tiny` is the tests' size);
- :mod:`trainer.bench.ledger`: finished runs' rows kept in ``results/ledgers/*.jsonl``, keyed by what the run is;
- :mod:`trainer.bench.runs`: one run (``trainer.train`` then ``trainer.evaluate``), reused when finished;
- :mod:`trainer.bench.tables`: a run's scores, summaries over seeds, markdown tables;
- :mod:`trainer.bench.ablate`: an ablation's rows x seeds (``scripts/ablate.py``, ``python -m trainer.bench.ablate``);
- :mod:`trainer.bench.step`, :mod:`trainer.bench.profile_step`: the CPU time of one training step
  (``scripts/bench_step.py``, ``scripts/profile_step.py``).

``scripts/bench_train.py`` is the benchmark command that drives them.
"""
