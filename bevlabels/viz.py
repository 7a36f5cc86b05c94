"""Pictures of BEV grids: PCA-to-RGB of a feature grid, the point count, points and GT boxes in BEV.

All BEV images follow ``bevlabels.grid``'s convention (rows along ego y, columns along ego x) and
are drawn with ``origin="lower"`` and metric extents, so +x (forward) points right and +y (left)
points up. matplotlib is imported lazily and uses the non-interactive Agg backend unless a
backend is already active (notebooks keep theirs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevlabels import geometry as g
from bevlabels.grid import GridSpec


def suptitle(fig, title: str) -> None:
    """A figure title wrapped to the figure's width, so a long store name or feature description is not cut off."""
    import textwrap

    fig.suptitle(textwrap.fill(title, width=max(40, int(fig.get_figwidth() * 11))))


@dataclass(frozen=True)
class PcaColours:
    """Colours of features: the first ``k`` principal directions of a set of features ``(n, C)`` and each
    component's 1st and 99th percentile over that set, which :meth:`rgb` stretches to [0, 1].

    Fitted once and applied to many grids (a scene's keyframes), one colour means one feature in all of them;
    :func:`pca_rgb` fits on the grid it colours.
    """

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (k, C)
    lo: np.ndarray  # (k,)
    hi: np.ndarray  # (k,)

    @classmethod
    def fit(cls, x: np.ndarray, k: int = 3) -> PcaColours | None:
        """From features ``x (n, C)`` (occupied cells); ``None`` when ``n < k + 1`` (no direction to speak of)."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) < k + 1:
            return None
        mean = x.mean(0)
        xs = x - mean
        _, _, vt = np.linalg.svd(xs, full_matrices=False)
        comp = xs @ vt[:k].T  # (n, k)
        return cls(mean, vt[:k], np.percentile(comp, 1, axis=0), np.percentile(comp, 99, axis=0))

    def rgb(self, feat: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """An RGB image ``(H, W, 3)`` in [0, 1] of ``feat (C, H, W)``: black outside ``mask (H, W)`` (default: the
        non-zero features) and in the channels beyond ``k``."""
        C, H, W = feat.shape
        k = len(self.components)
        x = feat.reshape(C, -1).T.astype(np.float64)  # (H*W, C)
        m = (np.abs(x).sum(1) > 0) if mask is None else mask.reshape(-1).astype(bool)
        rgb = np.zeros((H * W, 3))
        comp = (x[m] - self.mean) @ self.components.T  # (n, k)
        rgb[m, :k] = np.clip((comp - self.lo) / np.maximum(self.hi - self.lo, 1e-9), 0, 1)
        return rgb.reshape(H, W, 3)


def pca_rgb(feat: np.ndarray, mask: np.ndarray | None = None, k: int = 3) -> np.ndarray:
    """An RGB image ``(H, W, 3)`` in [0, 1] from the first three principal components of ``feat (C, H, W)``.

    The PCA is fitted on the cells where ``mask (H, W)`` holds (default: any non-zero feature);
    each component is stretched between its 1st and 99th percentile. Empty cells are black.
    """
    C, H, W = feat.shape
    x = feat.reshape(C, -1).T.astype(np.float64)  # (H*W, C)
    m = (np.abs(x).sum(1) > 0) if mask is None else mask.reshape(-1).astype(bool)
    colours = PcaColours.fit(x[m], k)
    return np.zeros((H, W, 3)) if colours is None else colours.rgb(feat, m.reshape(H, W))


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


def frame_bev_panel(ax, ext: list[float], boxes: np.ndarray | None = None, color="w", lw: float = 1.0) -> None:
    """What every BEV panel gets: GT ``boxes (M, >=7)`` (:func:`draw_boxes_bev`, when given), the view held to the
    grid's extent ``ext`` (:func:`extent`; boxes beyond the grid must not widen it) and the ego axes' labels."""
    if boxes is not None:
        draw_boxes_bev(ax, boxes, color=color, lw=lw)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xlabel("ego x (m, forward)")
    ax.set_ylabel("ego y (m, left)")


def pyplot():
    """``matplotlib.pyplot``, on the Agg backend outside an interactive IPython session (files, not windows)."""
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
    plt = pyplot()
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
        frame_bev_panel(ax, ext, boxes, color="cyan", lw=0.7)
    if title:
        suptitle(fig, title)
    return fig


# ---------------------------------------------------------------------------------------------
# Inspecting a label store (notebooks/inspect_grids.ipynb): text, tables, camera overlays, similarity

#: nuScenes' six cameras laid out as a driver sees them: front row left to right, then the back row
CAMERA_LAYOUT = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)


def store_overview(attrs: dict) -> str:
    """A few lines describing a label store from its ``attrs``: schema, grid, dataset, feature model.

    Features from a randomly initialised encoder (``feature_model.weights == "random-init"``) get a
    visible warning line: such grids show geometry and plumbing, not semantics.
    """
    grid = GridSpec.from_dict(attrs["grid"])
    ds = attrs.get("dataset", {})
    fm = attrs.get("feature_model", {})
    versions = attrs.get("versions", {})
    lines = [
        f"schema version  {attrs.get('schema_version')}  (created {attrs.get('created', '?')})",
        f"grid            x {list(grid.xbound)}  y {list(grid.ybound)}  z {list(grid.zbound)}  "
        f"-> (H, W) = {grid.shape}",
        f"dataset         {ds.get('name')} {ds.get('version')} at {ds.get('root')}",
        f"feature model   {fm.get('name')}  weights={fm.get('weights')}  C={fm.get('out_channels')}  "
        f"patch={fm.get('patch_size')}  image_height={fm.get('image_height')}  dtype={fm.get('dtype')}",
        "versions        " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    if fm.get("weights") == "random-init":
        asked = ((attrs.get("config") or {}).get("features") or {}).get("weights")
        why = (
            "on purpose (features.weights=random)" if asked == "random" else "because no pretrained weights were found"
        )
        lines.append(
            f"NOTE            the features come from a RANDOMLY INITIALISED encoder, {why}: the grids show geometry "
            "and coverage, not DINOv2 semantics. Pretrained weights: README, 'DINOv2 weights offline'."
        )
    failures = {k: v for k, v in (attrs.get("failures") or {}).items() if v}
    for stage, scenes in failures.items():
        for scene, reason in scenes.items():
            lines.append(f"FAILED          {stage}: {scene}: {reason}")
    return "\n".join(lines)


def keyframe_table(store, coverage: bool = True):
    """A ``pandas.DataFrame`` with one row per keyframe of a ``LabelStoreReader``.

    Columns: ``scene``, ``token``, ``done`` and, with ``coverage``, the share of BEV cells with pooled
    points (NaN for keyframes not done yet; reads every done keyframe's count map).
    """
    import pandas as pd

    done = store.done
    cov = np.full(len(done), np.nan)
    if coverage:
        for s in np.flatnonzero(done):
            cov[s] = float((store.dino_count(int(s)) > 0).mean())
    table = pd.DataFrame(
        {"scene": store.scenes.astype(str), "token": store.sample_tokens.astype(str), "done": done, "coverage": cov}
    )
    table.index.name = "row"
    return table


def reaccumulate(ds, frame, accumulation: dict):
    """The accumulated cloud (``AccumulatedCloud``, keyframe ego frame) of ``frame``, as the label stage built it.

    ``accumulation`` is the store's ``attrs["config"]["accumulation"]``; the scene is accumulated
    again from the dataset ``ds`` (a ``DriveDataset``), so this takes as long as the stage's own step.
    """
    from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene

    clouds = accumulate_scene(ds, frame.scene, AccumulationConfig(**accumulation), frames=ds.keyframes(frame.scene))
    for cloud in clouds:
        if cloud.frame.token == frame.token:
            return cloud
    raise KeyError(f"accumulation of scene {frame.scene} yielded no cloud for keyframe {frame.token}")


def draw_lidar_px_on_images(
    images: np.ndarray,
    px: dict[str, np.ndarray],
    camera_names: tuple[str, ...] | list[str] | None = None,
    color_by: str = "depth",
    max_depth: float | None = None,
    max_points: int = 20000,
    point_size: float = 1.0,
    title: str = "",
):
    """A figure of a keyframe's camera images ``(N, H, W, 3)`` uint8 with its ``lidar_px`` rows drawn on them.

    ``px`` is ``LabelStoreReader.lidar_px(s)`` (columns ``cam, u, v, depth, obj`` of ``R`` rows, at the
    images' original resolution; ``cam`` indexes ``images``). Dots are coloured by ``depth`` (metres,
    ``turbo`` colour map up to ``max_depth``, default the 98th percentile) or, with ``color_by="obj"``,
    grey for background and one colour per GT box. At most ``max_points`` dots per camera (a random
    subset). With the six nuScenes ``camera_names`` the panels follow :data:`CAMERA_LAYOUT`; otherwise
    they are laid out in order, three per row.
    """
    if color_by not in ("depth", "obj"):
        raise ValueError(f"color_by must be 'depth' or 'obj', got {color_by!r}")
    images = np.asarray(images)
    assert images.ndim == 4 and images.shape[-1] == 3, f"images must be (N, H, W, 3), got {images.shape}"
    N = images.shape[0]
    names = list(camera_names) if camera_names is not None else [f"camera {n}" for n in range(N)]
    if len(names) != N:
        raise ValueError(f"{len(names)} camera names for {N} images")
    if set(names) == {c for row in CAMERA_LAYOUT for c in row}:
        layout = [[names.index(c) for c in row] for row in CAMERA_LAYOUT]
    else:
        layout = [list(range(i, min(i + 3, N))) for i in range(0, N, 3)]
    ncols = max(len(r) for r in layout)
    depth, cam = px["depth"], px["cam"]
    vmax = float(max_depth) if max_depth else (float(np.percentile(depth, 98)) if len(depth) else 1.0)
    plt = pyplot()
    H, W = images.shape[1:3]
    fig, axes = plt.subplots(
        len(layout),
        ncols,
        figsize=(4.2 * ncols, 4.2 * len(layout) * H / W + 0.8),
        squeeze=False,
        constrained_layout=True,
    )
    rng = np.random.default_rng(0)
    sc = None
    for r, row in enumerate(layout):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            n = row[c]
            ax.imshow(images[n])
            rows = np.flatnonzero(cam == n)
            if len(rows) > max_points:
                rows = rng.choice(rows, max_points, replace=False)
            if color_by == "depth":
                sc = ax.scatter(
                    px["u"][rows], px["v"][rows], c=depth[rows], s=point_size, cmap="turbo", vmin=0, vmax=vmax,
                    linewidths=0,
                )  # fmt: skip
            else:
                obj = px["obj"][rows]
                bg = obj < 0
                ax.scatter(px["u"][rows[bg]], px["v"][rows[bg]], c="0.7", s=point_size, linewidths=0)
                ax.scatter(
                    px["u"][rows[~bg]], px["v"][rows[~bg]], c=obj[~bg] % 20, s=2 * point_size, cmap="tab20",
                    vmin=0, vmax=19, linewidths=0,
                )  # fmt: skip
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_title(f"{names[n]}  ({int((cam == n).sum()):,} points)", fontsize=9)
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.6, label="depth (m)")
    suptitle(fig, title or f"lidar_px: {len(depth):,} projected LiDAR points, coloured by {color_by}")
    return fig


def nearest_occupied_cell(count: np.ndarray, grid: GridSpec, xy) -> tuple[int, int]:
    """``(iy, ix)`` of the cell with pooled points (``count (H, W) > 0``) nearest to the metric point ``xy``."""
    iy, ix = np.nonzero(count > 0)
    if iy.size == 0:
        raise ValueError("the count map is empty: no cell has pooled points")
    centres = grid.cell_centres()[iy, ix]  # (n, 2)
    k = int(np.argmin(np.linalg.norm(centres - np.asarray(xy, dtype=np.float64)[:2], axis=1)))
    return int(iy[k]), int(ix[k])


def feature_similarity(feat: np.ndarray, count: np.ndarray, cell: tuple[int, int], center: bool = False) -> np.ndarray:
    """Cosine similarity ``(H, W)`` of every cell's feature in ``feat (C, H, W)`` to the one at ``cell = (iy, ix)``.

    NaN where ``count (H, W)`` is 0 (no pooled feature). The query cell itself has similarity 1.
    ``center`` subtracts the mean feature of the occupied cells first, removing the component all
    cells share (large for a randomly initialised encoder), so that the map shows the differences.
    """
    C, H, W = feat.shape
    assert count.shape == (H, W), f"count {count.shape} does not match feat {feat.shape}"
    x = feat.reshape(C, -1).astype(np.float64)  # (C, H*W)
    occupied = count.reshape(-1) > 0
    if not occupied[cell[0] * W + cell[1]]:
        raise ValueError(f"cell {cell} has no feature (count 0); pick an occupied cell")
    if center:
        x = x - x[:, occupied].mean(1, keepdims=True)
    q = x[:, cell[0] * W + cell[1]]  # (C,)
    norm = np.linalg.norm(x, axis=0) * np.linalg.norm(q)
    sim = (q @ x) / np.maximum(norm, 1e-12)
    sim[~occupied] = np.nan
    return sim.reshape(H, W)


def query_cell_for_class(
    boxes: np.ndarray, classes, count: np.ndarray, grid: GridSpec, wanted: str = "car"
) -> tuple[tuple[int, int], int | None]:
    """A query cell for :func:`feature_similarity`: the occupied cell nearest a box of class ``wanted``.

    ``boxes (M, >=2)`` with per-box ``classes`` (e.g. ``frame.boxes.detection_class``); of the boxes of
    that class whose centre lies in the grid, the one nearest the ego is taken. Returns
    ``((iy, ix), box index)``; when there is no such box, the occupied cell nearest the ego and ``None``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size:
        inside = grid.cell_index(boxes[:, :2])[2]
        order = np.argsort(np.linalg.norm(boxes[:, :2], axis=1))  # nearest to the ego first
        cand = [int(i) for i in order if classes[i] == wanted and inside[i]]
        if cand:
            return nearest_occupied_cell(count, grid, boxes[cand[0], :2]), cand[0]
    return nearest_occupied_cell(count, grid, (0.0, 0.0)), None


def similarity_figure(
    feat: np.ndarray,
    count: np.ndarray,
    grid: GridSpec,
    cell: tuple[int, int],
    boxes: np.ndarray | None = None,
    center: bool = False,
    title: str = "",
):
    """Two panels: PCA-RGB of ``feat (C, H, W)`` and the cosine similarity of every cell to ``cell = (iy, ix)``.

    The query cell is marked on both; ``boxes (M, >=7)`` are drawn when given. Empty cells are grey.
    ``center``: see :func:`feature_similarity`.
    """
    plt = pyplot()
    sim = feature_similarity(feat, count, cell, center=center)
    ext = extent(grid)
    q = grid.cell_to_metric(np.array([cell[1] + 0.5, cell[0] + 0.5]))
    fig, axes = plt.subplots(1, 2, figsize=(10.6, 5.2), constrained_layout=True)
    axes[0].imshow(pca_rgb(feat, count > 0), origin="lower", extent=ext, interpolation="nearest")
    axes[0].set_title("dino/feat: PCA -> RGB")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.25")
    im = axes[1].imshow(sim, origin="lower", extent=ext, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], shrink=0.7, label="cosine similarity to the query cell")
    kind = "centred cosine" if center else "cosine"
    axes[1].set_title(f"{kind} similarity to cell (iy={cell[0]}, ix={cell[1]}) at ({q[0]:.1f}, {q[1]:.1f}) m")
    for ax in axes:
        frame_bev_panel(ax, ext, boxes, color="w", lw=0.5)
        ax.plot(q[0], q[1], marker="x", color="red", ms=9, mew=2)
    if title:
        suptitle(fig, title)
    return fig


