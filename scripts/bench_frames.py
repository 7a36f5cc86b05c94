"""What two-frame BEV fusion costs: ``python scripts/bench_frames.py [--pairs bevdepth:bevdepth4d dvd:dvd4d]``.

The benchmark is :mod:`trainer.bench.frames` (its docstring); this command is
``python -m trainer.bench.frames`` with the same arguments.
"""

from trainer.bench.frames import main

if __name__ == "__main__":
    main()
