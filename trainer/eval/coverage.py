"""Which keyframes of a split an evaluation scores: whole scenes (logs), and the devkit's GT restricted to them.

A result may cover part of a split, scene by scene: :func:`split_coverage` (nuScenes devkit splits) and
:func:`coverage_of` (any dataset's ``{scene: keyframe tokens}``) say which scenes and how many keyframes, and
refuse a covered scene with a keyframe missing or a sample outside the split; :func:`describe_coverage` is the
printed line; :func:`gt_restricted_to` makes the devkit's ``DetectionEval`` / ``TrackingEval`` load the GT of
those samples only. Used by every benchmark of :mod:`trainer.eval`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any


def split_samples(nusc, eval_set: str) -> dict[str, list[str]]:
    """``{scene name: sample tokens}`` of the devkit split ``eval_set`` (its scenes present in ``nusc``, table order).

    The same selection as the devkit's ``load_gt``: every sample whose scene's name is in
    ``create_splits_scenes()[eval_set]``.
    """
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if eval_set not in splits:
        raise ValueError(f"{eval_set!r} is not a split of the nuScenes devkit; known: {sorted(splits)}")
    names = set(splits[eval_set])
    out: dict[str, list[str]] = {s["name"]: [] for s in nusc.scene if s["name"] in names}
    for sample in nusc.sample:
        name = nusc.get("scene", sample["scene_token"])["name"]
        if name in out:
            out[name].append(sample["token"])
    return out


def split_coverage(nusc, eval_set: str, sample_tokens: Iterable[str]) -> dict[str, Any]:
    """Which scenes of ``eval_set`` the results' ``sample_tokens`` cover, each of them whole.

    Returns ``{"eval_set", "partial", "scenes" (covered, table order), "keyframes" (their samples),
    "split_scenes", "split_keyframes"}``. Raises ``ValueError`` for tokens outside the split and for a
    covered scene with a keyframe missing: scoring the keyframes present would silently drop GT.
    """
    return coverage_of(split_samples(nusc, eval_set), eval_set, sample_tokens)


def coverage_of(per_scene: dict[str, list[str]], eval_set: str, sample_tokens: Iterable[str]) -> dict[str, Any]:
    """Which scenes of a split (``per_scene``: ``{scene: its keyframe tokens}``, split order) ``sample_tokens`` cover.

    What :func:`split_coverage` returns and refuses, for any dataset's split.
    """
    tokens = set(sample_tokens)
    scene_of = {t: name for name, toks in per_scene.items() for t in toks}
    outside = sorted(tokens - scene_of.keys())
    if outside:
        raise ValueError(
            f"the results hold {len(outside)} samples that are not in split {eval_set} "
            f"(e.g. {outside[:3]}): predict the keyframes of the evaluated split only"
        )
    covered = [name for name, toks in per_scene.items() if tokens.intersection(toks)]
    for name in covered:
        missing = [t for t in per_scene[name] if t not in tokens]
        if missing:
            raise ValueError(
                f"the results miss {len(missing)} of the {len(per_scene[name])} keyframes of scene {name} "
                f"(e.g. {missing[:3]}): every keyframe of an evaluated scene must be predicted (a sample "
                "without detections is an empty list), or its GT would silently be left out of the scores"
            )
    return {
        "eval_set": eval_set,
        "partial": len(covered) < len(per_scene),
        "scenes": covered,
        "keyframes": sum(len(per_scene[n]) for n in covered),
        "split_scenes": len(per_scene),
        "split_keyframes": sum(len(t) for t in per_scene.values()),
    }


def describe_coverage(evaluated: dict[str, Any], max_names: int = 8) -> str:
    """One line for the printout: ``3 of 6 keyframes, 1 of 2 scenes (scene-0103) of mini_val: partial``."""
    scenes = evaluated["scenes"]
    names = ", ".join(scenes[:max_names]) + (
        f", ... ({len(scenes) - max_names} more)" if len(scenes) > max_names else ""
    )
    text = (
        f"{evaluated['keyframes']} of {evaluated['split_keyframes']} keyframes, "
        f"{len(scenes)} of {evaluated['split_scenes']} scenes ({names}) of {evaluated['eval_set']}"
    )
    return text + (": partial, the scores cover these scenes only" if evaluated["partial"] else ": the whole split")


_GT_PATCH_LOCK = threading.Lock()


@contextmanager
def gt_restricted_to(sample_tokens: Iterable[str], module=None):
    """While open, ``DetectionEval`` (or the evaluator of ``module``, e.g. the devkit's tracking
    ``evaluate`` module for ``TrackingEval``) loads the GT of ``sample_tokens`` only.

    ``DetectionEval.__init__`` loads the split's GT with the devkit's ``load_gt`` and asserts that the
    results hold the same samples before it adds centre distances and filters boxes. Here its
    ``load_gt`` is wrapped (in the devkit's ``evaluate`` module, restored on exit): the devkit's own
    loader runs, with its split and version checks, and only the samples outside ``sample_tokens`` are
    dropped from what it returns. Everything after (the assertion, ``add_center_dist``,
    ``filter_eval_boxes``, matching and metrics) is the devkit's, unchanged.
    """
    from nuscenes.eval.common.data_classes import EvalBoxes

    if module is None:
        import nuscenes.eval.detection.evaluate as module
    devkit_eval = module

    keep = set(sample_tokens)
    load_gt = devkit_eval.load_gt

    def restricted_load_gt(*args, **kwargs) -> EvalBoxes:
        gt = load_gt(*args, **kwargs)
        out = EvalBoxes()
        for token in gt.sample_tokens:
            if token in keep:
                out.add_boxes(token, gt[token])
        return out

    with _GT_PATCH_LOCK:
        devkit_eval.load_gt = restricted_load_gt
        try:
            yield
        finally:
            devkit_eval.load_gt = load_gt
