"""Where a detector's boxes sit relative to the truth: ``python scripts/localisation_bias.py RESULTS --root ROOT``.

The analysis is :mod:`trainer.analysis.localisation_bias` (its docstring); this command is
``python -m trainer.analysis.localisation_bias`` with the same arguments.
"""

from trainer.analysis.localisation_bias import main

if __name__ == "__main__":
    main()
