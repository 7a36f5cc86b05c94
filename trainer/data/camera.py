"""Camera keyframes with their cached labels: the data module of the camera students (BEVDepth and successors).

A sample is a keyframe's N camera images, augmented, with everything expressed in the frames the
model sees, and the label store's grids and depth targets brought into the same frames.

Image augmentation (BEVDepth's ``sample_ida_augmentation``, resize then crop then flip) is one
3x3 ``aug_from_img`` per camera, folded into the intrinsics: ``K_aug = aug_from_img @ K``
(``bevlabels.geometry``). The images are resized to fit ``final_hw`` (the larger of the two
ratios, times a random factor in training), cropped to ``final_hw`` (bottom-anchored: the sky goes
first, as BEVDepth; horizontally random in training, centred otherwise) and, in training,
mirrored with probability ``flip_prob``. One draw per keyframe, shared by its cameras (as BEVDepth).

BEV augmentation (rotation, scale, mirror flips) is one ``aug_from_ego (4, 4)``
(:func:`trainer.data.common.sample_bev_aug`), applied alike to

- the GT boxes (centres, sizes, heading, velocity: :func:`trainer.data.common.augment_boxes`);
- the cameras: ``ego_from_cam = aug_from_ego @ key_ego_from_cam``, so lift-splat places the
  unchanged images' features into the augmented world (the images themselves do not change);
- the cached grids ``dino/feat`` and ``dino/count``, resampled over metric coordinates
  (:func:`resample_bev`): each augmented cell centre is moved back to the ego frame and read there,
  ``count`` with nearest-neighbour sampling, ``feat`` nearest by default or bilinearly over occupied
  cells only (``dino_interp``);
- the LiDAR teacher's map ``teacher/bev`` (``load_teacher``, TiG-BEV), resampled the same way,
  bilinearly by default (``teacher_interp``: the map is dense, so no occupancy weighting).

Depth targets are rasterised from the store's ``lidar_px`` after the image augmentation
(:func:`depth_targets`): each LiDAR pixel moved by its camera's ``aug_from_img``, dropped if it
leaves the crop, and the *minimum* depth kept per feature-stride cell (BEVDepth's
``get_downsampled_gt_depth``), 0 where a cell has none. The model turns them into one-hot bins.

The sample / batch keys (beyond the common ones of :mod:`trainer.data.common`):

==================  =============================  ===============================================================
key                 batch type / shape             meaning
==================  =============================  ===============================================================
``images``          ``(B, N, 3, H_i, W_i)`` uint8  the augmented images (the model normalises them)
``has_boxes``       ``(B,)`` bool                  the keyframe's boxes are used (False: withheld by
                                                   ``box_fraction``; its ``gt_boxes`` are empty and mean nothing);
                                                   only with ``box_fraction < 1``
``K``               ``(B, N, 3, 3)`` float32       intrinsics of the augmented images, ``aug_from_img @ K``
``aug_from_img``    ``(B, N, 3, 3)`` float32       the image augmentation of each camera
``ego_from_cam``    ``(B, N, 4, 4)`` float32       camera to the (BEV-augmented) keyframe ego frame
``depth_map``       ``(B, N, h, w)`` float32       min LiDAR depth per feature cell (m), 0 where none; h = H_i / s
``fg_px``           ``list[(R_b, 6)]`` float32     foreground LiDAR pixels (``obj >= 0``) in the augmented
                                                   images: ``cam, u, v, depth, obj, gt``; ``obj`` the store's box
                                                   index (into ``frame.boxes``), ``gt`` the pixel's row of
                                                   ``gt_boxes`` (-1: its box was filtered out) (depth metrics,
                                                   inner depth)
``dino_feat``       ``(B, C, H, W)`` float16       the store's DINOv2 grid in the augmented BEV frame (``load_dino``)
``dino_count``      ``(B, H, W)`` int32            its pooled-point counts (``load_dino``)
``teacher_bev``     ``(B, C_t, H, W)`` float16     the LiDAR teacher's BEV map in the augmented BEV frame (``load_teacher``)
``frame_index``     ``(B,)`` int64                 the keyframe's position in its scene (0 starts a scene)
``prev_global_from_ego``  ``(B, 4, 4)`` float64    the previous keyframe's ego pose (its own at a scene's start)
``dt``              ``(B,)`` float32               seconds since the previous keyframe of the scene (at a scene's
                                                   start: to the next one; a lone keyframe: ``DEFAULT_DT``), the
                                                   interval velocity is regressed over
==================  =============================  ===============================================================

With ``prev_keyframe=true`` (a two-frame camera network, ``bevdepth4d`` / ``dvd4d``) a sample also carries the
previous keyframe of its scene, seen through the *same* augmentation draw (image and BEV) as the current one, so the
two BEV maps differ only by the ego motion and the objects' own (:func:`previous_keyframe` gathers them for the
model). At a scene's first keyframe the previous one is the keyframe itself (zero motion, as BEVDet4D):

=========================  =============================  ========================================================
``prev_images``            ``(B, N, 3, H_i, W_i)`` uint8  the previous keyframe's images, augmented alike
``prev_K``                 ``(B, N, 3, 3)`` float32       their intrinsics, ``aug_from_img @ K``
``prev_ego_from_cam``      ``(B, N, 4, 4)`` float32       its cameras in *its* (BEV-augmented) ego frame
``cur_from_prev``          ``(B, 4, 4)`` float32          that frame to the current augmented one:
                                                          ``A @ inv(G_cur) @ G_prev @ inv(A)``, ``A`` = ``aug_from_ego``
=========================  =============================  ========================================================

Streaming scenes (DESIGN.md, "Tracking"): with ``sequential_scenes=true`` every loader (training,
validation, prediction) uses :class:`SceneStreamBatchSampler`: each of the B batch slots walks its
scenes' keyframes in time order, so a temporal model carries state from one batch to the next per
scene (keyed by the sample's ``scene``, never by its slot). The sampler hands each keyframe over with
its stream's seed, from which the dataset draws the image and BEV augmentation: one draw per scene
stream and epoch, held for all its keyframes, so carried anchors stay in one consistent frame.

Shape letters: B batch, N cameras, H_i/W_i image rows/columns (after augmentation), h/w feature-map
rows/columns (image / ``depth_stride``), C DINOv2 channels, H/W BEV rows (ego y) / columns (ego x),
R LiDAR pixels.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from bevlabels.conf import plain
from bevlabels.datasets.base import DEFAULT_DT, DatasetError, Frame
from bevlabels.geometry import image_aug_matrix
from bevlabels.grid import GridSpec, resample_bev
from trainer.data.common import (
    LIST_KEYS,
    FrameDataModule,
    KeyframeDataset,
    choose_box_scenes,
    collate,
    gt_for_frame,
    sample_bev_aug,
)

#: keys the camera batch keeps as per-sample lists (ragged), beyond the common ones
CAMERA_LIST_KEYS = (*LIST_KEYS, "fg_px")


# ---------------------------------------------------------------------------------------------
# Image augmentation


def draw_image_aug(
    train: bool,
    resize_range: Sequence[float] = (1.0, 1.0),
    bottom_crop_range: Sequence[float] = (0.0, 0.0),
    flip_prob: float = 0.0,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The random part of an image augmentation, independent of the image size.

    ``{"resize": factor on the fit scale, "bottom": share of the bottom cropped away, "crop_x": where
    the crop's left edge lies in [0, 1] of its free range (None: centred), "flip": bool}``. One draw
    serves every camera of a keyframe; :func:`realise_image_aug` turns it into each camera's own
    resize and crop, so cameras of different sizes (AV2's portrait front one) share the same draw.
    """
    rng = rng or random
    if not train:
        return {"resize": 1.0, "bottom": float(np.mean(bottom_crop_range)), "crop_x": None, "flip": False}
    resize = rng.uniform(*resize_range)
    bottom = rng.uniform(*bottom_crop_range)
    crop_x = rng.random()
    flip = rng.random() < flip_prob
    return {"resize": resize, "bottom": bottom, "crop_x": crop_x, "flip": flip}


