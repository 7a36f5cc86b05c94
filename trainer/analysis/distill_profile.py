"""Where a camera model's distilled BEV map puts an object's features: profiles along and across the viewing ray.

    python -m trainer.analysis.distill_profile outputs/ablate/label_scarce_bevdepth/b25_w7-s1 [more runs] \
        --out results/distill_profile.md --png results/distill_profile.png [--reach 12] [--threads 1]

The distillation fit by region (:mod:`trainer.metrics_distill`) says *how well* the distilled map matches its
target on object cells; this says *where* the object's features went when they did not land on its cells. For
every GT box of the validation split (the checkpoint's own data config, no augmentation) with occupied target
cells in its footprint:

- ``t``: the object's target, the mean of the unit target vectors (the store's ``dino/feat``) over its occupied
  footprint cells;
- the **radial profile**: the cosine similarity of the distilled map ``proj(bev)`` to ``t`` at points
  ``c + s u``, ``u`` the unit ray from the ego to the box centre ``c``, ``s`` from ``-reach`` to ``+reach``
  metres (negative: nearer the ego);
- the **lateral profile**: the same across the ray, at ``c + s v`` (``v`` is ``u`` turned 90 degrees left);
- the **target's own profiles**, the same cosine of the store's grid at occupied cells: what a perfect map shows.

Each profile is averaged over the objects (nearest-cell reads). Reported per run and per range band: the peak's
offset (metres; radial < 0: the features sit nearer the ego than the object), the contrast (the peak minus the
mean of the profile's two ends, which lie ``reach`` metres away) and the width at half contrast (metres). A
camera model whose depth is uncertain spreads an object's features along its ray: its radial profile is wider
and lower than its lateral one, while the target's two are alike (an object's footprint). A model whose map holds
no object features has no peak at all.

A checkpoint without a distillation projection (``distill_channels`` null: the weight-0 arm's projection does
exist but was never trained, and is reported all the same, as the check that an untrained 1x1 projection shows
no peak) or a store without grids is reported as such.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

#: range bands of the tables, metres from the ego (the box centre's planar distance)
BANDS = ((0.0, 20.0), (20.0, 35.0), (35.0, 60.0))


def offsets(reach: float, step: float) -> np.ndarray:
    """The profile's sample offsets ``(S,)``, metres, symmetric about 0 and containing it."""
    n = int(round(reach / step))
    return np.arange(-n, n + 1) * step


