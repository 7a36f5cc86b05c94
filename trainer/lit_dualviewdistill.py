"""DualViewDistill as a LightningModule: :class:`DualViewDistillModule` wraps a :class:`~trainer.models.dualviewdistill.DualViewDistill`.

The same camera batch, loss weights, data checks, decoding (BEV augmentation undone) and foreground
depth metrics as :class:`~trainer.lit_bevdepth.BEVDepthModule`, whose hooks it inherits; what differs:

- the head's queries: in training the GT boxes go to the forward pass (the denoising groups);
- a temporal detector (``detector.bank``) gets the batch's scene streams (``scene``, ``timestamp`` and
  ``aug_from_ego @ inv(global_from_ego)``: the data module's ``sequential_scenes`` streams them, the
  augmentation held per stream); its bank is emptied at the start of every training, validation and
  prediction epoch and after validation, so no state crosses from one pass to another;
- ``setup("fit")`` initialises the head's anchors by k-means over the training split's boxes
  (:func:`~trainer.models.components.sparse.anchors.anchors_for_dataset`; with ``data.box_fraction < 1`` over
  the scenes whose boxes are used only), cached beside the label
  store (or in ``anchors_cache``). The anchors are a parameter, so a checkpoint restores its own (on
  resume they are overwritten by the checkpoint's after this).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainer.data.camera import previous_keyframe
from trainer.lit_bevdepth import BEVDepthModule
from trainer.models.components.sparse.anchors import anchors_for_dataset
from trainer.models.dualviewdistill import DualViewDistill

log = logging.getLogger(__name__)


class DualViewDistillModule(BEVDepthModule):
    """DualViewDistill trained with Lightning (arguments of :class:`~trainer.lit_bevdepth.BEVDepthModule`, plus):

    Args:
        anchors_seed: the k-means seed of the initial anchors.
        anchors_cache: folder of the cached anchors (None: the label store's parent folder).
        init_anchors: False keeps the head's given (or default) anchors.
        kwargs: :class:`~trainer.lit_bevdepth.BEVDepthModule`'s keywords (``class_names``, ``scheduler_interval``,
            ``loss``, ``tig``), passed on: they are declared there once.
    """

    use_camera = True

    def __init__(
        self,
        detector: DualViewDistill,
        optimizer,
        scheduler=None,
        *,
        anchors_seed: int = 0,
        anchors_cache: str | None = None,
        init_anchors: bool = True,
        **kwargs: Any,
    ):
        super().__init__(detector, optimizer, scheduler, **kwargs)
        self.anchors_seed, self.anchors_cache, self.init_anchors = int(anchors_seed), anchors_cache, bool(init_anchors)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or stage != "fit" or not self.init_anchors:
            return
        head = self.detector.head
        cache = self.anchors_cache
        if cache is None and getattr(dm, "label_store", None):
            cache = str(Path(dm.label_store).parent)
        box_scenes = getattr(dm, "box_scenes", None)  # label-scarce: only the scenes whose boxes are used
        anchors = anchors_for_dataset(
            dm.adapter,
            dm.scenes("train") if box_scenes is None else box_scenes,
            dm.grid,
            self.class_names,
            num_anchors=head.num_anchors,
            seed=self.anchors_seed,
            cache_dir=cache,
            min_lidar_points=getattr(dm, "min_lidar_points", 1),
            log=log.info,
        )
        with torch.no_grad():
            head.anchor.copy_(torch.as_tensor(anchors, dtype=head.anchor.dtype, device=head.anchor.device))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`DualViewDistill.forward` of the batch; the GT goes with it in training (denoising queries), the
        scene streams with a temporal detector."""
        gt = {"gt_boxes": batch.get("gt_boxes"), "gt_labels": batch.get("gt_labels")} if self.training else {}
        stream = None
        if self.detector.bank is not None:
            pose = batch["global_from_ego"].double()  # (B, 4, 4)
            aug = batch.get("aug_from_ego")
            aug = torch.eye(4, dtype=torch.float64, device=pose.device).expand_as(pose) if aug is None else aug.double()
            stream = {
                "keys": list(batch["scene"]),
                # read once here (one host copy when the batch is on a device), not by the bank twice a step
                "timestamps": [int(t) for t in torch.as_tensor(batch["timestamp"]).tolist()],
                "aug_from_global": aug @ torch.linalg.inv(pose),
            }
        if getattr(self.detector, "map_input", None) is not None:  # the oracle-input upper bound
            gt.update(map_feat=batch.get("dino_feat"), map_count=batch.get("dino_count"))
        gt.update(prev=previous_keyframe(batch), dt=batch.get("dt"))
        return self.detector(batch["images"], batch["K"], batch["ego_from_cam"], stream=stream, **gt)

    def reset_state(self) -> None:
        """Forget the temporal bank's carried instances (a new pass over the streams; also after
        :class:`~trainer.callbacks.PreciseBN`'s shuffled batches)."""
        if self.detector.bank is not None:
            self.detector.bank.reset()

    def on_train_epoch_start(self) -> None:
        self.reset_state()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.reset_state()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.reset_state()

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self.reset_state()