def realise_image_aug(image_wh: tuple[int, int], final_hw: Sequence[int], draw: Mapping[str, Any]) -> dict[str, Any]:
    """One camera's augmentation ``{"resize_wh", "crop_xy", "flip", "aug_from_img" (3, 3)}`` for an image ``(W, H)``.

    The fit scale ``max(H_f / H, W_f / W)`` makes the image cover ``final_hw`` whatever its
    orientation (a portrait image is fitted by its width), times the draw's ``resize``. The crop is
    ``final_hw`` large, its top at ``(1 - b) * H_resized - H_f`` (``b`` the draw's ``bottom``: BEVDepth's
    ``bot_pct_lim``; ``b = 0`` keeps the image's bottom), its left at ``crop_x`` of the free width
    (centred when None). A crop reaching outside the resized image reads zeros there.
    """
    W, H = image_wh
    fH, fW = (int(v) for v in final_hw)
    scale = max(fH / H, fW / W) * float(draw["resize"])
    new_w, new_h = int(round(W * scale)), int(round(H * scale))
    crop_y = int((1 - float(draw["bottom"])) * new_h) - fH
    free_x = max(0, new_w - fW)
    crop_x = int(free_x / 2) if draw["crop_x"] is None else int(float(draw["crop_x"]) * free_x)
    flip = bool(draw["flip"])
    # The exact per-axis scale of the integer-sized resize, so K_aug matches the pixels.
    aug = image_aug_matrix((new_w / W, new_h / H), (crop_x, crop_y), flip=flip, out_width=fW)
    return {"resize_wh": (new_w, new_h), "crop_xy": (crop_x, crop_y), "flip": flip, "aug_from_img": aug}


def sample_image_aug(
    image_wh: tuple[int, int], final_hw: Sequence[int], train: bool, **draw_args: Any
) -> dict[str, Any]:
    """One image augmentation for an image ``(W, H)``: :func:`draw_image_aug` then :func:`realise_image_aug`.

    ``draw_args``: the keywords of :func:`draw_image_aug` (``resize_range``, ``bottom_crop_range``, ``flip_prob``,
    ``rng``; their defaults are there). In training the fit scale is multiplied by a factor uniform in
    ``resize_range``, ``b`` is uniform in ``bottom_crop_range`` and the crop's left uniform over the free width; in
    evaluation the fit scale, the mean ``b`` and a centred crop.
    """
    return realise_image_aug(image_wh, final_hw, draw_image_aug(train, **draw_args))


def apply_image_aug(image, aug: Mapping[str, Any], final_hw: Sequence[int]) -> np.ndarray:
    """The augmented image ``(H_f, W_f, 3)`` uint8 of a PIL image: resize, crop, flip as :func:`sample_image_aug` drew."""
    from PIL import Image

    fH, fW = (int(v) for v in final_hw)
    x0, y0 = aug["crop_xy"]
    im = image.resize(aug["resize_wh"], Image.BILINEAR).crop((x0, y0, x0 + fW, y0 + fH))
    if aug["flip"]:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(im, dtype=np.uint8)


