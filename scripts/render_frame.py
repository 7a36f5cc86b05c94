"""Contact sheet of one nuScenes keyframe: the six images with projected GT boxes, and a BEV view.

    python scripts/render_frame.py --root data/synth/small-seed0 [--version v1.0-mini]
        [--scene scene-0103] [--index 5 | --sample <token>] [--out frame.png]

Reads the dataset through ``bevlabels.datasets.nuscenes.NuScenesDataset`` (any nuScenes-format
root: the synthetic world or a real one). Boxes are drawn in their class colour: in the images
their 12 projected edges (edges behind the camera are skipped), in the BEV panel their footprint
and heading over the keyframe's LiDAR sweep (keyframe ego frame, x forward = up, y left = left,
points coloured by height).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bevlabels.geometry import YAW, box_corners, project_points

CLASS_COLORS = {
    "car": "#1f77b4", "truck": "#ff7f0e", "bus": "#2ca02c", "trailer": "#d62728", "construction_vehicle": "#9467bd",
    "pedestrian": "#e377c2", "motorcycle": "#8c564b", "bicycle": "#bcbd22", "traffic_cone": "#ff4500",
    "barrier": "#17becf",
}  # fmt: skip
SHEET_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
# box edges as corner index pairs (corners in the devkit's order: 0-3 front face, 4-7 back face)
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def render_frame(frame, points_ego: np.ndarray, out: Path, bev_range: float = 50.0) -> Path:
    """Draw ``frame`` (a :class:`bevlabels.datasets.base.Frame`) and its sweep ``points_ego (N, >=3)`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cams = {c.name: c for c in frame.cameras}
    names = [n for n in SHEET_ORDER if n in cams]
    w0, h0 = (cams[names[0]].width, cams[names[0]].height) if names else (704, 256)
    panel_w = 6.0
    panel_h = panel_w * h0 / w0
    fig = plt.figure(figsize=(3 * panel_w + 2 * panel_h + 0.6, 2 * panel_h + 0.6), dpi=110)
    gs = fig.add_gridspec(2, 4, width_ratios=[panel_w] * 3 + [2 * panel_h], wspace=0.02, hspace=0.05)
    boxes = frame.boxes
    corners_ego = box_corners(boxes.boxes) if len(boxes) else np.zeros((0, 8, 3))
    for i, name in enumerate(names):
        cam = cams[name]
        ax = fig.add_subplot(gs[i // 3, i % 3])
        ax.imshow(np.asarray(Image.open(cam.image_path)) if cam.has_image else np.zeros((cam.height, cam.width, 3)))
        if len(boxes):
            uv, depth, _ = project_points(corners_ego.reshape(-1, 3), frame.cam_from_key_ego(cam), cam.K,
                                          (cam.width, cam.height))  # fmt: skip
            uv, depth = uv.reshape(-1, 8, 2), depth.reshape(-1, 8)
            for k in range(len(boxes)):
                if (depth[k] < 0.5).all():
                    continue
                # skip boxes wholly outside the image
                if (
                    uv[k, :, 0].max() < 0
                    or uv[k, :, 0].min() > cam.width
                    or uv[k, :, 1].max() < 0
                    or uv[k, :, 1].min() > cam.height
                ):
                    continue
                col = CLASS_COLORS.get(boxes.detection_class[k] or "", "#aaaaaa")
                for a, b in EDGES:
                    if depth[k, a] > 0.5 and depth[k, b] > 0.5:
                        ax.plot(uv[k, [a, b], 0], uv[k, [a, b], 1], color=col, lw=0.9)
        ax.set_xlim(0, cam.width)
        ax.set_ylim(cam.height, 0)
        ax.set_axis_off()
        ax.set_title(name, fontsize=8, pad=2)
    # BEV: x forward up, y left to the left
    ax = fig.add_subplot(gs[:, 3])
    ax.set_facecolor("black")
    p = points_ego[(np.abs(points_ego[:, 0]) < bev_range) & (np.abs(points_ego[:, 1]) < bev_range)]
    ground = p[:, 2] < 0.25
    ax.scatter(-p[ground, 1], p[ground, 0], s=0.2, c="#555555", linewidths=0)
    ax.scatter(-p[~ground, 1], p[~ground, 0], s=0.6, c=np.clip(p[~ground, 2], 0.0, 4.0), cmap="spring", vmin=0, vmax=4,
               linewidths=0)  # fmt: skip
    for k in range(len(boxes)):
        c = corners_ego[k, [0, 1, 5, 4, 0]]  # top face outline, front edge first
        col = CLASS_COLORS.get(boxes.detection_class[k] or "", "#aaaaaa")
        ax.plot(-c[:, 1], c[:, 0], color=col, lw=0.8)
        centre, yaw = boxes.boxes[k, :2], boxes.boxes[k, YAW]
        tip = centre + 0.5 * boxes.boxes[k, 3] * np.array([np.cos(yaw), np.sin(yaw)])
        ax.plot([-centre[1], -tip[1]], [centre[0], tip[0]], color=col, lw=0.8)
    ax.plot([0], [0], marker="^", color="white", ms=5)
    ax.set_xlim(-bev_range, bev_range)
    ax.set_ylim(-bev_range, bev_range)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{frame.scene} #{frame.index}: {len(boxes)} boxes, {len(points_ego)} points", fontsize=8, pad=2)
    handles = [plt.Line2D([], [], color=c, lw=2, label=n) for n, c in CLASS_COLORS.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.6, ncol=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="nuScenes-format dataset root")
    ap.add_argument("--version", default=None, help="table folder (default: the only v1.0-* folder in root)")
    ap.add_argument("--scene", default=None, help="scene name (default: the first scene)")
    ap.add_argument("--index", type=int, default=0, help="keyframe index within the scene")
    ap.add_argument("--sample", default=None, help="sample token (instead of --scene/--index)")
    ap.add_argument("--out", default="frame.png", help="output PNG")
    args = ap.parse_args(argv)

    from bevlabels.datasets.nuscenes import NuScenesDataset

    root = Path(args.root)
    version = args.version
    if version is None:
        found = sorted(p.name for p in root.glob("v1.0-*") if p.is_dir())
        if len(found) != 1:
            raise SystemExit(f"render_frame: pass --version; version folders in {root}: {found or 'none'}")
        version = found[0]
    ds = NuScenesDataset(root, version=version)
    if args.sample:
        frame = ds.frame(args.sample)
    else:
        scene = args.scene or ds.scenes()[0]
        frames = ds.keyframes(scene)
        if not 0 <= args.index < len(frames):
            raise SystemExit(
                f"render_frame: scene {scene} has {len(frames)} keyframes; --index {args.index} is out of range"
            )
        frame = frames[args.index]
    pts = ds.load_points(frame.lidar)
    from bevlabels.geometry import transform_points

    pts_ego = transform_points(frame.key_ego_from_lidar(frame.lidar), pts.astype(np.float64))
    out = render_frame(frame, pts_ego, Path(args.out))
    print(f"render_frame: {out}")
    return out


if __name__ == "__main__":
    main()
