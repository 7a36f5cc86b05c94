"""The camera student as a LightningModule: :class:`BEVDepthModule` wraps a :class:`~trainer.models.bevdepth.BEVDepth`.

It reads the camera batch of :mod:`trainer.data.camera` (``images, K, ego_from_cam``; the targets
``gt_boxes, gt_labels, depth_map`` and, for the distillation, ``dino_feat, dino_count``), trains on
the detection + depth (+ DINOv2 distillation) losses of :meth:`BEVDepth.loss` weighted by ``loss``,
and decodes boxes back into the keyframe's un-augmented ego frame.

Evaluation (``python -m trainer.evaluate``): while predicting, the module also gathers foreground
depth metrics (:mod:`trainer.metrics_depth`) from the same forward pass, and :meth:`extra_eval`
returns them (TiG-BEV's Table 6: SILog, AbsRel, SqRel, log10, RMSE on LiDAR pixels inside GT
boxes). Validation logs two of them per epoch (``val/fg_abs_rel``, ``val/fg_rmse``). A model with a
distillation projection, on data with the store's grids (``data.load_dino``), also gets the fit of its
distilled BEV map on object and on background cells (:mod:`trainer.metrics_distill`,
``distill_fit/cos_object``, ``/cos_background``).

Shape letters: B batch, N cameras, h/w feature-map rows/columns, M boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainer.data.camera import previous_keyframe
from trainer.data.common import augment_boxes
from trainer.lit_base import DetectionModule
from trainer.metrics_depth import DepthMetrics, pixel_pairs
from trainer.metrics_distill import DistillFit, object_cells
from trainer.models.camera_detector import CameraDetector
from trainer.models.components.tig import TiGLoss
from trainer.models.losses import distinct_cells

log = logging.getLogger(__name__)

#: the loss weights of a config without ``model.loss``: those of conf/model/bevdepth.yaml and dualviewdistill.yaml
#: (BEVDepth's depth_loss_factor; the distillation off; DualViewDistill's best weight is 7.0), a test keeps them equal
DEFAULT_LOSS = {"depth_weight": 3.0, "distill_weight": 0.0, "distill_object_weight": None, "distill_distinct_cos": None}


class BEVDepthModule(DetectionModule):
    """BEVDepth trained with Lightning (optimizer/scheduler partials as :class:`~trainer.lit_base.DetectionModule`).

    Args:
        detector: the BEVDepth model (a :class:`~trainer.models.camera_detector.CameraDetector`: what this module
            reads of it is defined there; DualViewDistillModule passes a DualViewDistill); its head's
            ``class_names`` must equal ``class_names``.
        loss: ``depth_weight`` (BEVDepth: 3.0) and ``distill_weight`` (DualViewDistill: 7.0; 0 turns
            the distillation off and removes the detector's projection, so no parameter goes unused).
            A positive ``distill_weight`` needs ``detector.distill_channels``. ``distill_object_weight``: None (the
            paper's uniform mean over occupied cells) or ``w`` in [0, 1]: the object cells (GT footprints,
            :func:`~trainer.metrics_distill.object_cells`) and the other occupied cells averaged apart, mixed
            ``w : 1 - w`` (:func:`~trainer.models.losses.object_weighted_distill_loss`). ``distill_distinct_cos``:
            None (the object cells are GT footprints, so a keyframe whose boxes are withheld has none) or a cosine:
            the object cells are the occupied cells whose target is distinct from the keyframe's dominant surface
            (:func:`~trainer.models.losses.distinct_cells`), found without boxes.
        tig: TiG-BEV's terms (:class:`~trainer.models.components.tig.TiGLoss`'s arguments but the student's
            channels): ``inner_depth_weight``, ``inter_channel_weight``, ``inter_keypoint_weight`` (0: off),
            ``teacher_channels``, ``reference``, ``num_keypoints``, ``enlarge``. None or all weights 0: off.
        kwargs: :class:`~trainer.lit_base.DetectionModule`'s keywords (``class_names``, ``scheduler_interval``),
            passed on: they are declared there once.
    """

    use_camera = True

    def __init__(
        self,
        detector: CameraDetector,
        optimizer,
        scheduler=None,
        *,
        loss: Mapping[str, float] | None = None,
        tig: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        weights = dict(DEFAULT_LOSS)
        weights.update({str(k): None if v is None else float(v) for k, v in (loss or {}).items()})
        unknown = sorted(set(weights) - set(DEFAULT_LOSS))
        if unknown:
            raise ValueError(f"model.loss has unknown keys {unknown}; known: {sorted(DEFAULT_LOSS)}")
        for key in ("depth_weight", "distill_weight"):
            if weights[key] is None:
                raise ValueError(f"model.loss.{key} must be a number; got null")
        ow = weights["distill_object_weight"]
        if ow is not None and not 0.0 <= ow <= 1.0:
            raise ValueError(f"model.loss.distill_object_weight must lie in [0, 1] or be null; got {ow}")
        dc = weights["distill_distinct_cos"]
        if dc is not None and not -1.0 < dc <= 1.0:
            raise ValueError(f"model.loss.distill_distinct_cos must lie in (-1, 1] or be null; got {dc}")
        if dc is not None and ow is None:
            raise ValueError(
                "model.loss.distill_distinct_cos chooses the object cells of the object-weighted distillation: set "
                "model.loss.distill_object_weight too (e.g. 0.5)"
            )
        if weights["distill_weight"] > 0 and detector.distill is None:
            raise ValueError(
                f"model.loss.distill_weight={weights['distill_weight']} needs a distillation projection: set "
                "model.detector.distill_channels to the label store's feature channels (384 for dinov2-small)"
            )
        if weights["distill_weight"] > 0 and getattr(detector, "map_input", None) is not None:
            raise ValueError(
                "model.detector.map_input hands the store's grid to the head (the oracle-input upper bound): "
                "distilling the same grid into the map the head reads makes no sense; set model.loss.distill_weight=0"
            )
        if weights["distill_weight"] == 0 and detector.distill is not None:
            # A projection no loss reaches is an unused parameter, which DDP refuses: a weight of 0 removes it.
            log.info("model.loss.distill_weight=0: the distillation projection is not built")
            detector.distill, detector.distill_channels = None, None
        super().__init__(optimizer, scheduler, detector=detector, **kwargs)
        self.loss_weights = weights
        tig = dict(tig or {})
        if "num_keypoints" in tig:
            tig["num_keypoints"] = tuple(int(v) for v in tig["num_keypoints"])
        # The TiG-BEV terms read the camera BEV network's outputs only, so every camera detector gets them here.
        self.tig = TiGLoss(student_channels=detector.camera_bev.out_channels, **tig)
        self.depth_metrics = DepthMetrics()  # foreground depth of the current predict / validation pass
        self.distill_fit = DistillFit()  # the distilled map's fit by region, same pass
        self._depth_tokens: set[str] = set()

    @property
    def distilling(self) -> bool:
        return self.loss_weights["distill_weight"] > 0

    # -- checks against the data ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse, before the first step, data that does not fit the model (stride, distillation inputs)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        stride = getattr(dm, "depth_stride", None)
        if stride is not None and int(stride) != self.detector.downsample:
            raise ValueError(
                f"data.depth_stride={stride} but the model lifts features of stride {self.detector.downsample} "
                "(model.detector.camera_bev.lift_splat.downsample): set them equal"
            )
        if self.distilling and stage == "fit":
            if not getattr(dm, "load_dino", False):
                raise ValueError("model.loss.distill_weight > 0 needs the DINOv2 grids: set data.load_dino=true")
            channels = dm.dino_channels
            if channels != self.detector.distill_channels:
                raise ValueError(
                    f"the label store {dm.label_store} holds {channels}-channel features; the model projects to "
                    f"{self.detector.distill_channels}: set model.detector.distill_channels={channels}"
                )
        map_input = getattr(self.detector, "map_input", None)
        if map_input is not None:
            if not getattr(dm, "load_dino", False):
                raise ValueError("model.detector.map_input reads the store's grid: set data.load_dino=true")
            if stage == "fit" and dm.dino_channels != map_input.map_channels:
                raise ValueError(
                    f"the label store {dm.label_store} holds {dm.dino_channels}-channel features; "
                    f"model.detector.map_input.map_channels is {map_input.map_channels}: set it to {dm.dino_channels}"
                )
        if self.tig.uses_teacher and stage == "fit":
            if not getattr(dm, "load_teacher", False):
                raise ValueError(
                    "model.tig's inner-feature terms need the teacher's maps: set data.load_teacher=true "
                    "(the store must hold teacher/bev: `make teacher`)"
                )
            channels = dm.teacher_channels
            if channels != self.tig.teacher_channels:
                raise ValueError(
                    f"the label store {dm.label_store} holds {channels}-channel teacher maps; "
                    f"model.tig.teacher_channels is {self.tig.teacher_channels}: set it to {channels}"
                )

    # -- the hooks of DetectionModule ----------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`BEVDepth.forward` of ``images (B, N, 3, H, W)``, ``K (B, N, 3, 3)``, ``ego_from_cam (B, N, 4, 4)``
        (and the store's grid ``dino_feat``, ``dino_count`` for a detector with a ``map_input``; the previous
        keyframe's ``prev_*`` for a two-frame one; the keyframe interval ``dt``)."""
        extra: dict[str, Any] = {"prev": previous_keyframe(batch), "dt": batch.get("dt")}
        if getattr(self.detector, "map_input", None) is not None:
            extra.update(map_feat=batch.get("dino_feat"), map_count=batch.get("dino_count"))
        return self.detector(batch["images"], batch["K"], batch["ego_from_cam"], **extra)

    def compute_loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        depth_map = batch.get("depth_map")
        if depth_map is not None and depth_map.shape[-2:] != outputs["depth_logits"].shape[-2:]:
            raise ValueError(
                f"depth targets {tuple(depth_map.shape[-2:])} do not match the feature map "
                f"{tuple(outputs['depth_logits'].shape[-2:])}: data.depth_stride must equal the model's downsample"
            )
        if self.distilling and "dino_feat" not in batch:
            raise KeyError("the distillation needs batch['dino_feat'] and ['dino_count']: set data.load_dino=true")
        losses = self.detector.loss(
            outputs,
            batch["gt_boxes"],
            batch["gt_labels"],
            depth_map=depth_map,
            dino_feat=batch.get("dino_feat") if self.distilling else None,
            dino_count=batch.get("dino_count") if self.distilling else None,
            depth_weight=self.loss_weights["depth_weight"],
            distill_weight=self.loss_weights["distill_weight"],
            has_boxes=batch.get("has_boxes"),
            distill_objects=self._distill_objects(batch),
            distill_object_weight=self.loss_weights["distill_object_weight"],
        )
        if self.tig.active:
            parts, total = self.tig(outputs, batch, self.detector.bins, self.detector.downsample, self.detector.grid)
            losses.update(parts)
            losses["loss"] = losses["loss"] + total
        return losses

    def _distill_objects(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """``(B, H, W)`` bool, the object cells of the object-weighted distillation (else None): the batch's GT
        footprints, or with ``distill_distinct_cos`` the target's distinct cells (:func:`distinct_cells`, no boxes).

        With GT footprints a keyframe whose boxes are withheld (``data.box_fraction``) has none: every cell of it
        counts as "other".
        """
        if not self.distilling or self.loss_weights["distill_object_weight"] is None:
            return None
        count = batch["dino_count"]
        if self.loss_weights["distill_distinct_cos"] is not None:
            return distinct_cells(batch["dino_feat"], count, self.loss_weights["distill_distinct_cos"])
        cells = [object_cells(self.detector.grid, b) for b in batch["gt_boxes"]]
        return torch.stack(cells).to(count.device, non_blocking=True)

    def decode(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{"boxes": (M, 9), "scores", "labels"}`` in the keyframe's ego frame (the BEV augmentation undone)."""
        dets = self.detector.decode(outputs)
        aug = batch.get("aug_from_ego")
        if aug is None:
            return dets
        eye = torch.eye(4, dtype=aug.dtype, device=aug.device)
        for b, d in enumerate(dets):
            if not torch.allclose(aug[b], eye):
                # in float64, which autocast leaves alone (its matmuls would run in bf16 on float32 boxes)
                ego_from_aug = torch.linalg.inv(aug[b].double())
                d["boxes"] = augment_boxes(d["boxes"].double(), ego_from_aug).to(d["boxes"].dtype)
        return dets

    # -- depth and distillation metrics during validation and prediction -----------------------------
    def _update_eval_metrics(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Add a batch to the foreground depth metrics (with ``fg_px``) and the distillation fit (with ``dino_feat``)."""
        if "fg_px" in batch:
            bins = self.detector.bins
            pred, gt = pixel_pairs(
                self.detector.expected_depth(outputs["depth_logits"]),
                batch["fg_px"],
                self.detector.downsample,
                (bins.d_min, bins.d_max),
            )
            self.depth_metrics.update(pred, gt)
        proj = getattr(self.detector, "distill", None)
        if proj is not None and "dino_feat" in batch:
            self.distill_fit.update(
                outputs["bev"], proj, batch["dino_feat"], batch["dino_count"], batch["gt_boxes"], self.detector.grid
            )
        self._depth_tokens.update(batch["sample_token"])

    def on_validation_epoch_start(self) -> None:
        self.depth_metrics.reset()
        self.distill_fit.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self(batch)
        losses = self.compute_loss(outputs, batch)
        self._log_losses("val", losses, self.batch_size_of(batch))
        self._update_eval_metrics(outputs, batch)
        return losses["loss"]

    def on_validation_epoch_end(self) -> None:
        """``val/fg_abs_rel``, ``val/fg_rmse`` and ``val/distill_cos_<region>`` of the whole validation set.

        Under DDP every rank must log the same keys in the same order (``sync_dist`` all-reduces key by key: a
        rank that skips one leaves the others waiting forever). So the metrics' running sums are first added
        up over the ranks (:meth:`_sum_over_ranks`, called by every rank, whatever its shard held), and each
        key is logged, or not, on what the whole set held: the same decision on every rank, with the same value.
        """
        depth = DepthMetrics.from_state(self._sum_over_ranks(self.depth_metrics.state())).compute()
        if depth["pixels"]:
            self.log("val/fg_abs_rel", depth["abs_rel"], sync_dist=True)
            self.log("val/fg_rmse", depth["rmse"], sync_dist=True)
        names = ("object_sum", "object_cells", "background_sum", "background_cells")
        fit = dict(zip(names, self._sum_over_ranks([float(self.distill_fit.sums[k]) for k in names])))
        for region in ("object", "background"):
            if fit[f"{region}_cells"]:
                self.log(f"val/distill_cos_{region}", fit[f"{region}_sum"] / fit[f"{region}_cells"], sync_dist=True)

    def _sum_over_ranks(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the DDP ranks (one all-reduce, which every rank must call); as given on one."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").tolist()

    def on_predict_epoch_start(self) -> None:
        self.depth_metrics.reset()
        self.distill_fit.reset()
        self._depth_tokens = set()

    def on_predict_outputs(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """The foreground depth metrics and the distillation fit, from the prediction pass's own forward."""
        self._update_eval_metrics(outputs, batch)

    # -- the evaluator's hook ------------------------------------------------------------------------
    @torch.no_grad()
    def extra_eval(self, predictions: Sequence[Mapping[str, Any]], datamodule) -> dict[str, float]:
        """Foreground depth metrics (``fg_depth/silog``, ``/abs_rel``, ``/sq_rel``, ``/log10``, ``/rmse``, ``/pixels``)
        and, for a model with a distillation projection on data with the store's grids, the fit of the
        distilled map (``distill_fit/cos_object``, ``/cos_background``, ``/object_cells``, ``/background_cells``).

        Taken from the prediction pass that made ``predictions``; if that pass did not gather them
        (predictions made elsewhere), the keyframes are run again here.
        """
        tokens = {str(p["sample_token"]) for p in predictions}
        if not tokens <= self._depth_tokens:
            self._depth_pass(tokens, datamodule)
        out = {f"fg_depth/{k}": v for k, v in self.depth_metrics.compute().items()}
        fit = self.distill_fit.compute()
        if fit["object_cells"] or fit["background_cells"]:
            out.update({f"distill_fit/{k}": v for k, v in fit.items()})
        return out

    def _depth_pass(self, tokens: set[str], datamodule) -> None:
        """Forward the keyframes ``tokens`` (of the data module's val or train split) to gather the depth metrics."""
        from torch.utils.data import DataLoader

        for split in ("val", "train"):
            frames = [f for f in datamodule.frames(split) if f.token in tokens]
            if len(frames) == len(tokens):
                break
        else:
            raise KeyError(f"extra_eval: {len(tokens)} predicted keyframes are not all in one split of {datamodule}")
        loader = DataLoader(
            datamodule.make_dataset(frames, train=False),
            batch_size=datamodule.batch_size,
            num_workers=datamodule.num_workers,
            collate_fn=datamodule.collate_fn,
        )
        self.depth_metrics.reset()
        self.distill_fit.reset()
        self._depth_tokens = set()
        was_training = self.training
        self.eval()
        for batch in loader:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            self._update_eval_metrics(self(batch), batch)
        self.train(was_training)
