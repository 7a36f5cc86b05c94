"""Analyses of the project's outputs, importable and tested: each module also runs as ``python -m trainer.analysis.<name>``."""
