"""The detector's own ids as a tracker (``tracker=bank``): Sparse4D's instance bank, through the tracker interface.

A detector with a temporal instance bank (``dvd_temporal``) gives each box the id of the instance it was decoded
from (``track_ids`` in its predictions); this "tracker" writes those boxes with those ids, so the bank is scored
beside :mod:`~trainer.tracking.kalman` and :mod:`~trainer.tracking.greedy` on the same detections. Detections
without the model's ids (any single-frame detector, a results JSON) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.tracking.base import Detections, Tracks


class NoModelIdsError(ValueError):
    """``tracker=bank`` on detections that carry no track ids of the detector's own."""


@dataclass
class BankTracker:
    """The detector's ids, unchanged (module docstring). ``min_score``: boxes below it are not output."""

    min_score: float = 0.0
    name: str = "bank"

    def reset(self) -> None:
        pass

    def step(self, dets: Detections, dt: float) -> Tracks:
        if len(dets) and dets.model_ids is None:
            raise NoModelIdsError(
                "tracker=bank writes the detector's own track ids (a temporal instance bank, e.g. dvd_temporal); "
                "these detections carry none: choose tracker=kalman or tracker=greedy"
            )
        if not len(dets):
            return Tracks.of_detections(dets, np.zeros(0, np.int64), np.zeros(0, np.int64))
        keep = np.flatnonzero((dets.model_ids >= 0) & (dets.scores >= self.min_score))
        keep = keep[np.argsort(-dets.scores[keep], kind="stable")]
        return Tracks.of_detections(dets, keep, dets.model_ids[keep])


__all__ = ["BankTracker", "NoModelIdsError"]
