"""Time and profile one CPU training step of a camera detector: ``python scripts/profile_step.py dvd``.

The profile is :mod:`trainer.bench.profile_step` (its docstring); this command is
``python -m trainer.bench.profile_step`` with the same arguments.
"""

from trainer.bench.profile_step import main

if __name__ == "__main__":
    main()
