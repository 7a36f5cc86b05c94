"""The oracle's own image features lifted into BEV with a checkpoint's depth: what the lift alone places where.

    python -m trainer.analysis.lifted_oracle outputs/ablate/label_scarce_bevdepth/b25_w7-s1 \
        [--depths model lidar uniform] [--samples 4] [--max-batches N] [--out results/lifted_oracle.md]

A distilled camera map is the image features lifted along each feature cell's ray by the predicted depth and summed
into BEV (:class:`~trainer.models.components.lift_splat.LiftSplat`). Even with perfect image features its cells
can match the label store's target only as well as the depth places them. This takes the image features out of the
question: on the validation split of a checkpoint trained on an oracle store (``features=synthetic_oracle``, whose
patch features are known mixes of class directions), each camera feature cell gets the **oracle's own patch
features**, averaged over ``--samples`` x ``--samples`` pixels of the cell (what the cell's receptive field holds),
and they are lifted with the checkpoint's own frustum, cameras and grid, under one of these depths:

- ``model``: the checkpoint's predicted depth distribution (what its distillation works under);
- ``lidar``: all of a cell's mass in the bin of its LiDAR depth (the nearest return in the cell, as the depth
  targets), cells without a return not lifted: the depth the label stage itself has;
- ``uniform``: the same mass in every bin (no depth at all);

and beside them the row ``student``: the checkpoint's own distilled map (its projection of its BEV map), scored on the
cells the ``model`` depth's lift reaches, so that the rows compare like with like.

The lifted map is compared with the store's target cell by cell, in the oracle's own channel space (no projection:
the cosine ignores scale, so sum pooling does not matter), on the occupied cells the lift reaches (``reached``: their
share of the occupied cells; ``lidar`` reaches only cells with a return in a camera feature cell), split into object
cells and the rest as :mod:`trainer.metrics_distill` splits them; beside each, the best constant direction of the
region. Also the object profiles of :mod:`trainer.analysis.distill_profile` (contrast and width along and across the
ray), to set beside the same profiles of the checkpoint's own distilled map.

This is not a ceiling of the student: its BEV encoder and projection, learned, can reshape what the lift places (and
its background fit beats the raw lift's). It answers a narrower question: with this depth, would image features that
knew every pixel's class put an object's features near the object? If the lifted oracle's object profile has clear
contrast and the checkpoint's own distilled map has none, the depth is not what stops the student: its image
features (or what its encoder makes of them) carry no object class.
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

DEPTHS = ("model", "lidar", "uniform")


def oracle_of_store(label_store: str):
    """The :class:`~bevlabels.features.oracle.SyntheticOracle` a store was made with (refused for any other store)."""
    from bevlabels.cache import LabelStoreReader
    from bevlabels.features.oracle import SyntheticOracle
    from bevlabels.leak import oracle_directions

    fm = LabelStoreReader(label_store).attrs.get("feature_model") or {}
    oracle_directions(fm, where=label_store)  # the refusal, with its message, for a store that is not an oracle's
    return SyntheticOracle(
        noise=float(fm["noise"]),
        instance_scale=float(fm["instance_scale"]),
        seed=int(fm["seed"]),
        out_channels=int(fm["channels"]),
        patch_size=int(fm.get("patch_size", 14)),
        image_height=fm.get("image_height"),
    )


def cell_features(
    patch_feats: torch.Tensor,
    image_size: tuple[int, int],
    img_from_aug: torch.Tensor,
    feat_hw: tuple[int, int],
    stride: int,
    samples: int,
) -> torch.Tensor:
    """The mean patch feature over ``samples x samples`` pixels of each feature cell of an augmented image:
    ``(C, h, w)``.

    ``patch_feats (C, hp, wp)``: the original image's patch features; ``image_size``: its ``(W, H)``;
    ``img_from_aug (3, 3)``: augmented pixel -> original pixel; ``feat_hw``: ``(h, w)`` of the model's feature map at
    ``stride`` pixels of the augmented image. Pixels outside the original image read the border patches.
    """
    from bevlabels.features.base import sample_features

    h, w = feat_hw
    offs = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples * stride  # within a cell
    us = (torch.arange(w, dtype=torch.float64)[:, None] * stride + offs[None]).reshape(-1)  # (w*S,)
    vs = (torch.arange(h, dtype=torch.float64)[:, None] * stride + offs[None]).reshape(-1)  # (h*S,)
    vv, uu = torch.meshgrid(vs, us, indexing="ij")  # (h*S, w*S)
    pix = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(-1, 3) @ img_from_aug.double().T  # (h*S*w*S, 3)
    uv = (pix[:, :2] / pix[:, 2:]).float()
    f = sample_features(patch_feats.float(), uv, image_size)  # (P, C)
    C = f.shape[1]
    f = f.view(h, samples, w, samples, C).mean((1, 3))  # (h, w, C)
    return f.permute(2, 0, 1).contiguous()


def lidar_depth(depth_map: torch.Tensor, bins) -> torch.Tensor:
    """``(B, N, D, h, w)``: one-hot in the bin of each cell's LiDAR depth ``depth_map (B, N, h, w)``, zero where the
    cell has none (or it is outside the bins)."""
    k, valid = bins.index(depth_map)
    one = torch.nn.functional.one_hot(k, bins.num).permute(0, 1, 4, 2, 3).float()  # (B, N, D, h, w)
    return one * valid[:, :, None].float()


@torch.no_grad()
def lifted_run(
    run_dir: Path,
    depths=DEPTHS,
    samples: int = 4,
    max_batches: int | None = None,
    reach: float = 12.0,
) -> dict:
    """The fit of the lifted oracle features under each depth source (module docstring), for one run's checkpoint."""
    from bevlabels.synthetic.generate import oracle_path, read_oracle
    from trainer.analysis.distill_profile import object_targets, offsets, profiles, summarise_profile
    from trainer.eval.predict import build_datamodule
    from trainer.lit_base import load_checkpoint
    from trainer.metrics_distill import DistillFit

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/last.ckpt (train the run first)")
    loaded = load_checkpoint(ckpt)
    model = loaded.model.eval()
    cam_bev = model.detector.camera_bev
    grid, bins, stride = cam_bev.grid, cam_bev.bins, cam_bev.downsample
    dm = build_datamodule(loaded.config, num_workers=0, load_dino=True)
    dm.prepare_data()
    dm.setup("validate")
    oracle = oracle_of_store(dm.label_store)
    frames = {f.token: f for f in dm.frames("val")}
    identity = torch.nn.Conv2d(oracle.out_channels, oracle.out_channels, 1, bias=False)
    identity.weight.data = torch.eye(oracle.out_channels)[:, :, None, None]
    fits = {d: DistillFit() for d in depths}
    s = offsets(reach, 0.5 * min(grid.cell_size))
    prof = {d: {"r": [], "l": []} for d in depths}
    counts = {d: np.zeros(2, np.int64) for d in depths}  # occupied cells reached, occupied cells
    student = getattr(model.detector, "distill", None)  # the checkpoint's own projection (None: it distils nothing)
    if student is not None:
        fits["student"], prof["student"], counts["student"] = DistillFit(), {"r": [], "l": []}, np.zeros(2, np.int64)
    for i, batch in enumerate(dm.val_dataloader()):
        if max_batches is not None and i >= max_batches:
            break
        if "dino_feat" not in batch:
            return {"note": f"{dm.label_store}: no dino grids were read"}
        B, N = batch["images"].shape[:2]
        Hi, Wi = batch["images"].shape[-2:]
        h, w = Hi // stride, Wi // stride
        ctx = torch.zeros(B, N, oracle.out_channels, h, w)
        for b, token in enumerate(batch["sample_token"]):
            frame = frames[token]
            for n, cam in enumerate(frame.cameras):
                cls, inst = read_oracle(oracle_path(Path(cam.image_path)))
                labels = torch.from_numpy(np.stack([cls, inst]))[None]
                patch = oracle(labels)[0]  # (C, hp, wp)
                img_from_aug = torch.linalg.inv(batch["aug_from_img"][b, n].double())
                ctx[b, n] = cell_features(patch, (cam.width, cam.height), img_from_aug, (h, w), stride, samples)
        outputs = model(batch)
        model_depth = outputs["depth_logits"].float().softmax(2)
        reach_mask = None  # the occupied cells the model depth's lift reaches: the student is scored on the same cells
        for d in depths:
            if d == "model":
                dist = model_depth
            elif d == "lidar":
                dist = lidar_depth(batch["depth_map"], bins)
            else:
                dist = torch.full((B, N, bins.num, h, w), 1.0 / bins.num)
            lifted = cam_bev.lift_splat(dist, ctx, batch["K"].float(), batch["ego_from_cam"].float())  # (B, C, H, W)
            occupied = batch["dino_count"] > 0
            reached = occupied & (lifted.abs().amax(1) > 0)
            if d == "model":
                reach_mask = reached
            counts[d] += [int(reached.sum()), int(occupied.sum())]
            count = batch["dino_count"] * reached  # the cells the lift reaches
            fits[d].update(lifted, identity, batch["dino_feat"].float(), count, batch["gt_boxes"], grid)
            for b, boxes in enumerate(batch["gt_boxes"]):
                t, keep = object_targets(batch["dino_feat"][b].float(), batch["dino_count"][b], boxes, grid)
                if len(keep):
                    r, la = profiles(lifted[b], t, boxes[keep, :2].double().numpy(), grid, s)
                    prof[d]["r"].append(r)
                    prof[d]["l"].append(la)
        if student is not None:  # the checkpoint's own distilled map, on the cells the model depth's lift reaches
            count = batch["dino_count"] * (reach_mask if reach_mask is not None else 1)
            fits["student"].update(
                outputs["bev"].float(), student, batch["dino_feat"].float(), count, batch["gt_boxes"], grid
            )
            counts["student"] += [int((count > 0).sum()), int((batch["dino_count"] > 0).sum())]
            for b, boxes in enumerate(batch["gt_boxes"]):
                t, keep = object_targets(batch["dino_feat"][b].float(), batch["dino_count"][b], boxes, grid)
                if len(keep):
                    r, la = profiles(
                        student(outputs["bev"][b : b + 1].float())[0], t, boxes[keep, :2].double().numpy(), grid, s
                    )
                    prof["student"]["r"].append(r)
                    prof["student"]["l"].append(la)
    out = {"global_step": loaded.global_step, "label_store": str(dm.label_store), "rows": {}}
    for d in fits:
        fit = fits[d].compute()
        row = {
            "cos obj": fit["cos_object"],
            "const obj": fit["cos_object_constant"],
            "cos bg": fit["cos_background"],
            "const bg": fit["cos_background_constant"],
        }
        for key, label in (("r", "radial"), ("l", "lateral")):
            if prof[d][key]:
                with warnings.catch_warnings():  # offsets off the grid for every object are NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(np.concatenate(prof[d][key]), 0)
                sm = summarise_profile(mean, s)
                row[f"{label} contrast"], row[f"{label} width m"] = sm["contrast"], sm["width m"]
        row["reached"] = counts[d][0] / max(counts[d][1], 1)
        row["object cells"], row["background cells"] = fit["object_cells"], fit["background_cells"]
        out["rows"][d] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "runs", type=Path, nargs="+", help="run folders (each with checkpoints/last.ckpt), on an oracle store"
    )
    p.add_argument("--depths", nargs="+", default=list(DEPTHS), choices=DEPTHS, help="depth sources (default all)")
    p.add_argument("--samples", type=int, default=4, help="pixels per feature-cell side averaged (default 4)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (a quick look)")
    p.add_argument(
        "--out", type=Path, default=None, help="write the table (markdown) here, the numbers beside it (.json)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from trainer.analysis.distill_fit import row_name
    from trainer.bench.tables import markdown

    rows, raw = [], {}
    for i, run_dir in enumerate(a.runs, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(a.runs)}] {run_dir}", flush=True)
        res = lifted_run(run_dir, a.depths, a.samples, a.max_batches)
        raw[run_dir.name] = res
        if "note" in res:
            print(f"    {res['note']}")
            continue
        name, seed = row_name(run_dir)
        for d, r in res["rows"].items():
            rows.append({"experiment": name, "seed": seed, "depth": d, **r})
        print(f"    {time.perf_counter() - t0:.0f} s", flush=True)
    command = shlex.join(["python", "-m", "trainer.analysis.lifted_oracle", *(sys.argv[1:] if argv is None else argv)])
    text = f"# The oracle's image features lifted with each depth, against the store's target (val)\n\n`{command}`\n"
    if rows:
        text += f"\n{markdown(rows)}\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
        a.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
