"""Track a detection results file and score the tracks: ``python -m trainer.track detections=<results.json> ...``.

    python -m trainer.track detections=outputs/<run>/eval/results_nusc.json                  # the small world's val
    python -m trainer.track detections=det.json tracker=greedy out=/tmp/greedy                # another tracker
    python -m trainer.track detections=det.json dataset=nuscenes dataset.root=/data/nuscenes dataset.version=v1.0-trainval
    python -m trainer.track detections=det.json tracker.high_score=0.4 tracker.classes.car.max_distance=5

``detections`` is a detection results JSON in the nuScenes format (``{"meta": {...}, "results": {sample_token:
[{"translation", "size", "rotation", "velocity", "detection_name", "detection_score", ...}]}}``, global frame),
written by ``trainer.evaluate`` or by any other codebase. Its samples must be exactly the keyframes of the split
(``split=val``: the dataset's val split, e.g. ``mini_val``): a sample outside the split, or a keyframe of the split
without an entry (an empty list is an entry), is refused with the sample named; ``partial=true`` accepts results
that cover whole scenes of the split (the others are then not scored).

The detections are tracked scene by scene by ``tracker`` (``conf/tracker``: ``kalman``, ``greedy``; ``bank``
needs the detector's own ids, which a results file does not carry) and scored by the devkit's ``TrackingEval``
(``tracking_nips_2019``), beside the oracle-id ceiling of the same detections (each detection given its true id:
what no tracker can beat). ``out`` (default: ``<detections folder>/tracking-<tracker>``) receives
``results_nusc_tracking.json``, ``metrics_summary.json`` (the devkit's, plus ``tracker``, ``tracker_config`` and
``oracle_ids``), ``oracle_ids/`` and a PNG per scene (``png/<scene>.png``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bevlabels.conf import CONF_DIR

log = logging.getLogger("bevlabels.track")

#: the keys every detection box of a results file needs
DETECTION_KEYS = ("translation", "size", "rotation", "detection_name", "detection_score")
#: the keys every box of a tracking results file needs
TRACKING_KEYS = ("translation", "size", "rotation", "tracking_id", "tracking_name", "tracking_score")


class ResultsFileError(ValueError):
    """A nuScenes results file (detection or tracking) that cannot be read: the message names the file and what is
    wrong."""


class DetectionsFileError(ResultsFileError):
    """A detection results file that cannot be tracked: the message names the file and what is wrong."""


class TrackingFileError(ResultsFileError):
    """A tracking results file that cannot be read: the message names the file and what is wrong."""


def read_results(
    path: str | Path, keys: tuple[str, ...] = DETECTION_KEYS, kind: str = "detections", error=DetectionsFileError
) -> dict[str, Any]:
    """A nuScenes results file, checked for ``keys`` in every box (each ``error`` names the file, the sample and the
    field; ``kind`` says which file is missing)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {kind} file")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise error(f"{path}: a nuScenes results file is {{'meta': ..., 'results': {{token: [...]}}}}")
    for token, boxes in data["results"].items():
        if not isinstance(boxes, list):
            raise error(f"{path}: results[{token!r}] must be a list of boxes")
        for i, b in enumerate(boxes):
            missing = [k for k in keys if k not in b]
            if missing:
                what = "a tracking box" if kind == "tracking" else "a detection box"
                raise error(f"{path}: results[{token!r}][{i}] lacks {missing} ({what} has {list(keys)})")
            if len(b["translation"]) != 3 or len(b["size"]) != 3 or len(b["rotation"]) != 4:
                raise error(
                    f"{path}: results[{token!r}][{i}]: translation and size need 3 numbers, rotation 4 (w, x, y, z)"
                )
            if b.get("sample_token", token) != token:
                raise error(f"{path}: results[{token!r}][{i}] has sample_token {b['sample_token']!r}")
    data.setdefault("meta", {})
    return data


def read_detections(path: str | Path) -> dict[str, Any]:
    """A nuScenes detection results file, checked for the fields the trackers read (each error names the file,
    the sample and the field)."""
    return read_results(path, DETECTION_KEYS, "detections", DetectionsFileError)


def read_tracks(path: str | Path) -> dict[str, Any]:
    """A nuScenes tracking results file (``tracking_id``, ``tracking_name``, ``tracking_score`` in every box), checked
    like :func:`read_detections`."""
    return read_results(path, TRACKING_KEYS, "tracking", TrackingFileError)


