"""Look at a scene: ``python -m trainer.view scene=<name> [ckpt=...|detections=...] [tracks=...] [store=...] [out=...]``.

    python -m trainer.view scene=scene-0103                                   # GT, LiDAR, cameras, BEV target
    python -m trainer.view scene=scene-0103 tracks=outputs/<run>/eval/tracking/results_nusc_tracking.json
    python -m trainer.view detections=outputs/<run>/eval/results_nusc.json    # its first scene, tracked by kalman
    python -m trainer.view ckpt=outputs/<run>/checkpoints/last.ckpt scene=scene-0916 tracker=greedy
    rerun outputs/view/scene-0103.rrd                                          # open what it wrote

Writes one rerun recording (``.rrd``, :mod:`bevlabels.rerun_scene` lists its entities) of one scene over its
keyframes: the cameras' images with the boxes projected on them, the LiDAR accumulated over the scene as the label
stage accumulates it (static points and object points apart) and the keyframe's own sweep, the label store's BEV
target (``dino/feat``) and teacher map (``teacher/bev``) in PCA colours fitted once over the scene, GT boxes,
detections coloured by class and tracks by id with their trails, all in the global frame. rerun is the ``viz``
extra (``pip install -e ".[viz]"``, which ``make setup`` installs); without it the command says so.

Where each part comes from:

- ``dataset`` (``conf/dataset``, the synthetic ``small`` world by default, generated on first use): keyframes,
  cameras, LiDAR sweeps and GT boxes. ``scene``: one of its scenes; ``null``: the first scene the tracks or
  detections file covers, else the first scene of the val split.
- ``store``: the label store; ``auto`` (default): ``<paths.data>/labels/<dataset.name>.zarr`` when it exists
  (without it the recording has no BEV grids, and says so); ``null``: none. A store of another dataset, or one
  without the scene's keyframes, is refused, naming them; a store without ``teacher/bev`` is fine (the recording's
  ``log`` says so).
- ``ckpt`` (a checkpoint of ``trainer.train``) or ``detections`` (a nuScenes detection results JSON, global frame):
  detections, drawn from ``min_score`` up. The checkpoint predicts the scene's keyframes here (no augmentation, the
  device of ``device``/``precision``); it must have been trained on the dataset viewed (name and version).
- ``tracks``: a nuScenes tracking results JSON. Without one, detections (of either source) are tracked by
  ``tracker`` (``kalman`` | ``greedy``; ``null``: no tracks), as ``python -m trainer.track`` tracks them.

A results file that holds no keyframe of the scene is refused, naming the scene of its first sample; one that
misses some of the scene's keyframes is drawn where it has them, with a warning. The recording goes to ``out``
(default ``outputs/view/<scene>.rrd``); a progress bar runs over the keyframes, and the command prints what the
recording holds and how to open it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bevlabels.conf import CONF_DIR
from trainer.track import ResultsFileError, read_detections, read_tracks

log = logging.getLogger("bevlabels.view")

#: cells per keyframe the scene-wide PCA colours are fitted on (a subsample keeps the fit to a few MB)
PCA_CELLS_PER_KEYFRAME = 4096


class ViewError(ValueError):
    """Inputs the viewer cannot show together (an unknown scene, a store or checkpoint of another dataset, ...): the
    message names the one at fault."""


def default_out(scene: str) -> Path:
    """``outputs/view/<scene>.rrd``."""
    return Path("outputs") / "view" / f"{scene}.rrd"


def resolve_store(store: str | None, default: str | Path) -> tuple[Path | None, bool]:
    """The label store to read and whether it is optional: ``"auto"`` is ``default`` when it exists (optional: a
    store that does not fit the scene is then left out with a warning), else none (a warning says how to make one);
    ``None``: none; a path must exist."""
    if store is None or str(store) in ("", "null", "None"):
        return None, False
    if str(store) == "auto":
        if (Path(default) / "zarr.json").is_file():
            return Path(default), True
        log.warning(
            "no label store at %s: the recording has no BEV target (make labels, or store=<a store>)", Path(default)
        )
        return None, False
    if not (Path(store) / "zarr.json").is_file():
        raise ViewError(f'store={store}: no label store there (make labels ARGS="out={store}", or store=null)')
    return Path(store), False


def pick_scene(adapter, scene: str | None, results: list[tuple[str, Mapping]], val_split: str) -> str:
    """``scene`` when the dataset has it; ``None``: the scene of the first sample of the first results file, else the
    first scene of ``val_split``."""
    known = adapter.scenes()
    if scene is not None:
        scene = str(scene)
        if scene not in known:
            some = ", ".join(known[:8]) + (f", ... ({len(known)} scenes)" if len(known) > 8 else "")
            raise ViewError(f"scene={scene}: no such scene in {adapter} (it has {some})")
        return scene
    for path, data in results:
        if data["results"]:
            token = next(iter(data["results"]))
            try:
                return adapter.frame(token).scene
            except KeyError:
                raise ViewError(f"{path}: its first sample {token} is not a keyframe of {adapter}") from None
    val = adapter.scenes(val_split)
    if not val:
        raise ViewError(f"{adapter} has no scene in its val split {val_split}: give scene=<name>")
    return val[0]


def results_of_scene(path: str | Path, data: Mapping, frames: list, adapter) -> dict[str, list]:
    """``{token: boxes}`` of the scene's keyframes in a results file (``[]`` where it has none, with a warning); a file
    without any of them is refused, naming the scene its first sample belongs to."""
    scene = frames[0].scene
    results = data["results"]
    have = [f.token for f in frames if f.token in results]
    if not have:
        where = ""
        if results:
            token = next(iter(results))
            try:
                where = f"; its first sample {token} is of scene {adapter.frame(token).scene}"
            except KeyError:
                where = f"; its first sample {token} is not a keyframe of {adapter}"
        raise ResultsFileError(f"{path}: no keyframe of scene {scene} ({len(frames)} keyframes){where}")
    if len(have) < len(frames):
        missing = [f.token for f in frames if f.token not in results]
        log.warning(
            "%s: %d of the %d keyframes of scene %s are missing (e.g. %s); they are drawn without its boxes",
            path,
            len(missing),
            len(frames),
            scene,
            missing[0],
        )
    return {f.token: list(results.get(f.token, [])) for f in frames}


def predict_scene(
    ckpt: str | Path, dataset: Mapping, frames: list, device: str = "auto", precision: str | None = "auto"
) -> dict[str, list]:
    """The checkpoint's detections of ``frames`` as ``{token: [detection result boxes]}`` (global frame), with the
    model's own ``tracking_id`` where it has an instance bank. The checkpoint must have been trained on ``dataset``
    (the same name and version): its data module reads the viewed dataset."""
    from trainer.eval.predict import build_datamodule, predict
    from trainer.lit_base import load_checkpoint
    from trainer.tracking import global_detections

    loaded = load_checkpoint(ckpt)
    trained = loaded.config.get("dataset", {})
    if (trained.get("name"), trained.get("version")) != (dataset.get("name"), dataset.get("version")):
        raise ViewError(
            f"ckpt={ckpt} was trained on dataset {trained.get('name')!r} {trained.get('version')!r}; the scene is of "
            f"{dataset.get('name')!r} {dataset.get('version')!r}: view its own dataset (dataset=...)"
        )
    # the checkpoint's own dataset config (its keys are the data module's), read where the viewed dataset lies
    where = {k: dataset[k] for k in ("root", "adapter") if k in dataset}
    datamodule = build_datamodule(loaded.config, dataset={**loaded.config["data"]["dataset"], **where}, num_workers=0)
    predictions = predict(loaded.model, datamodule, device=device, precision=precision, frames=frames)
    return global_detections(frames, predictions, datamodule.class_names)


def track_detections(frames: list, detections: Mapping[str, list], tracker: str) -> dict[str, list]:
    """``{token: [tracking result boxes]}`` of the scene's detections tracked by ``tracker`` (``conf/tracker``)."""
    from trainer.tracking import build_tracker, track_scenes

    trk, input_nms = build_tracker(tracker)
    return track_scenes([frames], detections, trk, input_nms=input_nms)["results"]


