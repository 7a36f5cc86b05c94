"""How fast the sparse head learns to localise on a perfect BEV map: ``python scripts/head_convergence.py``.

The test is :mod:`trainer.analysis.head_convergence` (its docstring); this command is
``python -m trainer.analysis.head_convergence`` with the same arguments.
"""

from trainer.analysis.head_convergence import main

if __name__ == "__main__":
    main()
