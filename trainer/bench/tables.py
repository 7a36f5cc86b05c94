"""Benchmark tables: a run's scores from its evaluation, summaries over seeds, markdown.

Used by ``scripts/bench_train.py``, ``scripts/ablate.py`` (:mod:`trainer.bench.ablate`),
:mod:`trainer.analysis.score_table` and :mod:`trainer.analysis.distill_fit`.
"""

from __future__ import annotations

import json
from pathlib import Path

#: the summary columns (mean +- spread over seeds) of each evaluation's rows
SUMMARY_KEYS = {"nuscenes": ("NDS", "mAP", "car AP"), "av2": ("AP", "CDS", "vehicle AP")}


def scores_of(summary: dict) -> dict:
    """The score columns of a ``metrics_summary.json``: the nuScenes devkit's, or av2's (``trainer.evaluate``)."""
    if "nd_score" in summary:  # DetectionEval
        tp = summary["tp_errors"]
        track = summary.get("tracking") or {}
        out = {
            "NDS": summary["nd_score"],
            "mAP": summary["mean_ap"],
            "car AP": summary["mean_dist_aps"].get("car", float("nan")),
            "mATE": tp["trans_err"],
            "mASE": tp["scale_err"],
            "mAOE": tp["orient_err"],
            "mAVE": tp["vel_err"],
        }
        aps_1m = [aps["1.0"] for aps in summary.get("label_aps", {}).values() if "1.0" in aps]
        if aps_1m:  # the devkit's AP at its 1 m centre-distance threshold, averaged over its classes as mAP is
            out["AP@1m"] = sum(aps_1m) / len(aps_1m)
        if "amota" in track:  # TrackingEval (trainer.evaluate tracking=true)
            out["AMOTA"], out["IDS"] = track["amota"], track["ids"]
        out.update({f"AP {c}": ap for c, ap in summary["mean_dist_aps"].items()})  # per class
        return out
    # av2.evaluation.detection: its means over the categories with GT (its own AVERAGE_METRICS row averages all
    # 26, absent ones at AP 0), and its REGULAR_VEHICLE row (the car of AV2)
    mean = summary["mean_over_gt_categories"]
    return {
        "AP": mean["AP"],
        "CDS": mean["CDS"],
        "vehicle AP": summary["per_category"]["REGULAR_VEHICLE"]["AP"],
        "mATE": mean["ATE"],
        "mASE": mean["ASE"],
        "mAOE": mean["AOE"],
        "AP (av2, /26)": summary["AP"],
    }


def row_of(name: str, run_dir: Path, wall: float, batch_size: int = 2, peak_rss: int | None = None, seed=None) -> dict:
    """One table row from a run's evaluation files and its checkpoint."""
    ev = run_dir / "eval"
    summary = json.loads((ev / "metrics_summary.json").read_text())
    extra = json.loads((ev / "extra_metrics.json").read_text()) if (ev / "extra_metrics.json").is_file() else {}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    import torch

    meta = torch.load(ckpt, map_location="cpu", weights_only=False)
    steps = int(meta.get("global_step", -1))
    return {
        "experiment": name,
        "seed": seed,
        **scores_of(summary),
        "fg SILog": extra.get("fg_depth/silog"),
        "fg AbsRel": extra.get("fg_depth/abs_rel"),
        "fg RMSE": extra.get("fg_depth/rmse"),
        "distill cos obj": extra.get("distill_fit/cos_object"),  # trainer/metrics_distill.py
        "distill cos bg": extra.get("distill_fit/cos_background"),
        "steps": steps,
        "epochs": int(meta.get("epoch", -1)) + 1,
        "train s": f"{wall:.1f}",
        "samples/s": f"{steps * batch_size / wall:.3f}" if wall > 0 else "",  # training wall incl. validation
        "peak RSS GiB": f"{peak_rss / 2**30:.2f}" if peak_rss else "",
    }


def summarise(rows: list[dict], keys=("NDS", "mAP", "car AP")) -> list[dict]:
    """Per experiment (first-seen order): n runs, and per key the mean and spread (half the range) over seeds,
    and ``> spread`` for each key: whether its mean differs from the first experiment's by more than both
    spreads (never for the first experiment itself; with one seed, no spread: ``n/a``)."""
    names = list(dict.fromkeys(r["experiment"] for r in rows))
    stats = {}
    for n in names:
        vals = {k: [float(r[k]) for r in rows if r["experiment"] == n] for k in keys}
        stats[n] = {k: (sum(v) / len(v), (max(v) - min(v)) / 2) for k, v in vals.items()}
        stats[n]["n"] = len(vals[keys[0]])
    out = []
    base = names[0]
    for n in names:
        row = {"experiment": n, "seeds": stats[n]["n"]}
        for k in keys:
            m, sp = stats[n][k]
            row[k] = f"{m:.4f} +- {sp:.4f}"
        for k in keys:
            if n == base:
                row[f"{k} vs {base}"] = "-"
            elif min(stats[n]["n"], stats[base]["n"]) < 2:
                row[f"{k} vs {base}"] = "n/a (one seed)"
            else:
                diff = stats[n][k][0] - stats[base][k][0]
                beyond = abs(diff) > max(stats[n][k][1], stats[base][k][1])
                row[f"{k} vs {base}"] = f"{diff:+.4f} ({'beyond' if beyond else 'within'} spread)"
        out.append(row)
    return out


def paired(rows: list[dict], keys, reference: dict[str, str]) -> list[dict]:
    """Per-seed paired differences: for each experiment ``e`` with a reference ``reference[e]`` (another experiment
    name), per key, the differences ``e - reference`` on the seeds both have, as mean +- SD (the sample standard
    deviation; n/a with one seed), n, and how many have the sign of the mean (``3/3``: every seed agrees).

    Seeds pair the runs: the same seed draws the same initialisation, data order and (``data.box_fraction``) the same
    labelled scenes, so the paired difference removes what the seeds share and is what a protocol reports."""
    by = {(r["experiment"], r.get("seed")): r for r in rows}
    out = []
    for e, ref in reference.items():
        seeds = sorted(
            {s for (n, s) in by if n == e and (ref, s) in by},
            key=lambda s: (s is None, s),
        )
        row = {"experiment": e, "vs": ref, "paired seeds": len(seeds)}
        for k in keys:
            d = []
            for s in seeds:
                a, b = by[(e, s)].get(k), by[(ref, s)].get(k)
                if a is not None and b is not None:
                    d.append(float(a) - float(b))
            if not d:
                row[k] = ""
                continue
            m = sum(d) / len(d)
            sd = (sum((x - m) ** 2 for x in d) / (len(d) - 1)) ** 0.5 if len(d) > 1 else None
            agree = sum(1 for x in d if (x > 0) == (m > 0) and x != 0)
            row[k] = f"{m:+.4f} +- {sd:.4f} ({agree}/{len(d)})" if sd is not None else f"{m:+.4f} (one seed)"
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    """A markdown table of the union of the rows' columns (first-seen order; a row without a column: blank)."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