def object_targets(
    target: torch.Tensor, count: torch.Tensor, boxes: torch.Tensor, grid
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box its target ``t`` ``(M', C)`` (the mean unit target vector over its occupied footprint cells) and the
    indices ``(M',)`` of the boxes that have such cells. ``target (C, H, W)``, ``count (H, W)``, ``boxes (M, >=7)``."""
    from trainer.metrics_distill import object_cells

    unit = target / target.norm(dim=0, keepdim=True).clamp(min=1e-6)  # (C, H, W)
    ts, keep = [], []
    for m in range(boxes.shape[0]):
        cells = object_cells(grid, boxes[m : m + 1]) & (count > 0)  # (H, W)
        if not cells.any():
            continue
        ts.append(unit[:, cells].mean(1))
        keep.append(m)
    if not ts:
        return torch.zeros(0, target.shape[0]), torch.zeros(0, dtype=torch.long)
    return torch.stack(ts), torch.as_tensor(keep, dtype=torch.long)


def read_cells(grid, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest cells of metric points ``xy (..., 2)``: ``(iy, ix, inside)`` each ``(...)``."""
    ix, iy, inside = grid.cell_index(xy)
    return iy, ix, inside


def profiles(
    feat: torch.Tensor,
    t: torch.Tensor,
    centres: np.ndarray,
    grid,
    s: np.ndarray,
    valid: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine profiles of map ``feat (C, H, W)`` to targets ``t (M, C)`` along and across the rays through box
    centres ``centres (M, 2)`` (ego frame, metres) at offsets ``s (S,)``.

    Returns ``(radial, lateral)`` each ``(M, S)`` float64, NaN where a point falls outside the grid or, with
    ``valid (H, W)`` bool, on a cell that is not valid (the target's unoccupied cells).
    """
    r = np.linalg.norm(centres, axis=1, keepdims=True).clip(min=1e-6)
    u = centres / r  # (M, 2) unit ray
    v = np.stack([-u[:, 1], u[:, 0]], 1)  # (M, 2) the ray turned 90 degrees left
    unit = feat / feat.norm(dim=0, keepdim=True).clamp(min=1e-6)
    tn = t / t.norm(dim=1, keepdim=True).clamp(min=1e-6)
    out = []
    for d in (u, v):
        pts = centres[:, None, :] + s[None, :, None] * d[:, None, :]  # (M, S, 2)
        iy, ix, inside = read_cells(grid, pts)
        vals = unit[:, torch.as_tensor(iy), torch.as_tensor(ix)]  # (C, M, S)
        cos = torch.einsum("cms,mc->ms", vals.double(), tn.double()).numpy()
        ok = inside.copy()
        if valid is not None:
            ok &= valid[torch.as_tensor(iy), torch.as_tensor(ix)].numpy()
        out.append(np.where(ok, cos, np.nan))
    return out[0], out[1]


def summarise_profile(p: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Peak offset, contrast (peak minus the mean of the two ends) and width at half contrast of a mean profile."""
    if not np.isfinite(p).any():
        return {"peak m": float("nan"), "contrast": float("nan"), "width m": float("nan")}
    k = int(np.nanargmax(p))
    ends = np.nanmean([p[0], p[-1]])
    contrast = float(p[k] - ends)
    half = ends + 0.5 * contrast
    lo = k
    while lo > 0 and np.isfinite(p[lo - 1]) and p[lo - 1] >= half:
        lo -= 1
    hi = k
    while hi < len(p) - 1 and np.isfinite(p[hi + 1]) and p[hi + 1] >= half:
        hi += 1
    step = float(s[1] - s[0]) if len(s) > 1 else 0.0
    return {"peak m": float(s[k]), "contrast": contrast, "width m": (hi - lo + 1) * step}


@torch.no_grad()
def profile_run(run_dir: Path, reach: float, split: str = "val", max_batches: int | None = None) -> dict:
    """The mean profiles of one run's last checkpoint (see the module docstring), per range band and over all."""
    from trainer.eval.predict import build_datamodule
    from trainer.lit_base import load_checkpoint

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/last.ckpt (train the run first)")
    loaded = load_checkpoint(ckpt)
    model = loaded.model.eval()
    proj = getattr(getattr(model, "detector", None), "distill", None)
    if proj is None:
        return {"note": "no distillation projection (model.detector.distill_channels is null)"}
    grid = model.detector.grid
    step = 0.5 * min(grid.cell_size)
    s = offsets(reach, step)
    dm = build_datamodule(loaded.config, num_workers=0, load_dino=True)
    dm.prepare_data()
    dm.setup("validate" if split == "val" else "fit")
    loader = dm.val_dataloader() if split == "val" else dm.train_dataloader()
    rows = {k: [] for k in ("model_r", "model_l", "target_r", "target_l", "range")}
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if "dino_feat" not in batch:
            return {"note": f"{dm.label_store}: no dino grids were read"}
        outputs = model(batch)
        mapped = proj(outputs["bev"].float())  # (B, C_t, H, W)
        for b, boxes in enumerate(batch["gt_boxes"]):
            target, count = batch["dino_feat"][b].float(), batch["dino_count"][b]
            t, keep = object_targets(target, count, boxes, grid)
            if len(keep) == 0:
                continue
            centres = boxes[keep, :2].double().numpy()
            mr, ml = profiles(mapped[b], t, centres, grid, s)
            tr, tl = profiles(target, t, centres, grid, s, valid=count > 0)
            for k, v in zip(("model_r", "model_l", "target_r", "target_l"), (mr, ml, tr, tl)):
                rows[k].append(v)
            rows["range"].append(np.linalg.norm(centres, axis=1))
    if not rows["range"]:
        return {"note": "no GT box with occupied target cells in the split"}
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    out = {"offsets": s.tolist(), "global_step": loaded.global_step, "objects": int(len(cat["range"])), "bands": {}}
    bands = [("all", 0.0, np.inf), *[(f"{lo:g}-{hi:g} m", lo, hi) for lo, hi in BANDS]]
    for name, lo, hi in bands:
        sel = (cat["range"] >= lo) & (cat["range"] < hi)
        if not sel.any():
            continue
        band = {"objects": int(sel.sum())}
        for k in ("model_r", "model_l", "target_r", "target_l"):
            with warnings.catch_warnings():  # an offset no object reaches (off the grid) is NaN, said once here
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.where(sel[:, None], cat[k], np.nan), axis=0)
            band[k] = mean.tolist()
            band[k + "_summary"] = summarise_profile(mean, s)
        out["bands"][name] = band
    return out


def table_rows(name: str, seed: int | None, prof: dict) -> list[dict]:
    rows = []
    for band, b in prof["bands"].items():
        row = {"experiment": name, "seed": seed, "range": band, "objects": b["objects"]}
        for k, label in (("model_r", "map radial"), ("model_l", "map lateral")):
            sm = b[k + "_summary"]
            row.update(
                {
                    f"{label} peak m": sm["peak m"],
                    f"{label} contrast": sm["contrast"],
                    f"{label} width m": sm["width m"],
                }
            )
        for k, label in (("target_r", "target radial"), ("target_l", "target lateral")):
            sm = b[k + "_summary"]
            row.update({f"{label} contrast": sm["contrast"], f"{label} width m": sm["width m"]})
        rows.append(row)
    return rows


def by_row(profs: dict[str, dict]) -> dict[str, dict]:
    """Runs ``<row>-s<seed>`` grouped by row: each band's profiles averaged over the row's seeds (the objects are the
    same split's, so every seed has the same ones)."""
    from trainer.analysis.distill_fit import row_name

    groups: dict[str, list[dict]] = {}
    for run, prof in profs.items():
        groups.setdefault(row_name(Path(run))[0], []).append(prof)
    out = {}
    for row, members in groups.items():
        first = members[0]
        bands = {}
        for band, b in first["bands"].items():
            if not all(band in m["bands"] for m in members):
                continue
            bands[band] = {"objects": b["objects"]}
            for k in ("model_r", "model_l", "target_r", "target_l"):
                bands[band][k] = np.mean([m["bands"][band][k] for m in members], 0).tolist()
        out[f"{row} ({len(members)} seed{'s' if len(members) > 1 else ''})"] = {
            "offsets": first["offsets"],
            "bands": bands,
        }
    return out


def plot(profs: dict[str, dict], path: Path) -> None:
    """One panel per range band: each row's radial (solid) and lateral (dashed) profile (mean over its seeds), the
    target's in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = ["all", *[f"{lo:g}-{hi:g} m" for lo, hi in BANDS]]
    fig, axes = plt.subplots(1, len(bands), figsize=(4.2 * len(bands), 3.6), sharey=True)
    first = next(iter(profs.values()))
    s = np.asarray(first["offsets"])
    for ax, band in zip(axes, bands):
        shown_target = False
        for i, (name, prof) in enumerate(profs.items()):
            b = prof["bands"].get(band)
            if b is None:
                continue
            colour = f"C{i}"
            ax.plot(s, b["model_r"], "-", color=colour, label=f"{name} radial")
            ax.plot(s, b["model_l"], "--", color=colour, label=f"{name} lateral")
            if not shown_target:
                ax.plot(s, b["target_r"], "-", color="k", lw=1, label="target radial")
                ax.plot(s, b["target_l"], "--", color="k", lw=1, label="target lateral")
                shown_target = True
        ax.axvline(0, color="0.7", lw=0.8)
        n = first["bands"].get(band, {}).get("objects", 0)
        ax.set_title(f"{band} ({n} objects)")
        ax.set_xlabel("offset from the box centre, m (radial: - nearer the ego)")
    axes[0].set_ylabel("cosine to the object's target")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Where the distilled map puts an object's features (mean over val objects)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="run folders (each with checkpoints/last.ckpt)")
    p.add_argument("--reach", type=float, default=12.0, help="metres either side of the box centre (default 12)")
    p.add_argument("--split", default="val", choices=("val", "train"), help="the split to read (default val)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (a quick look)")
    p.add_argument("--out", type=Path, default=None, help="write the table (markdown) here; the raw profiles beside it")
    p.add_argument("--png", type=Path, default=None, help="draw the profiles here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from trainer.analysis.distill_fit import row_name
    from trainer.bench.tables import markdown

    profs, rows, notes = {}, [], []
    for i, run_dir in enumerate(a.runs, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(a.runs)}] {run_dir}", flush=True)
        prof = profile_run(run_dir, a.reach, a.split, a.max_batches)
        if "note" in prof:
            notes.append(f"- `{run_dir.name}`: {prof['note']}")
            continue
        name, seed = row_name(run_dir)
        profs[run_dir.name] = prof
        rows += table_rows(name, seed, prof)
        print(f"    {prof['objects']} objects, {time.perf_counter() - t0:.0f} s", flush=True)
    command = shlex.join(
        ["python", "-m", "trainer.analysis.distill_profile", *(sys.argv[1:] if argv is None else argv)]
    )
    text = f"# Where the distilled map puts an object's features ({a.split})\n\n`{command}`\n"
    if rows:
        text += f"\n{markdown(rows)}\n"
    if notes:
        text += "\n## Not profiled\n\n" + "\n".join(notes) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps(profs))
    if a.png and profs:
        plot(by_row(profs), a.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