# ---------------------------------------------------------------------------------------------
# What an oracle store's cells say they are (bevlabels.leak): the argmax class in BEV, store beside store

#: colours of the oracle classes (sky, ground, scenery, then the ten object classes); empty cells are black
ORACLE_COLOURS = {
    "sky": "#9ecae1",
    "ground": "#4d4d4d",
    "scenery": "#8c6d31",
    "car": "#e41a1c",
    "truck": "#ff7f00",
    "bus": "#ffff33",
    "trailer": "#a65628",
    "construction_vehicle": "#f781bf",
    "pedestrian": "#4daf4a",
    "motorcycle": "#984ea3",
    "bicycle": "#00ffff",
    "traffic_cone": "#ffffff",
    "barrier": "#377eb8",
}


def oracle_rgb(feat: np.ndarray, count: np.ndarray, oracle) -> np.ndarray:
    """``(H, W, 3)``: each occupied cell of ``feat (C, H, W)`` in the colour of its argmax oracle class, empty ones black."""
    from matplotlib.colors import to_rgb

    colours = np.array([to_rgb(ORACLE_COLOURS.get(c, "#999999")) for c in oracle.classes])  # (K, 3)
    rgb = colours[oracle.argmax(feat)]
    rgb[count == 0] = 0.0
    return rgb


