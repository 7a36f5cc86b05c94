"""Strip a Lightning checkpoint down to what rebuilds and runs the model: ``python scripts/strip_checkpoint.py IN OUT``.

Keeps the weights (``state_dict``), the stored config (from which :func:`trainer.lit_base.load_checkpoint`
rebuilds the model), ``epoch``, ``global_step`` and the versions; drops the optimiser and scheduler states,
the callbacks' and loops' states, which only resuming training needs (for a small model they are two thirds
of the file). The result evaluates (``trainer.evaluate``) and caches teacher maps (``pipelines.teacher``) like
the original, with the same state-dict sha256; it cannot resume training. Prints both sizes and the sha256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: the entries that only resuming a training run reads
TRAINING_ONLY = (
    "optimizer_states",
    "lr_schedulers",
    "callbacks",
    "loops",
    "MixedPrecision",
    "native_amp_scaling_state",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="a checkpoint written by trainer.train")
    p.add_argument("dst", type=Path, help="where the stripped checkpoint goes (refuses to overwrite src)")
    a = p.parse_args(argv)
    if a.src.resolve() == a.dst.resolve():
        p.error("dst must differ from src")
    import torch

    from trainer.lit_base import load_checkpoint, state_dict_sha256

    ckpt = torch.load(a.src, map_location="cpu", weights_only=False)
    kept = {k: v for k, v in ckpt.items() if k not in TRAINING_ONLY}
    a.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, a.dst)
    loaded = load_checkpoint(a.dst)  # proves it rebuilds from its own config
    want = state_dict_sha256(ckpt["state_dict"])
    if loaded.state_dict_sha256 != want:
        raise SystemExit(f"{a.dst}: state dict sha256 {loaded.state_dict_sha256} differs from {a.src}'s {want}")
    mib = lambda f: f.stat().st_size / 2**20  # noqa: E731
    print(
        f"{a.src} ({mib(a.src):.1f} MiB) -> {a.dst} ({mib(a.dst):.1f} MiB); dropped "
        f"{[k for k in ckpt if k in TRAINING_ONLY]}; step {loaded.global_step}; state dict sha256 {want}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
