"""Tabulate ``trainer.evaluate`` folders side by side: ``python scripts/score_table.py <eval folder> ...``.

    python scripts/score_table.py outputs/bench_train/dvd-3000*/dvd/eval outputs/bench_train/dvd-3000*/dvd/eval_nms
    python scripts/score_table.py ... --out results/table.md

What it is for: the same checkpoints scored more than one way (``trainer.evaluate ... nms=circle
out=<run>/eval_nms`` beside ``bench_train.py``'s ``<run>/eval``), or runs of different sweeps, in one
table. Per folder, from its ``metrics_summary.json`` (the devkit's numbers, nothing recomputed): the
decoding it records (``none``, ``circle``; ``none`` for an evaluation from before the option, which decoded without NMS), NDS, mAP,
car AP and its AP at the devkit's four distance thresholds, mATE / mASE / mAOE, and AMOTA and IDS when
tracking was scored. The training step comes from the checkpoint the folder sits next to
(``<run>/checkpoints/last.ckpt``), when it is there. Then, per run name and decoding, the mean and the
spread (half the range) of NDS, mAP and car AP over the folders, the way ``bench_train.py`` summarises
seeds: the run name is the name of the folder the evaluation sits in, without a ``-s<seed>`` suffix
(``outputs/ablate/table7_oracle/dvd_pv-s2/eval_nms`` is ``dvd_pv``), so the seeds of a row group together.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

THRESHOLDS = ("0.5", "1.0", "2.0", "4.0")


def row_of(ev: Path) -> dict:
    """One row of an evaluation folder (module docstring)."""
    from trainer.bench.tables import scores_of

    path = ev / "metrics_summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"score_table: {ev} has no metrics_summary.json (not a trainer.evaluate folder?)")
    summary = json.loads(path.read_text())
    if "nd_score" not in summary:
        raise ValueError(f"score_table: {path} is not a nuScenes DetectionEval summary (AV2?)")
    scores = scores_of(summary)
    car = summary.get("label_aps", {}).get("car", {})
    run = re.sub(r"-s\d+$", "", ev.resolve().parent.name)
    # an evaluation from before the option has no record, and it decoded without NMS
    row = {
        "evaluation": str(ev),
        "run": run,
        "decoding": (summary.get("decoding") or {}).get("nms", "none"),
        "step": "",
    }
    ckpt = ev.parent / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        import torch

        row["step"] = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", -1))
    row.update({k: scores[k] for k in ("NDS", "mAP", "car AP")})
    row["car AP @0.5/1/2/4 m"] = " / ".join(f"{car[t]:.3f}" for t in THRESHOLDS) if car else ""
    row.update({k: scores[k] for k in ("mATE", "mASE", "mAOE")})
    if "AMOTA" in scores:
        row["AMOTA"], row["IDS"] = scores["AMOTA"], int(scores["IDS"])
    return row


def main(argv: list[str] | None = None) -> None:
    from trainer.bench.tables import markdown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evals", nargs="+", type=Path, help="trainer.evaluate output folders")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    a = p.parse_args(argv)

    rows = [row_of(ev) for ev in a.evals]
    means = []
    for run, dec in dict.fromkeys((r["run"], r["decoding"]) for r in rows):
        group = [r for r in rows if (r["run"], r["decoding"]) == (run, dec)]
        m = {"run": run, "decoding": dec, "evaluations": len(group)}
        for k in ("NDS", "mAP", "car AP"):
            v = [float(r[k]) for r in group]
            m[k] = f"{sum(v) / len(v):.4f} +- {(max(v) - min(v)) / 2:.4f}"
        means.append(m)
    text = markdown(rows) + "\n\nMean +- spread (half the range) per run and decoding:\n\n" + markdown(means) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
        print(f"written: {a.out}")


if __name__ == "__main__":
    main()