def joint_pca_rgb(feats: list[np.ndarray], counts: list[np.ndarray]) -> list[np.ndarray]:
    """:func:`pca_rgb` of several ``(C, H, W)`` grids fitted on all their occupied cells at once, so one colour means
    one feature in every panel."""
    W = feats[0].shape[2]
    rgb = pca_rgb(np.concatenate(feats, axis=2), np.concatenate(counts, axis=1) > 0)
    return [rgb[:, i * W : (i + 1) * W] for i in range(len(feats))]


def bev_rgb_figure(panels: list[tuple[str, np.ndarray]], grid: GridSpec, boxes=None, title: str = "", legend=None):
    """One BEV panel per ``(label, rgb (H, W, 3))`` with GT ``boxes (M, >=7)`` drawn; ``legend``: ``{name: colour}``."""
    from matplotlib.patches import Patch

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 6.6), constrained_layout=True, squeeze=False)
    ext = extent(grid)
    for ax, (label, rgb) in zip(axes[0], panels):
        ax.imshow(rgb, origin="lower", extent=ext, interpolation="nearest")
        frame_bev_panel(ax, ext, boxes, color="white", lw=0.6)
        ax.set_title(label, fontsize=9)
    if legend:
        handles = [Patch(color=c, label=n) for n, c in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.06))
    if title:
        suptitle(fig, title)
    return fig
