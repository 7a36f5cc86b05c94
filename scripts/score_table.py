"""Tabulate ``trainer.evaluate`` folders side by side: ``python scripts/score_table.py <eval folder> ...``.

The table is :mod:`trainer.analysis.score_table` (its docstring); this command is
``python -m trainer.analysis.score_table`` with the same arguments.
"""

from trainer.analysis.score_table import main

if __name__ == "__main__":
    main()