#: the JPEG decoder's reduce-on-load factors (libjpeg's DCT scaling), largest first
JPEG_SCALES = (8, 4, 2)


def jpeg_draft_scale(image_wh: tuple[int, int], resize_wh: tuple[int, int]) -> int:
    """The largest factor ``s`` of :data:`JPEG_SCALES` (else 1) that divides both sides of an image ``(W, H)`` and
    keeps it at least ``resize_wh`` large: decoded at ``1/s``, it still covers the size it is resized to.

    Only exact divisors: a decoded side of ``ceil(W / s)`` pixels would stretch the image by a fraction of a pixel
    when resized, moving it against its intrinsics; with ``W / s`` the resize maps the same image edges either way.
    """
    W, H = image_wh
    w, h = resize_wh
    for s in JPEG_SCALES:
        if W % s == 0 and H % s == 0 and W // s >= w and H // s >= h:
            return s
    return 1


def load_image(path: Path, resize_wh: tuple[int, int] | None = None):
    """The RGB PIL image at ``path``, or :class:`DatasetError` naming the file.

    ``resize_wh``: the size the image will be resized to (:func:`apply_image_aug`). A JPEG is then decoded at
    :func:`jpeg_draft_scale` of its size (PIL's ``draft``: libjpeg scales in the DCT, a 1600x900 nuScenes image
    for 704x396 decodes at 800x450 in about a third of the time), which the resize takes from there: the same
    pixels' geometry, since the resize maps the whole image whatever its decoded size. Other formats decode whole.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if resize_wh is not None and im.format == "JPEG":
                s = jpeg_draft_scale(im.size, resize_wh)
                if s > 1:
                    im.draft("RGB", (im.size[0] // s, im.size[1] // s))
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Depth targets


def depth_targets(
    lidar_px: Mapping[str, np.ndarray],
    aug_from_img: np.ndarray,
    image_hw: Sequence[int],
    stride: int,
    gt_of_obj: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense depth targets ``(N, h, w)`` float32 and the foreground pixels ``(R_fg, 6)`` of one keyframe, after augmentation.

    Args:
        lidar_px: the store's table (``cam, u, v, depth, obj``, each ``(R,)``, original resolution).
        aug_from_img: ``(N, 3, 3)`` each camera's image augmentation.
        image_hw: ``(H_i, W_i)`` of the augmented images.
        stride: feature-map stride; ``h, w = H_i / stride, W_i / stride``.
        gt_of_obj: ``(len(frame.boxes),)`` int, the ``gt_boxes`` row of each of the frame's boxes (-1 for
            boxes the GT filter dropped); None: every ``gt`` is -1.

    Returns the min depth of the LiDAR pixels in each stride x stride cell (0 where none), and the
    pixels with ``obj >= 0`` as rows ``cam, u, v, depth, obj, gt`` in augmented-image coordinates.
    """
    N = len(aug_from_img)
    Hi, Wi = (int(v) for v in image_hw)
    assert Hi % stride == 0 and Wi % stride == 0, f"image {Hi}x{Wi} is not a whole number of {stride}-pixel cells"
    h, w = Hi // stride, Wi // stride
    cam = lidar_px["cam"].astype(np.int64)
    A = np.asarray(aug_from_img, dtype=np.float64)  # (N, 3, 3)
    # One affine map per camera, applied to all rows at once by indexing the matrices by row.
    Ar = A[np.clip(cam, 0, N - 1)]  # (R, 3, 3)
    u = Ar[:, 0, 0] * lidar_px["u"] + Ar[:, 0, 1] * lidar_px["v"] + Ar[:, 0, 2]
    v = Ar[:, 1, 0] * lidar_px["u"] + Ar[:, 1, 1] * lidar_px["v"] + Ar[:, 1, 2]
    depth = lidar_px["depth"].astype(np.float64)
    keep = (cam < N) & (u >= 0) & (u < Wi) & (v >= 0) & (v < Hi) & (depth > 0)
    cam, u, v, depth, obj = cam[keep], u[keep], v[keep], depth[keep], lidar_px["obj"][keep]
    flat = (cam * h + np.floor(v / stride).astype(np.int64)) * w + np.floor(u / stride).astype(np.int64)
    dmap = torch.full((N * h * w,), float("inf"), dtype=torch.float32)
    dmap.scatter_reduce_(0, torch.from_numpy(flat), torch.from_numpy(depth.astype(np.float32)), reduce="amin")
    dmap = torch.where(torch.isinf(dmap), torch.zeros_like(dmap), dmap).view(N, h, w)
    fg = obj >= 0
    obj = obj[fg].astype(np.int64)
    gt = np.full(len(obj), -1, dtype=np.int64)
    if gt_of_obj is not None and len(obj):
        if obj.max() >= len(gt_of_obj):
            raise DatasetError(
                f"lidar_px.obj holds box index {int(obj.max())} but the keyframe has {len(gt_of_obj)} boxes: "
                "the label store was made from other annotations; remake it (make labels)"
            )
        gt = np.asarray(gt_of_obj, dtype=np.int64)[obj]
    fg_px = np.stack([cam[fg], u[fg], v[fg], depth[fg], obj, gt], 1).astype(np.float32)  # (R_fg, 6)
    return dmap, torch.from_numpy(fg_px.reshape(-1, 6))


# ---------------------------------------------------------------------------------------------
# BEV grids under the BEV augmentation


