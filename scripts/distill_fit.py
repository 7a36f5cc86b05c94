#!/usr/bin/env python
"""How well trained models' distilled BEV maps match their target: ``python scripts/distill_fit.py <run folders>``.

The analysis is :mod:`trainer.analysis.distill_fit` (its docstring); this command is
``python -m trainer.analysis.distill_fit`` with the same arguments.
"""

from trainer.analysis.distill_fit import main

if __name__ == "__main__":
    raise SystemExit(main())
