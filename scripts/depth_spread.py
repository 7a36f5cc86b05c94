"""A camera detector's depth distribution at foreground pixels: ``python scripts/depth_spread.py CKPT``.

The analysis is :mod:`trainer.analysis.depth_spread` (its docstring); this command is
``python -m trainer.analysis.depth_spread`` with the same arguments.
"""

from trainer.analysis.depth_spread import main

if __name__ == "__main__":
    main()
