"""How a sparse detector decodes when it is evaluated: ``trainer.evaluate``'s ``nms`` option.

``auto`` decodes as the checkpoint's config says; ``none`` without NMS (Sparse4Dv3's top-K only); ``circle``
with a circle NMS within each class at the checkpoint's ``dataset.nms_radius`` (:func:`set_decoding_nms`,
:meth:`DualViewDistill.set_nms`). The summary's ``decoding`` records which (:func:`describe_decoding` prints it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.lit_base import LoadedCheckpoint

#: :func:`trainer.evaluate.evaluate`'s ``nms`` choices
NMS_CHOICES = ("auto", "none", "circle")


def set_decoding_nms(loaded: LoadedCheckpoint, nms: str) -> dict[str, Any] | None:
    """Apply ``trainer.evaluate``'s ``nms`` to the loaded model; return what it decodes with (None: not a sparse detector).

    ``{"nms": "none"}`` or ``{"nms": "circle", "radius": {class: metres}}``. ``"circle"`` takes the radii of
    the checkpoint's ``dataset.nms_radius``; a model without :meth:`set_nms` is refused for ``none``/``circle``.
    """
    detector = getattr(loaded.model, "detector", None)
    settable = hasattr(detector, "set_nms")
    if nms != "auto":
        if not settable:
            raise ValueError(
                f"evaluate: nms={nms} needs a sparse detector (DualViewDistill.set_nms); {type(detector).__name__} "
                "decodes with its own NMS (model.detector.head.nms_type, set at training)"
            )
        if nms == "none":
            detector.set_nms(None)
        else:
            radius = (loaded.config.get("dataset") or {}).get("nms_radius")
            if not radius:
                raise ValueError(
                    f"evaluate: nms=circle needs dataset.nms_radius in the checkpoint's config ({loaded.path})"
                )
            detector.set_nms(radius)
    if not settable:
        return None
    if detector.nms_radius is None:
        return {"nms": "none"}
    return {"nms": "circle", "radius": dict(zip(detector.class_names, detector.nms_radius.tolist()))}


def describe_decoding(decoding: Mapping[str, Any]) -> str:
    """``"top-K only (no NMS)"`` or ``"top-K, then circle NMS per class (car 2.0 m, ...)"``."""
    if decoding.get("nms") != "circle":
        return "top-K only (no NMS, as Sparse4Dv3)"
    radii = ", ".join(f"{c} {r:.2f} m" for c, r in decoding["radius"].items())
    return f"top-K, then circle NMS per class ({radii})"