def resample_dino(
    feat: torch.Tensor, count: torch.Tensor, aug_from_ego: torch.Tensor, grid: GridSpec, mode: str = "nearest"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dino/feat (C, H, W)`` and ``dino/count (H, W)`` in the augmented BEV frame.

    Count is always nearest-neighbour (a count is not interpolable). ``mode="bilinear"`` averages the
    features of the occupied neighbours only (weights renormalised by occupancy), so empty cells'
    zeros do not shrink the features; a cell is then a target where its nearest source cell is.
    """
    count_aug = resample_bev(count[None].float(), grid, dst_from_src=aug_from_ego, mode="nearest")[0]
    if mode == "nearest":
        return resample_bev(feat, grid, dst_from_src=aug_from_ego, mode="nearest"), count_aug.round().to(count.dtype)
    if mode != "bilinear":
        raise ValueError(f"dino_interp must be 'nearest' or 'bilinear'; got {mode!r}")
    occ = (count > 0).float()[None]  # (1, H, W)
    both = resample_bev(
        torch.cat([feat.float() * occ, occ]), grid, dst_from_src=aug_from_ego, mode="bilinear"
    )  # (C+1, H, W)
    feat_aug = both[:-1] / both[-1:].clamp(min=1e-6)
    feat_aug = torch.where(count_aug[None] > 0, feat_aug, torch.zeros_like(feat_aug))
    return feat_aug.to(feat.dtype), count_aug.round().to(count.dtype)


# ---------------------------------------------------------------------------------------------
# The dataset


class CameraDataset(KeyframeDataset):
    """Keyframes as camera samples (see the module docstring for the keys); picklable for workers.

    Args:
        frames, adapter_cfg, train: as :class:`~trainer.data.common.KeyframeDataset`.
        grid, class_names, min_lidar_points: GT selection (:func:`~trainer.data.common.gt_for_frame`).
        label_store: path of the label store (``lidar_px``, and ``dino/*`` with ``load_dino``).
        image_aug: ``final_hw``, ``resize_range``, ``bottom_crop_range``, ``flip_prob`` (:func:`sample_image_aug`).
        bev_aug: ``rot_range``, ``scale_range``, ``flip_x_prob``, ``flip_y_prob``
            (:func:`~trainer.data.common.sample_bev_aug`), or ``None``; used in training only.
        depth_stride: feature stride of the depth targets (the model's lift-splat ``downsample``).
        load_dino: read ``dino/feat`` and ``dino/count``.
        dino_interp: ``"nearest"`` or ``"bilinear"`` (see :func:`resample_dino`).
        load_teacher: read ``teacher/bev`` (TiG-BEV's inner-feature distillation).
        teacher_interp: its resampling under BEV augmentation, ``"bilinear"`` or ``"nearest"``.
        hold_image_aug: with a stream seed, draw the image augmentation from it too (held per stream, the
            default); False: a fresh image draw per keyframe, the BEV augmentation still held (carried anchors
            need only that one consistent).
        withheld_scenes: the scenes whose boxes are withheld (label-scarce training, ``data.box_fraction``): their
            keyframes get no boxes and ``has_boxes`` False, so their detection loss is masked; their depth and
            distillation targets are kept. ``None`` or empty: every keyframe has its boxes.
        prev_keyframe: also load the previous keyframe's images and cameras (``prev_*``, ``cur_from_prev``: the
            module docstring), for a two-frame camera network.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        adapter_cfg: Mapping,
        train: bool,
        grid: GridSpec,
        class_names: Sequence[str],
        label_store: str,
        image_aug: Mapping[str, Any],
        bev_aug: Mapping[str, Any] | None,
        depth_stride: int,
        load_dino: bool,
        dino_interp: str = "nearest",
        min_lidar_points: int = 1,
        load_teacher: bool = False,
        teacher_interp: str = "bilinear",
        hold_image_aug: bool = True,
        withheld_scenes: Sequence[str] | None = None,
        prev_keyframe: bool = False,
    ):
        super().__init__(frames, adapter_cfg, train)
        self.prev_keyframe = bool(prev_keyframe)
        self.withheld_scenes = frozenset(withheld_scenes or ())
        from bevlabels.cache import LabelStoreReader

        self.grid = grid
        self.class_names = tuple(class_names)
        self.reader = LabelStoreReader(label_store)  # pickles as its path; opens per process
        self.image_aug = dict(image_aug)
        self.bev_aug = dict(bev_aug) if bev_aug else None
        self.depth_stride = int(depth_stride)
        self.load_dino = bool(load_dino)
        self.dino_interp = dino_interp
        self.min_lidar_points = int(min_lidar_points)
        self.load_teacher = bool(load_teacher)
        self.teacher_interp = teacher_interp
        self.hold_image_aug = bool(hold_image_aug)
        self._prev, self._next = {}, {}  # token -> previous / next keyframe of the same scene in this list
        for prev, cur in zip(self.frames[:-1], self.frames[1:]):
            if prev.scene == cur.scene and prev.index + 1 == cur.index:
                self._prev[cur.token], self._next[prev.token] = prev, cur

    def interval(self, frame: Frame) -> float:
        """Seconds from the previous keyframe of ``frame``'s scene to it (the scene's first: to the next one; a
        lone keyframe: :data:`~bevlabels.datasets.base.DEFAULT_DT`)."""
        prev, nxt = self._prev.get(frame.token), self._next.get(frame.token)
        if prev is not None:
            dt = (frame.timestamp - prev.timestamp) * 1e-6
        elif nxt is not None:
            dt = (nxt.timestamp - frame.timestamp) * 1e-6
        else:
            return DEFAULT_DT
        if not dt > 0:
            raise DatasetError(
                f"keyframe {frame.token} of scene {frame.scene}: its neighbour's timestamp is not later/earlier "
                f"({dt:+.6f} s apart): the scene's keyframes are out of time order"
            )
        return float(dt)

    def camera_inputs(
        self, frame: Frame, draw: Mapping[str, Any], final_hw: tuple[int, int], aug_from_ego: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """One keyframe's augmented images ``(N, H_i, W_i, 3)`` uint8, ``aug_from_img (N, 3, 3)``, ``K (N, 3, 3)`` and
        ``ego_from_cam (N, 4, 4)`` float64 in its own augmented ego frame, under the draw ``draw`` and ``aug_from_ego``."""
        images, aug_from_img, K, key_ego_from_cam = [], [], [], []
        for n, cam in enumerate(frame.cameras):
            if not cam.has_image:
                raise DatasetError(f"missing image for {cam.name} of keyframe {frame.token}: {cam.image_path}")
            aug = realise_image_aug((cam.width, cam.height), final_hw, draw)  # each camera at its own size
            images.append(apply_image_aug(load_image(cam.image_path, aug["resize_wh"]), aug, final_hw))
            aug_from_img.append(aug["aug_from_img"])
            K.append(aug["aug_from_img"] @ cam.K)
            key_ego_from_cam.append(frame.key_ego_from_cam(n))
        ego_from_cam = aug_from_ego.double() @ torch.as_tensor(np.stack(key_ego_from_cam))  # (N, 4, 4)
        return np.stack(images), np.stack(aug_from_img), np.stack(K), ego_from_cam

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``i``; ``(i, stream_seed)`` (:class:`SceneStreamBatchSampler`'s) draws the augmentation from the
        stream's seed, so every keyframe of a scene stream gets the same one."""
        i, stream_seed = (int(i[0]), int(i[1])) if isinstance(i, (tuple, list)) else (int(i), None)
        frame = self.frames[i]
        final_hw = tuple(int(v) for v in self.image_aug["final_hw"])
        # Python's RNG: Lightning's seed_everything(workers=True) seeds it in every worker too.
        rng = random.Random(stream_seed) if stream_seed is not None and self.hold_image_aug else None
        draw = draw_image_aug(
            self.train,
            resize_range=self.image_aug.get("resize_range", (1.0, 1.0)),
            bottom_crop_range=self.image_aug.get("bottom_crop_range", (0.0, 0.0)),
            flip_prob=float(self.image_aug.get("flip_prob", 0.0)),
            rng=rng,
        )
        if self.train and self.bev_aug is not None:
            gen = torch.Generator().manual_seed(stream_seed) if stream_seed is not None else None
            aug_from_ego = sample_bev_aug(**self.bev_aug, generator=gen)  # (4, 4) float32
        else:
            aug_from_ego = torch.eye(4)
        images, aug_from_img, K, ego_from_cam = self.camera_inputs(frame, draw, final_hw, aug_from_ego)

        boxes, labels, kept = gt_for_frame(
            frame, self.class_names, self.grid, self.min_lidar_points, aug_from_ego=aug_from_ego, return_index=True
        )
        has_boxes = frame.scene not in self.withheld_scenes
        if not has_boxes:  # withheld: nothing downstream may read this keyframe's boxes
            boxes, labels, kept = boxes[:0], labels[:0], kept[:0]
        gt_of_obj = np.full(len(frame.boxes), -1, dtype=np.int64)
        gt_of_obj[kept.numpy()] = np.arange(len(kept))
        s = self.reader.index_of(frame.token)
        depth_map, fg_px = depth_targets(
            self.reader.lidar_px(s), aug_from_img, final_hw, self.depth_stride, gt_of_obj=gt_of_obj
        )
        prev = self._prev.get(frame.token, frame)
        sample = {
            **self.common_sample(frame),
            "gt_boxes": boxes,
            "gt_labels": labels,
            "aug_from_ego": aug_from_ego.float(),
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (N, 3, H_i, W_i)
            "K": torch.as_tensor(K, dtype=torch.float32),
            "aug_from_img": torch.as_tensor(aug_from_img, dtype=torch.float32),
            "ego_from_cam": ego_from_cam.float(),
            "depth_map": depth_map,
            "fg_px": fg_px,
            "frame_index": torch.tensor(frame.index, dtype=torch.int64),
            "prev_global_from_ego": torch.as_tensor(prev.global_from_ego, dtype=torch.float64),
            "dt": torch.tensor(self.interval(frame), dtype=torch.float32),
        }
        if self.prev_keyframe:  # the same draws: the two maps differ by motion alone
            p_images, _, p_K, p_ego_from_cam = (
                (images, None, K, ego_from_cam)
                if prev is frame
                else self.camera_inputs(prev, draw, final_hw, aug_from_ego)
            )
            cur_from_prev = cur_from_prev_of(frame, prev, aug_from_ego)
            sample.update(
                prev_images=torch.from_numpy(p_images).permute(0, 3, 1, 2).contiguous(),
                prev_K=torch.as_tensor(p_K, dtype=torch.float32),
                prev_ego_from_cam=p_ego_from_cam.float(),
                cur_from_prev=cur_from_prev,
            )
        if self.withheld_scenes:  # label-scarce only: without it the batch, and every loss, is today's exactly
            sample["has_boxes"] = torch.tensor(has_boxes)
        if self.load_dino:
            feat = torch.from_numpy(np.asarray(self.reader.dino_feat(s)))  # (C, H, W) float16
            count = torch.from_numpy(np.asarray(self.reader.dino_count(s)).astype(np.int32))  # (H, W)
            sample["dino_feat"], sample["dino_count"] = resample_dino(
                feat, count, aug_from_ego, self.grid, self.dino_interp
            )
        if self.load_teacher:
            tmap = torch.from_numpy(np.asarray(self.reader.teacher_bev(s)))  # (C_t, H, W) float16
            sample["teacher_bev"] = resample_bev(
                tmap.float(), self.grid, dst_from_src=aug_from_ego, mode=self.teacher_interp
            ).to(tmap.dtype)
        return sample


def cur_from_prev_of(frame: Frame, prev: Frame, aug_from_ego: torch.Tensor) -> torch.Tensor:
    """``(4, 4)`` float32: the previous keyframe's (augmented) ego frame to the current one's,
    ``A inv(G_cur) G_prev inv(A)`` with ``A = aug_from_ego`` (the same BEV augmentation on both), computed in float64."""
    A = aug_from_ego.double()
    G_cur = torch.as_tensor(frame.global_from_ego, dtype=torch.float64)
    G_prev = torch.as_tensor(prev.global_from_ego, dtype=torch.float64)
    return (A @ torch.linalg.solve(G_cur, G_prev) @ torch.linalg.inv(A)).float()


def previous_keyframe(batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The previous keyframe of a ``prev_keyframe`` batch as :meth:`CameraBEV.forward
    <trainer.models.components.camera_bev.CameraBEV.forward>` reads it (``images``, ``K``, ``ego_from_cam``,
    ``cur_from_prev``); None for a batch without one."""
    if "prev_images" not in batch:
        return None
    return {
        "images": batch["prev_images"],
        "K": batch["prev_K"],
        "ego_from_cam": batch["prev_ego_from_cam"],
        "cur_from_prev": batch["cur_from_prev"],
    }


# ---------------------------------------------------------------------------------------------
# Streaming scenes


class SceneStreamBatchSampler(BatchSampler):
    """Batches of dataset indices where slot b of every batch walks its own scenes' keyframes in time order.

    Scenes (runs of equal ``scenes[i]`` in the dataset's order, which is scene by scene in time
    order) are dealt to ``R * batch_size`` streams, R the number of ranks (processes), longest
    first to the shortest stream; rank r reads streams ``r, r + R, ...`` as its slots. Batch t of a
    rank holds the t-th keyframe of every slot of that rank that still has one (the last batches may
    be smaller). With ``shuffle`` the scene order is reshuffled each epoch (:meth:`set_epoch`, which
    Lightning calls) from ``seed + epoch``, the same on every rank.

    Under DDP each rank gets whole scenes, and each scene goes to one rank once per epoch. Ranks
    must run the same number of batches (DDP's collectives would hang otherwise), so with R > 1 an
    epoch is as long as the rank whose longest slot is shortest: the keyframes past that point at the
    end of the other ranks' longest slots are left out of this epoch, as ``DistributedSampler``'s
    ``drop_last`` does (:meth:`dropped` counts them; balanced dealing keeps it below one scene per
    rank, and the shuffle changes which each epoch). With one rank nothing is dropped.

    The ranks: ``num_replicas`` / ``rank`` if given; else those of ``sampler`` when it is a
    ``DistributedSampler`` (Lightning, which knows this class is a ``BatchSampler``, rebuilds it with
    its ``DistributedSampler`` under DDP; only that sampler's rank, world size and seed are read,
    never its indices); else ``torch.distributed``'s when initialised; else one rank.
    """

    def __init__(
        self,
        scenes: Sequence[str],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        with_stream_seed: bool = False,
    ):
        from torch.utils.data import DistributedSampler

        self.with_stream_seed = bool(with_stream_seed)
        self.scenes = list(scenes)
        super().__init__(range(len(self.scenes)), int(batch_size), bool(drop_last))
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0
        if num_replicas is None and isinstance(sampler, DistributedSampler):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        elif num_replicas is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        self.num_replicas, self.rank = int(num_replicas or 1), int(rank or 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"SceneStreamBatchSampler: rank {self.rank} is not in [0, {self.num_replicas})")
        self.runs: list[list[int]] = []
        for i, s in enumerate(self.scenes):
            if self.runs and self.scenes[self.runs[-1][-1]] == s:
                self.runs[-1].append(i)
            else:
                self.runs.append([i])
        self._run_of = {i: r for r, run in enumerate(self.runs) for i in run}
        if len(self.runs) < self.num_replicas:
            raise ValueError(
                f"SceneStreamBatchSampler: {len(self.runs)} scenes cannot give each of {self.num_replicas} ranks a "
                "whole scene: use fewer processes (trainer.devices) or more scenes"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_streams(self) -> list[list[int]]:
        """Every rank's slots of this epoch: ``R * batch_size`` index streams (rank r owns ``r::R``)."""
        runs = list(self.runs)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(runs)
        n = self.num_replicas * self.batch_size
        streams: list[list[int]] = [[] for _ in range(min(n, len(runs)))]
        for run in sorted(runs, key=len, reverse=True):  # stable: equal lengths keep the (shuffled) order
            min(streams, key=len).extend(run)
        return streams + [[] for _ in range(n - len(streams))]

    def _steps(self, streams: list[list[int]]) -> int:
        per_rank = [max(len(s) for s in streams[r :: self.num_replicas]) for r in range(self.num_replicas)]
        return min(per_rank)

    def streams(self) -> list[list[int]]:
        """This rank's ``batch_size`` slots' index streams of this epoch (empty slots dropped)."""
        return [s for s in self._all_streams()[self.rank :: self.num_replicas] if s]

    def dropped(self) -> int:
        """Keyframes of this epoch no rank reads (0 with one rank)."""
        streams = self._all_streams()
        t = self._steps(streams)
        return sum(max(0, len(s) - t) for s in streams)

    def stream_seed(self, index: int) -> int:
        """The augmentation seed of the scene stream holding dataset ``index`` this epoch: one per scene
        (run) and epoch, the same on every rank."""
        run = self._run_of[index]
        return ((self.seed * 1_000_003 + self.epoch) * 100_003 + run) % 2**62

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        """Batch t: the t-th keyframe of every slot that still has one; with ``with_stream_seed`` each index
        comes as ``(index, stream_seed)`` (:class:`CameraDataset` draws its augmentation from it)."""
        slots = self.streams()
        for t in range(self._steps(self._all_streams())):
            batch = [s[t] for s in slots if t < len(s)]
            yield [(i, self.stream_seed(i)) for i in batch] if self.with_stream_seed else batch

    def __len__(self) -> int:
        return self._steps(self._all_streams())


# ---------------------------------------------------------------------------------------------
# The data module


class CameraDataModule(FrameDataModule):
    """Camera keyframes + a label store (see the module docstring); arguments beyond :class:`FrameDataModule`'s:

    Args:
        image_aug: ``final_hw`` (H_i, W_i), ``resize_range``, ``bottom_crop_range``, ``flip_prob``.
        bev_aug: ``rot_range``, ``scale_range``, ``flip_x_prob``, ``flip_y_prob``; ``None``: none.
        depth_stride: the model's feature stride (``lift_splat.downsample``) for the depth targets.
        load_dino: read the DINOv2 grids (the distillation needs them).
        dino_interp: resampling of ``dino/feat`` under BEV augmentation, ``nearest`` or ``bilinear``.
        load_teacher: read the LiDAR teacher's maps ``teacher/bev`` (TiG-BEV's inner-feature distillation);
            the store must hold them (``make teacher``).
        teacher_interp: their resampling under BEV augmentation, ``bilinear`` (default) or ``nearest``.
        sequential_scenes: every loader streams scenes in order (:class:`SceneStreamBatchSampler`), with the
            augmentation held per scene stream (a temporal model's data).
        stream_seed: the seed of the streams' scene shuffle and augmentation draws (with the epoch).
        stream_image_aug: ``"held"`` (default: one image augmentation per stream, as the BEV one) or
            ``"per_keyframe"`` (a fresh image draw per keyframe, the BEV one held): more diversity per step for
            small batches of streams (results/bench_dvd_cpu_temporal.md).
        box_fraction: the share of training scenes whose boxes are used (label-scarce training; 1.0: all, today's
            behaviour). Chosen by :func:`~trainer.data.common.choose_box_scenes` (:attr:`box_scenes`); the other
            training keyframes carry no boxes and ``has_boxes`` False. Validation always has its boxes.
        box_fraction_seed: the seed of that choice (the config passes the run's ``seed``; None: 0).
        prev_keyframe: every sample also carries its previous keyframe (``prev_*``, ``cur_from_prev``), for a
            two-frame camera network (``model.detector.camera_bev.frames=2``).
    """

    def __init__(
        self,
        dataset: Mapping,
        grid: Mapping,
        class_names: Sequence[str],
        label_store: str | None,
        image_aug: Mapping[str, Any],
        bev_aug: Mapping[str, Any] | None = None,
        depth_stride: int = 16,
        load_dino: bool = False,
        dino_interp: str = "nearest",
        sequential_scenes: bool = False,
        stream_seed: int = 0,
        load_teacher: bool = False,
        teacher_interp: str = "bilinear",
        stream_image_aug: str = "held",
        box_fraction: float = 1.0,
        box_fraction_seed: int | None = None,
        prev_keyframe: bool = False,
        **kwargs: Any,
    ):
        stages = ("labels", "teacher") if load_teacher else ("labels",)
        super().__init__(dataset, grid, class_names, label_store=label_store, store_stages=stages, **kwargs)
        self.image_aug = plain(image_aug)
        self.bev_aug = plain(bev_aug) if bev_aug else None
        self.depth_stride = int(depth_stride)
        fH, fW = (int(v) for v in self.image_aug["final_hw"])
        if fH % self.depth_stride or fW % self.depth_stride:
            raise ValueError(
                f"data.image_aug.final_hw {[fH, fW]} must be a multiple of data.depth_stride {self.depth_stride}"
            )
        self.load_dino = bool(load_dino)
        if dino_interp not in ("nearest", "bilinear"):
            raise ValueError(f"data.dino_interp must be 'nearest' or 'bilinear'; got {dino_interp!r}")
        self.dino_interp = dino_interp
        self.sequential_scenes = bool(sequential_scenes)
        self.stream_seed = int(stream_seed)
        if stream_image_aug not in ("held", "per_keyframe"):
            raise ValueError(f"data.stream_image_aug must be 'held' or 'per_keyframe'; got {stream_image_aug!r}")
        self.stream_image_aug = stream_image_aug
        self.load_teacher = bool(load_teacher)
        if teacher_interp not in ("nearest", "bilinear"):
            raise ValueError(f"data.teacher_interp must be 'nearest' or 'bilinear'; got {teacher_interp!r}")
        self.teacher_interp = teacher_interp
        if not 0.0 <= float(box_fraction) <= 1.0:
            raise ValueError(f"data.box_fraction must lie in [0, 1]; got {box_fraction}")
        self.box_fraction = float(box_fraction)
        self.box_fraction_seed = int(box_fraction_seed) if box_fraction_seed is not None else 0
        self.prev_keyframe = bool(prev_keyframe)

    @property
    def box_scenes(self) -> list[str] | None:
        """The training scenes whose boxes are used (``None``: all, ``box_fraction`` 1.0)."""
        if self.box_fraction >= 1.0:
            return None
        return choose_box_scenes(self.scenes("train"), self.box_fraction, self.box_fraction_seed)

    def withheld_scenes(self) -> list[str]:
        """The training scenes whose boxes are not used (empty with ``box_fraction`` 1.0)."""
        chosen = self.box_scenes
        return [] if chosen is None else sorted(set(self.scenes("train")) - set(chosen))

    def box_scene_record(self) -> dict[str, Any]:
        """What a run records of its label-scarce choice: fraction, seed, the training scenes and the chosen ones."""
        scenes = self.scenes("train")
        chosen = scenes if self.box_scenes is None else self.box_scenes
        return {
            "box_fraction": self.box_fraction,
            "box_fraction_seed": self.box_fraction_seed,
            "train_scenes": len(scenes),
            "box_scenes": list(chosen),
        }

    # -- the label store ---------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Refuse a missing label store (saying to run ``make labels``), or one of another grid or keyframes."""
        if not self.label_store or not (Path(self.label_store) / "zarr.json").is_file():
            raise FileNotFoundError(
                f"label store {self.label_store} not found: run `make labels` first (it writes "
                f'{self.label_store} for the default dataset), or `make labels ARGS="dataset=... grid=... '
                f'out={self.label_store}"`, or point data.label_store at an existing store'
            )
        if self.load_teacher:
            from bevlabels.cache import LabelStoreReader

            stages = LabelStoreReader(self.label_store).stages
            if "teacher" not in stages:
                raise FileNotFoundError(
                    f"data.load_teacher=true but the label store {self.label_store} holds no teacher maps "
                    f"(teacher/bev): run `make teacher` (or `make teacher-cache TEACHER_STORE={self.label_store}` "
                    "with a trained teacher checkpoint)"
                )
            dims = stages["teacher"]["dims"]
            if (int(dims["H_t"]), int(dims["W_t"])) != tuple(self.grid.shape):
                raise ValueError(
                    f"the teacher maps of {self.label_store} are {dims['H_t']}x{dims['W_t']} cells; the grid "
                    f"{self.grid.name} is {self.grid.shape[0]}x{self.grid.shape[1]}: recache them on this grid "
                    "(`make teacher-cache`, with resample=true for a teacher trained on another grid)"
                )
        super().check_inputs()

    @property
    def teacher_channels(self) -> int:
        """C_t of the store's ``teacher/bev``."""
        from bevlabels.cache import LabelStoreReader

        return int(LabelStoreReader(self.label_store).stages["teacher"]["dims"]["C_t"])

    @property
    def dino_channels(self) -> int:
        """C of the store's ``dino/feat``."""
        from bevlabels.cache import LabelStoreReader

        return int(LabelStoreReader(self.label_store).stages["labels"]["dims"]["C"])

    # -- datasets and loaders ----------------------------------------------------------------------
    def make_dataset(self, frames: Sequence[Frame], train: bool) -> CameraDataset:
        return CameraDataset(
            frames,
            self.dataset_cfg["adapter"],
            train=train,
            grid=self.grid,
            class_names=self.class_names,
            label_store=self.label_store,
            image_aug=self.image_aug,
            bev_aug=self.bev_aug,
            depth_stride=self.depth_stride,
            load_dino=self.load_dino,
            dino_interp=self.dino_interp,
            min_lidar_points=self.min_lidar_points,
            load_teacher=self.load_teacher,
            teacher_interp=self.teacher_interp,
            hold_image_aug=self.stream_image_aug == "held",
            withheld_scenes=self.withheld_scenes(),
            prev_keyframe=self.prev_keyframe,
        )

    def collate_fn(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate(samples, list_keys=CAMERA_LIST_KEYS)

    def _stream_loader(self, split: str, train: bool) -> DataLoader:
        """Scene streams (:class:`SceneStreamBatchSampler`, shuffled scenes in training), each keyframe with its
        stream's augmentation seed."""
        frames = self.frames(split)
        sampler = SceneStreamBatchSampler(
            [f.scene for f in frames], self.batch_size, shuffle=train, seed=self.stream_seed, with_stream_seed=True
        )
        return DataLoader(
            self.make_dataset(frames, train=train),
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            **self.loader_kwargs(),  # validation's workers persist too: the sampler (and its epoch) lives here
        )

    def train_dataloader(self) -> DataLoader:
        return self._stream_loader("train", True) if self.sequential_scenes else super().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._stream_loader("val", False) if self.sequential_scenes else super().val_dataloader()

    def predict_dataloader(self, split: str = "val") -> DataLoader:
        """Keyframes of ``split`` without augmentation: in order, or as scene streams (``sequential_scenes``)."""
        return self._stream_loader(split, False) if self.sequential_scenes else super().predict_dataloader(split)


__all__ = [
    "CAMERA_LIST_KEYS",
    "CameraDataModule",
    "CameraDataset",
    "SceneStreamBatchSampler",
    "apply_image_aug",
    "depth_targets",
    "jpeg_draft_scale",
    "load_image",
    "previous_keyframe",
    "resample_dino",
    "sample_image_aug",
    "draw_image_aug",
    "realise_image_aug",
]