def fit_colours(read, rows: list[int | None], mask_of=None):
    """:class:`bevlabels.viz.PcaColours` fitted on up to :data:`PCA_CELLS_PER_KEYFRAME` occupied cells of each
    keyframe's grid ``read(row) -> (C, H, W)`` (``mask_of(row) -> (H, W)``; default: non-zero cells); ``None``
    when no keyframe has enough cells."""
    from bevlabels.viz import PcaColours

    rng = np.random.default_rng(0)
    cells = []
    for s in rows:
        if s is None:
            continue
        feat = read(s)
        C = feat.shape[0]
        x = feat.reshape(C, -1).T  # (H*W, C)
        m = (np.abs(x).sum(1) > 0) if mask_of is None else mask_of(s).reshape(-1)
        x = x[m]
        if len(x) > PCA_CELLS_PER_KEYFRAME:
            x = x[rng.choice(len(x), PCA_CELLS_PER_KEYFRAME, replace=False)]
        cells.append(np.asarray(x, dtype=np.float32))
    return PcaColours.fit(np.concatenate(cells)) if cells else None


def describe(scene, dataset, frames, store_attrs, sources: Mapping[str, str]) -> str:
    """The recording's ``description``: the scene, where each part came from, what the colours mean."""
    lines = [
        f"# {scene}",
        f"{len(frames)} keyframes of {dataset.get('name')} {dataset.get('version')} at `{dataset.get('root')}`.",
        "",
        "Global frame, z up. GT boxes green; detections coloured by class (labelled with their score); tracks by id,",
        "with their trails. LiDAR: static accumulated points grey, object points carried with their boxes orange,",
        "the keyframe's own sweep cyan.",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in sources.items()]
    if store_attrs is not None:
        fm = store_attrs.get("feature_model", {})
        lines.append(f"- **BEV target**: `dino/feat` of {fm.get('name')} (weights: {fm.get('weights')}), PCA colours")
        if fm.get("weights") == "random-init":
            lines.append("  (a randomly initialised encoder: the target shows geometry and coverage, not semantics)")
    return "\n".join(lines)


