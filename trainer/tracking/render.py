"""A picture of one scene's tracks: the tracker's beside the ground truth's, seen from above."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.tracking.base import TRACKING_CLASSES


def render_scene_tracks(
    frames: Sequence[Any],
    results: Mapping[str, list],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    tracker: str = "",
    note: str = "",
    classes: Sequence[str] | None = TRACKING_CLASSES,
) -> Path:
    """A PNG of one scene: predicted tracks (left, titled with ``tracker``'s name and, when given, the AMOTA and its
    oracle-id ceiling) beside the GT tracks (right), in the global frame seen from above, each track a polyline of
    its box centres over the keyframes, coloured by id; the ego path in black.

    ``frames``: the scene's keyframes in time order (``token``, ``global_from_ego``, ``boxes`` of
    :class:`bevlabels.datasets.base.Boxes`); ``results``: the tracking result dict's ``results``. GT tracks are
    the boxes of tracking classes (``detection_class`` in ``classes``: nuScenes' :data:`TRACKING_CLASSES` by
    default; another dataset's, e.g. av2's categories; ``None``: every box with a ``detection_class``) by
    ``instance_id``.
    """
    from bevlabels.viz import pyplot

    plt = pyplot()
    pred: dict[str, list] = {}
    for f in frames:
        for b in results.get(f.token, []):
            pred.setdefault(b["tracking_id"], []).append(b["translation"][:2])
    gt: dict[str, list] = {}
    for f in frames:
        if not len(f.boxes):
            continue
        centres = (np.asarray(f.global_from_ego)[:3, :3] @ f.boxes.boxes[:, :3].T).T + np.asarray(f.global_from_ego)[
            :3, 3
        ]
        for c, name, inst in zip(centres, f.boxes.detection_class, f.boxes.instance_id):
            if name is not None and (classes is None or name in classes):
                gt.setdefault(inst, []).append(c[:2])
    ego = np.array([np.asarray(f.global_from_ego)[:2, 3] for f in frames])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab20")
    pred_title = f"{tracker} tracks" if tracker else "predicted tracks"
    for ax, tracks, title in ((axes[0], pred, pred_title), (axes[1], gt, "GT tracks")):
        for k, (_, pts) in enumerate(sorted(tracks.items(), key=lambda kv: str(kv[0]))):
            pts = np.asarray(pts)
            ax.plot(pts[:, 0], pts[:, 1], "-o", color=cmap(k % 20), ms=2, lw=1)
        ax.plot(ego[:, 0], ego[:, 1], "k-", lw=2, label="ego")
        ax.set_title(f"{title} ({len(tracks)})")
        ax.set_aspect("equal")
        ax.set_xlabel("global x (m)")
    axes[0].set_ylabel("global y (m)")
    fig.suptitle(f"scene {getattr(frames[0], 'scene', '')}: {len(frames)} keyframes" + (f"; {note}" if note else ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def render_scenes(
    scenes: Sequence[Sequence[Any]],
    results: Mapping[str, list],
    out_dir: str | Path,
    tracker: str = "",
    note: str = "",
    classes: Sequence[str] | None = TRACKING_CLASSES,
) -> list[Path]:
    """:func:`render_scene_tracks` of every scene, as ``<out_dir>/<scene>.png``."""
    return [
        render_scene_tracks(
            scene, results, Path(out_dir) / f"{scene[0].scene}.png", tracker=tracker, note=note, classes=classes
        )
        for scene in scenes
    ]


__all__ = ["render_scene_tracks", "render_scenes"]
