"""The benchmarks ``trainer.evaluate`` and ``trainer.track`` score with: one module per benchmark."""