def scene_boxes(
    frames: list,
    adapter,
    dataset: Mapping,
    files: Mapping[str, tuple[str | Path, Mapping]],
    ckpt: str | Path | None,
    tracker: str | None,
    device: str = "auto",
    precision: str | None = "auto",
) -> tuple[dict[str, list] | None, dict[str, list] | None, dict[str, str]]:
    """The scene's detections and tracks as ``{token: [result boxes]}`` (``None`` where there are none) and where they
    came from: ``files["detections"]`` or the checkpoint's predictions; ``files["tracks"]``, or the detections tracked
    by ``tracker``."""
    sources: dict[str, str] = {}
    detections = None
    if "detections" in files:
        path, data = files["detections"]
        detections = results_of_scene(path, data, frames, adapter)
        sources["detections"] = f"`{path}`"
    elif ckpt is not None:
        log.info("predicting the %d keyframes of %s with %s", len(frames), frames[0].scene, ckpt)
        detections = predict_scene(ckpt, dataset, frames, device=device, precision=precision)
        sources["detections"] = f"`{ckpt}`, predicted here"
    tracks = None
    if "tracks" in files:
        path, data = files["tracks"]
        tracks = results_of_scene(path, data, frames, adapter)
        sources["tracks"] = f"`{path}`"
    elif detections is not None and tracker:
        tracks = track_detections(frames, detections, str(tracker))
        sources["tracks"] = f"the detections tracked here by {tracker}"
    return detections, tracks, sources


class BevGrids:
    """The label store's grids of a scene's keyframes, in PCA colours fitted once over the scene: ``target``
    (``dino/feat``, its occupied cells) and ``teacher`` (``teacher/bev``, when the store has it); :attr:`names` are
    those it holds."""

    def __init__(self, store: str | Path, frames: list, dataset: Mapping, optional: bool = False):
        """Open ``store`` for ``frames``; a store of another dataset (name, version), or one without all the scene's
        keyframes, is refused (``optional``: a warning, and :attr:`names` is empty)."""
        from bevlabels.cache import LabelStoreReader

        self.reader = reader = LabelStoreReader(store)
        self.store, self.names = Path(store), []
        self.rows: list[int | None] = []
        self.teacher_rows: list[int | None] = []
        self.target_colours = self.teacher_colours = None
        made_of = reader.attrs.get("dataset", {})
        index = {str(t): i for i, t in enumerate(reader.sample_tokens)}
        missing = [f.token for f in frames if f.token not in index]
        if (made_of.get("name"), made_of.get("version")) != (dataset.get("name"), dataset.get("version")):
            problem = (
                f"store={store} was made from dataset {made_of.get('name')!r} {made_of.get('version')!r}; the scene "
                f"is of {dataset.get('name')!r} {dataset.get('version')!r}"
            )
        elif missing:
            problem = (
                f"store={store} lacks {len(missing)} of the {len(frames)} keyframes of scene {frames[0].scene} "
                f"(e.g. {missing[0]}): label the scene (make labels)"
            )
        else:
            problem = None
        if problem and not optional:
            raise ViewError(f"{problem} (store=<its store>, or store=null)")
        if problem:
            log.warning("%s: the recording has no BEV grids", problem)
            return
        done = reader.done
        self.rows = [index[f.token] if done[index[f.token]] else None for f in frames]
        if None in self.rows:
            log.warning("store %s: %d keyframes of the scene are not labelled yet", store, self.rows.count(None))
        self.grid = reader.grid
        self.target_colours = fit_colours(reader.dino_feat, self.rows, lambda s: reader.dino_count(s) > 0)
        self.names = ["target"]
        if reader.has("teacher/bev"):
            teacher_done = reader.done_mask("teacher")
            self.teacher_rows = [s if s is not None and teacher_done[s] else None for s in self.rows]
            self.teacher_colours = fit_colours(reader.teacher_bev, self.teacher_rows)
            if self.teacher_colours is not None:
                self.names.append("teacher")

    @property
    def accumulation(self) -> dict:
        """The accumulation settings the store's labels were made with (``{}`` when it does not record them)."""
        return dict((self.reader.attrs.get("config") or {}).get("accumulation") or {})

    def target(self, i: int) -> np.ndarray | None:
        """``(H, W, 3)`` colours of keyframe ``i``'s ``dino/feat`` (black where no point was pooled); ``None`` when
        it is not labelled."""
        s = self.rows[i] if self.names else None
        if s is None or self.target_colours is None:
            return None
        return self.target_colours.rgb(self.reader.dino_feat(s), self.reader.dino_count(s) > 0)

    def teacher(self, i: int) -> np.ndarray | None:
        """``(H_t, W_t, 3)`` colours of keyframe ``i``'s ``teacher/bev``; ``None`` when the store has none."""
        s = self.teacher_rows[i] if "teacher" in self.names else None
        return None if s is None else self.teacher_colours.rgb(self.reader.teacher_bev(s))


