"""Time the training step with 1x1 convolutions as GEMMs and as oneDNN's: ``python scripts/bench_step.py``.

The benchmark is :mod:`trainer.bench.step` (its docstring); this command is ``python -m trainer.bench.step`` with
the same arguments.
"""

from trainer.bench.step import main

if __name__ == "__main__":
    main()
