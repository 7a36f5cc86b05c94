"""Pictures of BEV grids: PCA-to-RGB of a feature grid, the point count, points and GT boxes in BEV.

All BEV images follow ``bevlabels.grid``'s convention (rows along ego y, columns along ego x) and
are drawn with ``origin="lower"`` and metric extents, so +x (forward) points right and +y (left)
points up. matplotlib is imported lazily and uses the non-interactive Agg backend unless a
backend is already active (notebooks keep theirs).
"""

from __future__ import annotations

import numpy as np

from bevlabels import geometry as g
from bevlabels.grid import GridSpec


def pca_rgb(feat: np.ndarray, mask: np.ndarray | None = None, k: int = 3) -> np.ndarray:
    """An RGB image ``(H, W, 3)`` in [0, 1] from the first three principal components of ``feat (C, H, W)``.

    The PCA is fitted on the cells where ``mask (H, W)`` holds (default: any non-zero feature);
    each component is stretched between its 1st and 99th percentile. Empty cells are black.
    """
    C, H, W = feat.shape
    x = feat.reshape(C, -1).T.astype(np.float64)  # (H*W, C)
    m = (np.abs(x).sum(1) > 0) if mask is None else mask.reshape(-1).astype(bool)
    rgb = np.zeros((H * W, 3))
    if m.sum() >= k + 1:
        xs = x[m] - x[m].mean(0)
        _, _, vt = np.linalg.svd(xs, full_matrices=False)
        comp = xs @ vt[:k].T  # (n, k)
        lo, hi = np.percentile(comp, 1, axis=0), np.percentile(comp, 99, axis=0)
        rgb[m, :k] = np.clip((comp - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    return rgb.reshape(H, W, 3)


def extent(grid: GridSpec) -> list[float]:
    """``imshow`` extent ``[xmin, xmax, ymin, ymax]`` in metres."""
    return [grid.xbound[0], grid.xbound[1], grid.ybound[0], grid.ybound[1]]


def draw_boxes_bev(ax, boxes: np.ndarray, color="w", labels=None, lw=1.0) -> None:
    """Box footprints (the bottom face of ``box_corners``) and a heading tick, in metric ego coordinates."""
    if len(boxes) == 0:
        return
    corners = g.box_corners(np.asarray(boxes))[:, [2, 3, 7, 6, 2], :2]  # bottom face, closed
    for i, c in enumerate(corners):
        ax.plot(c[:, 0], c[:, 1], color=color, lw=lw)
        b = boxes[i]
        tip = b[:2] + 0.5 * b[g.L] * np.array([np.cos(b[g.YAW]), np.sin(b[g.YAW])])
        ax.plot([b[0], tip[0]], [b[1], tip[1]], color=color, lw=lw)
        if labels is not None:
            ax.text(b[0], b[1], labels[i], color=color, fontsize=5, ha="center", va="center")


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and "inline" not in matplotlib.get_backend().lower():
        try:
            import IPython  # noqa: F401

            if IPython.get_ipython() is None:
                matplotlib.use("Agg")
        except ImportError:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_sheet(
    feat: np.ndarray,
    count: np.ndarray,
    grid: GridSpec,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_is_dynamic: np.ndarray | None = None,
    title: str = "",
):
    """A matplotlib figure with three panels: PCA-RGB of ``feat (C, H, W)``, ``count (H, W)``, points and boxes.

    ``points (P, >=2)`` are the accumulated cloud in the keyframe's ego frame (optional),
    coloured by ``point_is_dynamic (P,)``; ``boxes (M, >=7)`` are drawn on every panel.
    """
    plt = _plt()
    n = 3 if points is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 5.4), constrained_layout=True)
    ext = extent(grid)
    axes[0].imshow(pca_rgb(feat, count > 0), origin="lower", extent=ext, interpolation="nearest")
    axes[0].set_title("dino/feat: PCA of occupied cells -> RGB")
    im = axes[1].imshow(
        np.log1p(count.astype(np.float64)), origin="lower", extent=ext, cmap="magma", interpolation="nearest"
    )
    axes[1].set_title(f"dino/count (log1p); {100 * (count > 0).mean():.1f}% cells covered")
    fig.colorbar(im, ax=axes[1], shrink=0.7, label="log(1 + points)")
    if points is not None:
        dyn = np.zeros(len(points), bool) if point_is_dynamic is None else point_is_dynamic.astype(bool)
        sub = np.random.default_rng(0).permutation(len(points))[:200000]  # keep the figure light
        s = sub[~dyn[sub]]
        axes[2].scatter(points[s, 0], points[s, 1], s=0.05, c="0.55", rasterized=True, label="static")
        d = sub[dyn[sub]]
        axes[2].scatter(
            points[d, 0], points[d, 1], s=0.05, c="tab:orange", rasterized=True, label="dynamic (box-carried)"
        )
        axes[2].set_aspect("equal")
        axes[2].set_facecolor("black")
        axes[2].set_title(f"accumulated LiDAR ({len(points):,} points)")
        axes[2].legend(loc="upper right", markerscale=40, fontsize=7)
    for ax in axes:
        if boxes is not None:
            draw_boxes_bev(ax, boxes, color="cyan", lw=0.7)
        ax.set_xlim(ext[0], ext[1])  # boxes beyond the grid must not widen the view
        ax.set_ylim(ext[2], ext[3])
        ax.set_xlabel("ego x (m, forward)")
        ax.set_ylabel("ego y (m, left)")
    if title:
        fig.suptitle(title)
    return fig