def view(
    dataset: Mapping[str, Any],
    scene: str | None = None,
    ckpt: str | Path | None = None,
    detections: str | Path | None = None,
    tracks: str | Path | None = None,
    tracker: str | None = "kalman",
    store: str | Path | None = None,
    store_optional: bool = False,
    out: str | Path | None = None,
    min_score: float = 0.15,
    lidar: bool = True,
    lidar_voxel: float | None = 0.2,
    device: str = "auto",
    precision: str | None = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the recording of one scene (module docstring); return ``path``, ``scene``, ``keyframes``, ``counts``
    (keyframes logged per entity), ``sources``, ``detections`` (boxes drawn) and ``tracks`` (ids drawn).

    ``store``: a label store's path or ``None`` (:func:`resolve_store` turns ``auto`` into one, and
    ``store_optional`` into a warning where a store that does not fit is otherwise refused)."""
    from tqdm import tqdm

    from bevlabels import geometry as g
    from bevlabels.datasets.factory import build_adapter
    from bevlabels.rerun_scene import SceneRecording, require_rerun
    from bevlabels.synthetic.formats import ensure_world
    from trainer.data.common import split_names
    from trainer.nusc_results import boxes_from_results

    require_rerun()  # before anything loads
    t0 = time.perf_counter()
    if ckpt is not None and detections is not None:
        raise ViewError("give ckpt=... or detections=..., not both: both are the scene's detections")
    files = {}
    if tracks is not None:
        files["tracks"] = (tracks, read_tracks(tracks))
    if detections is not None:
        files["detections"] = (detections, read_detections(detections))
    ensure_world(dataset, log=log.warning, scenes=(lambda cfg: [str(scene)]) if scene is not None else None)
    adapter = build_adapter(dataset["adapter"])
    scene = pick_scene(adapter, scene, list(files.values()), split_names(dataset)[1])
    frames = adapter.keyframes(scene)
    if not frames:
        raise ViewError(f"scene {scene} of {adapter} has no keyframes")
    det_boxes, track_boxes, sources = scene_boxes(frames, adapter, dataset, files, ckpt, tracker, device, precision)
    bev = BevGrids(store, frames, dataset, optional=store_optional) if store is not None else None
    if bev is not None and bev.names:
        sources["store"] = f"`{store}`"

    clouds = None
    if lidar:
        from bevlabels.lidar.accumulate import AccumulationConfig, accumulate_scene, voxel_dedup

        stored = bev.accumulation if bev is not None and bev.names else {}
        fields = AccumulationConfig.__dataclass_fields__
        acc_cfg = AccumulationConfig(**{k: v for k, v in stored.items() if k in fields})
        sources["LiDAR"] = "accumulated " + ("as the store's labels were" if stored else "with the default settings")
        log.info("accumulating the LiDAR of %s (%d sweeps)", scene, len(adapter.sweeps(scene)))
        clouds = accumulate_scene(adapter, scene, acc_cfg, frames=frames)

    out = Path(out) if out else default_out(scene)
    store_attrs = bev.reader.attrs if bev is not None and bev.names else None
    description = describe(scene, dataset, frames, store_attrs, sources)
    drawn_ids: set[str] = set()
    n_det = 0
    bev_names = bev.names if bev is not None else []
    with SceneRecording(out, scene, frames[0].camera_names, bev=bev_names, description=description) as rec:
        for i, frame in enumerate(tqdm(frames, desc=f"view {scene}", unit="keyframe", disable=not progress)):
            rec.keyframe(frame)
            if i == 0 and not bev_names:
                rec.warn("no label store: no BEV target or teacher map (store=<a label store>)")
            elif i == 0 and "teacher" not in bev_names:
                rec.warn(
                    f"the store {store} has no teacher/bev: no teacher map (make teacher-cache TEACHER_STORE={store})"
                )
            if clouds is not None:
                cloud = next(clouds)
                assert cloud.frame.token == frame.token, (cloud.frame.token, frame.token)
                pts, box_index = cloud.points, cloud.box_index
                if lidar_voxel:
                    pts, box_index = voxel_dedup(pts, float(lidar_voxel), box_index)
                # a scene-wide static map is the same at every keyframe: logged once, it stays on screen
                rec.lidar(pts, box_index, static=i == 0 or acc_cfg.time_window is not None)
                sweep = adapter.load_points(frame.lidar)
                rec.sweep(g.transform_points(frame.lidar.global_from_lidar, sweep[:, :3].astype(np.float64)))
            if det_boxes is not None:
                boxes = [b for b in det_boxes[frame.token] if float(b["detection_score"]) >= min_score]
                n_det += len(boxes)
                names = [b["detection_name"] for b in boxes]
                rec.detections(boxes_from_results(boxes), names, [float(b["detection_score"]) for b in boxes])
            if track_boxes is not None:
                boxes = _one_box_per_id(track_boxes[frame.token], frame.token)
                ids = [str(b["tracking_id"]) for b in boxes]
                drawn_ids.update(ids)
                rec.tracks(ids, boxes_from_results(boxes), [b["tracking_name"] for b in boxes])
            for name in bev_names:
                rgb = getattr(bev, name)(i)
                if rgb is None:
                    rec.warn(f"keyframe {frame.token} has no {name} map in the store", once=f"{name}:{frame.token}")
                else:
                    rec.bev(name, rgb, bev.grid)
    summary = {
        "path": str(out),
        "scene": scene,
        "keyframes": len(frames),
        "counts": dict(rec.counts),
        "sources": sources,
        "detections": n_det,
        "tracks": len(drawn_ids),
    }
    print(
        f"\n{out} ({out.stat().st_size / 2**20:.1f} MB): scene {scene}, {len(frames)} keyframes, "
        f"{time.perf_counter() - t0:.1f} s\n"
        + "".join(f"  {k:<11} {v}\n" for k, v in sources.items())
        + (f"  {n_det} detections >= {min_score} drawn\n" if det_boxes is not None else "")
        + (f"  {len(drawn_ids)} tracks\n" if track_boxes is not None else "")
        + f"open it: rerun {out}",
        flush=True,
    )
    return summary


def _one_box_per_id(boxes: list[Mapping], token: str) -> list[Mapping]:
    """A sample's tracking boxes with one box per ``tracking_id`` (the best scoring; a warning names the others)."""
    best: dict[str, Mapping] = {}
    for b in boxes:
        tid = str(b["tracking_id"])
        if tid not in best or float(b["tracking_score"]) > float(best[tid]["tracking_score"]):
            best[tid] = b
    if len(best) < len(boxes):
        log.warning(
            "sample %s: %d boxes share a tracking_id with another; the best scoring is drawn",
            token,
            len(boxes) - len(best),
        )
    return list(best.values())


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="view", version_base="1.3")
    def _main(cfg) -> None:
        from omegaconf import OmegaConf

        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        try:
            store, optional = resolve_store(
                cfg.get("store"), Path(cfg.paths.data) / "labels" / f"{dataset['name']}.zarr"
            )
            view(
                dataset,
                scene=cfg.get("scene"),
                ckpt=cfg.get("ckpt"),
                detections=cfg.get("detections"),
                tracks=cfg.get("tracks"),
                tracker=cfg.get("tracker"),
                store=store,
                store_optional=optional,
                out=cfg.get("out"),
                min_score=float(cfg.min_score),
                lidar=bool(cfg.lidar),
                lidar_voxel=cfg.get("lidar_voxel"),
                device=str(cfg.device),
                precision=cfg.get("precision"),
            )
        except (ViewError, ResultsFileError, ImportError) as e:
            raise SystemExit(f"trainer.view: {e}") from None

    _main()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
