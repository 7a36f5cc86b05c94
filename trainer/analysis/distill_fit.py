"""How well trained models' distilled BEV maps match their target, on object cells and on the rest.

For each run folder (``<run>/checkpoints/last.ckpt``, as ``scripts/ablate.py`` and
``scripts/bench_train.py`` write them), predict the checkpoint's validation split and read the
distillation fit of :mod:`trainer.metrics_distill`: the mean cosine similarity of the projected BEV
map to the label store's target on occupied cells inside a GT box (``cos obj``) and on the other
occupied cells (``cos bg``); beside each, the best a constant direction scores there (``const obj``,
``const bg``: a map that knows only "object here" scores about that). No devkit evaluation runs, so this is quick: about a minute a run on
one CPU thread for the CPU model on ``mini_val``.

Each run's numbers are kept in ``<run>/eval/distill_fit.json`` and reused (``--force`` recomputes).
A run whose evaluation (``python -m trainer.evaluate``, which gathers the same fit in its prediction
pass) already wrote them to ``eval/extra_metrics.json`` is read from there.
Runs named ``<row>-s<seed>`` are grouped by row: mean +- spread (half the range) over seeds, as the
ablation tables. A model without a distillation projection, or a store without DINOv2 grids, is
reported as such, not scored.

    python scripts/distill_fit.py outputs/ablate/table10_weight/w*-s* --out results/distill_fit_table10.md
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

from trainer.bench.tables import markdown, summarise

KEYS = ("cos obj", "const obj", "cos bg", "const bg", "object cells", "background cells")
#: their names in ``extra_eval`` (``distill_fit/<name>``), in the same order
EXTRA_KEYS = ("cos_object", "cos_object_constant", "cos_background", "cos_background_constant")
EXTRA_KEYS += ("object_cells", "background_cells")


def fit_of(run_dir: Path, split: str = "val", force: bool = False) -> dict:
    """The distillation fit of ``run_dir``'s last checkpoint on ``split`` (cached in ``eval/distill_fit.json``)."""
    cache = run_dir / "eval" / "distill_fit.json"
    if cache.is_file() and not force:
        cached = json.loads(cache.read_text())
        if cached.get("split") == split and ("note" in cached or all(k in cached for k in KEYS)):
            return cached
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/last.ckpt (train the run first)")
    evaluated = from_evaluation(run_dir, ckpt) if split == "val" and not force else None
    if evaluated is not None:
        return evaluated
    from trainer.eval.predict import build_datamodule, predict
    from trainer.lit_base import load_checkpoint

    t0 = time.perf_counter()
    loaded = load_checkpoint(ckpt)
    model = loaded.model
    if getattr(getattr(model, "detector", None), "distill", None) is None:
        return remember(
            cache, {"split": split, "note": "no distillation projection (model.detector.distill_channels is null)"}
        )
    dm = build_datamodule(loaded.config, num_workers=0, load_dino=True)
    dm.prepare_data()
    dm.setup("predict")
    predictions = predict(model, dm, split)
    extra = model.extra_eval(predictions, dm)
    if "distill_fit/object_cells" not in extra:
        return remember(cache, {"split": split, "note": f"{dm.label_store}: no dino grids were read"})
    out = {
        "split": split,
        **{k: extra[f"distill_fit/{e}"] for k, e in zip(KEYS, EXTRA_KEYS)},
        "keyframes": len(predictions),
        "global_step": loaded.global_step,
        "label_store": str(dm.label_store),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return remember(cache, out)


def remember(cache: Path, fit: dict) -> dict:
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(fit, indent=2))
    return fit


def from_evaluation(run_dir: Path, ckpt: Path) -> dict | None:
    """The fit ``python -m trainer.evaluate`` already wrote (``eval/extra_metrics.json``, val split), if it did.

    Used only when the evaluation is newer than the checkpoint (it scored this checkpoint).
    """
    extra_path = run_dir / "eval" / "extra_metrics.json"
    if not extra_path.is_file() or extra_path.stat().st_mtime < ckpt.stat().st_mtime:
        return None
    extra = json.loads(extra_path.read_text())
    names = dict(zip(KEYS, EXTRA_KEYS))
    if not all(f"distill_fit/{v}" in extra for v in names.values()):
        return None
    import torch

    meta = torch.load(ckpt, map_location="cpu", weights_only=False)
    out = {"split": "val", **{k: extra[f"distill_fit/{v}"] for k, v in names.items()}}
    out.update(global_step=int(meta.get("global_step", -1)), source=str(extra_path))
    return out


def row_name(run_dir: Path) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+)-s(\d+)", run_dir.name)
    return (m.group(1), int(m.group(2))) if m else (run_dir.name, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="run folders (each with checkpoints/last.ckpt)")
    p.add_argument("--split", default="val", help="the checkpoint data module's split to predict (default val)")
    p.add_argument("--out", type=Path, default=None, help="write the tables to this markdown file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--force", action="store_true", help="recompute runs whose eval/distill_fit.json exists")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    runs, notes = [], []
    for i, run_dir in enumerate(a.runs, 1):
        name, seed = row_name(run_dir)
        print(f"[{i}/{len(a.runs)}] {run_dir}", flush=True)
        fit = fit_of(run_dir, a.split, a.force)
        if "note" in fit:
            notes.append(f"- `{run_dir.name}`: {fit['note']}")
            continue
        runs.append({"experiment": name, "seed": seed, **{k: fit[k] for k in KEYS}, "step": fit["global_step"]})
    command = shlex.join(["python", "scripts/distill_fit.py", *(sys.argv[1:] if argv is None else argv)])
    text = f"# Distillation fit by region ({a.split})\n\n`{command}`\n"
    if runs:
        text += f"\n## Runs\n\n{markdown(runs)}\n"
        summary = summarise(runs, ("cos obj", "const obj", "cos bg", "const bg"))
        text += f"\n## Mean +- spread over seeds\n\n{markdown(summary)}\n"
    if notes:
        text += "\n## Not scored\n\n" + "\n".join(notes) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
