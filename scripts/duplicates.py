"""How many detections have a same-class neighbour close by: ``python scripts/duplicates.py <eval folder> ...``.

The count is :mod:`trainer.analysis.duplicates` (its docstring); this command is
``python -m trainer.analysis.duplicates`` with the same arguments.
"""

from trainer.analysis.duplicates import main

if __name__ == "__main__":
    main()
