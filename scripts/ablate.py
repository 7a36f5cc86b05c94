"""An ablation in one command: ``python scripts/ablate.py conf/ablation/<name>.yaml --seeds 1 2 --steps 600``.

The sweep is :mod:`trainer.bench.ablate` (its docstring: the ablation file, resuming, the ledger, the table);
this command is ``python -m trainer.bench.ablate`` with the same arguments.
"""

import sys

from trainer.bench.ablate import main

if __name__ == "__main__":
    sys.exit(main())