def split_frames(adapter, eval_set: str, tokens, partial: bool = False) -> tuple[list, dict[str, Any]]:
    """The keyframes of ``eval_set`` the results' ``tokens`` cover, in scene and time order, and the coverage record.

    Without ``partial`` every keyframe of the split must be there and nothing else (each refusal names a sample);
    with it, whole scenes (:func:`trainer.eval.coverage.coverage_of`)."""
    from trainer.eval.coverage import coverage_of, describe_coverage

    frames_of = {scene: list(adapter.keyframes(scene)) for scene in adapter.scenes(eval_set)}
    per_scene = {scene: [f.token for f in frames] for scene, frames in frames_of.items()}
    tokens = set(tokens)
    known = {t for toks in per_scene.values() for t in toks}
    outside = sorted(tokens - known)
    if outside:
        raise DetectionsFileError(
            f"{len(outside)} sample(s) of the detections are not keyframes of split {eval_set}, e.g. {outside[0]}: "
            "track the split the detections were made for (split=train|val, dataset=...)"
        )
    if not partial:
        missing = [t for toks in per_scene.values() for t in toks if t not in tokens]
        if missing:
            raise DetectionsFileError(
                f"the detections miss {len(missing)} keyframe(s) of split {eval_set}, e.g. {missing[0]} (a keyframe "
                "without detections needs an empty list); partial=true scores the whole scenes they cover"
            )
    evaluated = coverage_of(per_scene, eval_set, tokens)
    if evaluated["partial"]:
        log.warning("tracking part of the split: %s", describe_coverage(evaluated))
    return [f for scene in evaluated["scenes"] for f in frames_of[scene]], evaluated


def track(
    detections: str | Path,
    dataset: Mapping[str, Any],
    tracker: str | Mapping[str, Any] = "kalman",
    split: str = "val",
    out: str | Path | None = None,
    partial: bool = False,
    ceiling: bool = True,
    pictures: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Track the ``detections`` file on ``dataset`` (a ``conf/dataset`` config) and score it (module docstring);
    return the tracking summary with ``out_dir`` added."""
    from bevlabels.datasets.factory import build_adapter
    from trainer.data.common import split_names
    from trainer.tracking import build_tracker, tracker_config

    t0 = time.perf_counter()
    cfg = tracker_config(tracker)
    build_tracker(cfg)  # a bad tracker config fails before anything loads
    data = read_detections(detections)
    if split not in ("train", "val"):
        raise ValueError(f"track: split must be train or val; got {split!r}")
    eval_set = split_names(dataset)[0 if split == "train" else 1]
    root = Path(str(dataset.get("root", "")))
    if dataset.get("root") and not root.exists():
        raise FileNotFoundError(f"track: the dataset root {root} does not exist (dataset.root=...)")
    adapter = build_adapter(dataset["adapter"])
    kind = getattr(adapter, "evaluation", None)
    if kind != "nuscenes":
        raise ValueError(
            f"track: dataset {dataset.get('name')!r} declares evaluation={kind!r}; trainer.track reads nuScenes-format "
            "results files and scores them with TrackingEval. On Argoverse 2, tracks are scored by "
            "`python -m trainer.evaluate ckpt=... tracker=...` (av2.evaluation.tracking)"
        )
    frames, evaluated = split_frames(adapter, eval_set, data["results"], partial=partial)
    out_dir = Path(out) if out else Path(detections).resolve().parent / f"tracking-{cfg['name']}"
    out_dir.mkdir(parents=True, exist_ok=True)

    from trainer.eval.nusc_tracking import describe_ceiling, format_tracking_table, track_and_score
    from trainer.nusc_results import result_meta

    meta = {**result_meta(False, False), **data["meta"]}
    summary = track_and_score(
        adapter.nusc,
        frames,
        data["results"],
        cfg,
        out_dir,
        eval_set,
        meta,
        verbose=verbose,
        ceiling=ceiling,
        pictures=pictures,
        extra={"detections": str(Path(detections))},
    )
    print(
        f"\n{detections}: {len(frames)} keyframes of {eval_set} tracked by {cfg['name']}, {time.perf_counter() - t0:.1f} s\n"
        + format_tracking_table(summary)
        + f"\n{describe_ceiling(summary)}\nsummary: {out_dir / 'metrics_summary.json'}",
        flush=True,
    )
    return {**summary, "out_dir": str(out_dir), "evaluated": evaluated}


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="track", version_base="1.3")
    def _main(cfg) -> None:
        from omegaconf import OmegaConf

        track(
            cfg.detections,
            OmegaConf.to_container(cfg.dataset, resolve=True),
            tracker=cfg.tracker,
            split=str(cfg.split),
            out=cfg.get("out"),
            partial=bool(cfg.get("partial", False)),
            ceiling=bool(cfg.get("ceiling", True)),
            pictures=bool(cfg.get("pictures", True)),
            verbose=bool(cfg.get("verbose", False)),
        )

    _main()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
