"""PNGs of a camera detector's predictions against the GT: in BEV and drawn on the six camera images.

    python scripts/render_predictions.py ckpt=outputs/bevdepth/<run>/checkpoints/last.ckpt [split=val] [n=4]
        [out=<ckpt dir>/render-<ckpt name>-<split>] [score=0.3] [device=cpu]

The model and the data module are rebuilt from the checkpoint alone (``trainer.lit_base.load_checkpoint``),
as ``trainer.evaluate`` does. ``n`` keyframes spread evenly over the split are predicted without
augmentation; each gets one PNG: on the left the BEV grid with the predicted centre heatmap (max
over classes) underneath, GT boxes in green and detections scoring at least ``score`` in red (their
opacity their score); on the right the six images, as the model saw them, with the same boxes
projected through the cameras (``K`` with the image augmentation folded in, ``ego_from_cam``).
Prints the paths written.

Frames: boxes are in the keyframe's ego frame; a box is drawn in a camera only when all its corners
lie at least 0.2 m in front of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from bevlabels import geometry as g

CAMERA_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
GT_COLOR, PRED_COLOR = "#33dd55", "#ff3030"


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments (Hydra's style) as a dict; ``ckpt`` is required."""
    args = {"split": "val", "n": "4", "out": "", "score": "0.3", "device": "cpu"}
    for a in argv:
        if "=" not in a:
            raise SystemExit(f"arguments are key=value; got {a!r}\n{__doc__}")
        k, v = a.split("=", 1)
        if k not in (*args, "ckpt"):
            raise SystemExit(f"unknown argument {k!r}; known: ckpt, {', '.join(args)}")
        args[k] = v
    if "ckpt" not in args:
        raise SystemExit(f"ckpt=... is required\n{__doc__}")
    return args


def draw_boxes_image(ax, boxes: np.ndarray, cam_from_ego, K, color, alphas=None) -> None:
    for m, edges in enumerate(g.project_box_edges(boxes, cam_from_ego, K)):
        if edges is None:
            continue
        a = 1.0 if alphas is None else float(alphas[m])
        for seg in edges:
            ax.plot(seg[:, 0], seg[:, 1], color=color, lw=0.8, alpha=a)


def prediction_figure(sample: dict, det: dict, heatmap: np.ndarray, grid, camera_names, score: float, title: str):
    """The figure of one keyframe (see the module docstring); ``sample`` is the un-batched camera sample."""
    from bevlabels.viz import draw_boxes_bev, extent, pyplot

    plt = pyplot()
    fig = plt.figure(figsize=(18, 6.5))
    gs = fig.add_gridspec(2, 5, width_ratios=[2.2, 0.05, 1.6, 1.6, 1.6])
    ax = fig.add_subplot(gs[:, 0])
    # The colour scale stops at the map's maximum: early in training every score is small.
    ax.imshow(heatmap, origin="lower", extent=extent(grid), cmap="magma", vmin=0, vmax=max(float(heatmap.max()), 0.05))
    gt = sample["gt_boxes"].numpy()
    keep = det["scores"].numpy() >= score
    pred, scores = det["boxes"].numpy()[keep], det["scores"].numpy()[keep]
    draw_boxes_bev(ax, gt, color=GT_COLOR, lw=1.2)
    for b, s in zip(pred, scores):
        before = len(ax.lines)
        draw_boxes_bev(ax, b[None], color=PRED_COLOR, lw=1.0)
        for line in ax.lines[before:]:  # outline and heading tick
            line.set_alpha(float(s))
    ax.plot([0], [0], marker="^", color="w", ms=6)
    ax.set_title(f"BEV: GT green ({len(gt)}), detections >= {score} red ({len(pred)}); heatmap: max score over classes")
    ax.set_xlabel("ego x (m)")
    ax.set_ylabel("ego y (m)")
    ego_from_cam = sample["ego_from_cam"].double().numpy()
    K = sample["K"].double().numpy()
    for slot, name in enumerate(CAMERA_ORDER):
        if name not in camera_names:
            continue
        n = camera_names.index(name)
        cax = fig.add_subplot(gs[slot // 3, 2 + slot % 3])
        cax.imshow(sample["images"][n].permute(1, 2, 0).numpy())
        cam_from_ego = np.linalg.inv(ego_from_cam[n])
        draw_boxes_image(cax, gt, cam_from_ego, K[n], GT_COLOR)
        draw_boxes_image(cax, pred, cam_from_ego, K[n], PRED_COLOR, alphas=scores)
        H, W = sample["images"].shape[-2:]
        cax.set_xlim(0, W)
        cax.set_ylim(H, 0)
        cax.set_title(name, fontsize=8)
        cax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def render(ckpt: str, split: str = "val", n: int = 4, out: str | None = None, score: float = 0.3, device: str = "cpu"):
    """Write ``n`` PNGs (see the module docstring); return their paths."""
    from trainer.eval.predict import build_datamodule
    from trainer.lit_base import load_checkpoint

    loaded = load_checkpoint(ckpt)
    model = loaded.model.to(device)
    dm = build_datamodule(loaded.config, num_workers=0)
    dm.prepare_data()
    dm.setup("predict")
    frames = dm.frames(split)
    pick = sorted({int(i) for i in np.linspace(0, len(frames) - 1, max(1, min(n, len(frames))))})
    dataset = dm.make_dataset([frames[i] for i in pick], train=False)
    out_dir = Path(out) if out else Path(ckpt).parent / f"render-{Path(ckpt).stem}-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(len(dataset)):
        sample = dataset[k]
        batch = dm.collate_fn([sample])
        batch = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
        outputs = model(batch)
        det = {key: v.cpu() for key, v in model.decode(outputs, batch)[0].items()}
        heat = torch.stack([torch.sigmoid(t["hm"][0]).amax(0) for t in outputs["preds"]]).amax(0)  # (H, W)
        frame = dataset.frames[k]
        fig = prediction_figure(
            sample,
            det,
            heat.cpu().numpy(),
            dm.grid,
            list(frame.camera_names),
            score,
            f"{Path(ckpt).name} (step {loaded.global_step}) | {frame.scene} keyframe {frame.index} | {frame.token}",
        )
        path = out_dir / f"{k:02d}_{frame.scene}_{frame.index:03d}.png"
        fig.savefig(path, dpi=110)
        fig.clf()  # figures are big; free each before the next
        paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    a = parse_args(argv)
    paths = render(a["ckpt"], a["split"], int(a["n"]), a["out"] or None, float(a["score"]), a["device"])
    print("\n".join(str(p) for p in paths), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
