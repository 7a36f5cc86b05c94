"""Sparse4D's temporal instance bank: the best instances of a keyframe, carried into the next one, with track ids.

Per stream (a batch slot walking one scene's keyframes in time order; the state is keyed by the stream's
key, the scene, never by the slot's position in the batch) the bank keeps, after each keyframe, the
``num_temp_instances`` instances of highest confidence: their features and anchors (detached), their
confidence and their track ids, with the keyframe's timestamp and its ``aug_from_global`` (the pose of
the frame the anchors live in: the BEV augmentation, held for the whole stream, times ``ego_from_global``).

At the next keyframe of the stream (:meth:`InstanceBank.carried`), if 0 < dt <= ``max_time_interval``
seconds, the cached anchors are moved into the current frame (:func:`project_anchors`): each centre
first advanced by its velocity x dt in the frame it was cached in, then mapped with
``cur_from_prev = aug_from_global_cur @ inv(aug_from_global_prev)``; the yaw vector and the velocity
rotated by its linear part; sizes kept. Otherwise (a scene's first keyframe, a gap over 2 s, time going
backwards at an epoch's restart) the stream starts afresh.

In the decoder the carried instances are the keys of the ``temp_attn`` ops, and after the first
``refine`` (:meth:`InstanceBank.merge`, the head's ``after_refine`` hook) the queries become the carried
instances followed by the ``Q - T`` best new queries (by their best class probability), so Q stays fixed
(Sparse4D's ``InstanceBank.update``). A stream without carried instances keeps its own queries.

After the last layer (:meth:`InstanceBank.cache`): the confidence of a carried instance is
``max(decay x its previous confidence, its current one)`` (Sparse4D's ``confidence_decay``, 0.6), the
top T are kept. Track ids (:meth:`InstanceBank.cache` with ``assign_ids``): a carried instance keeps its
id; a new query gets a fresh id only if its confidence reaches ``new_id_threshold``; ids are plain ints,
unique over the bank's life (so within a scene); -1 means no id.

Sparse4D's released code writes ``[cos, sin]`` into the ``[SIN, COS]`` slots when it rotates anchors
(its issue #61); here the rotated vector is written back through the named columns.

Devices and precision: every tensor the bank keeps or returns lives on its inputs' device (the features',
anchors' and poses' of :meth:`InstanceBank.cache`; nothing is moved to the host, so a CUDA step never meets a
CPU pose); which streams carry is host bookkeeping of the keys and timestamps (Python values, never a tensor
read back from the device). Poses are float64 and the anchors' projection is elementwise in float32 at
least, so autocast's bf16 matmuls never touch them.

Shape letters: B streams (batch slots), Q queries, T carried instances, C channels, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.models.components.sparse.anchors import ANCHOR_DIM, COS, SIN, VX, VY, VZ, X, Y, Z
from trainer.models.components.sparse.decoder import CarriedInstances


def project_anchors(anchor: torch.Tensor, cur_from_prev: torch.Tensor, dt: torch.Tensor | float) -> torch.Tensor:
    """Anchors ``(..., T, 11)`` of frame *prev* moved into frame *cur* ``(..., 4, 4)`` after ``dt`` seconds ``(...)``.

    Centre: ``cur_from_prev @ (c + v dt)``; ``(cos, sin)`` and ``(vx, vy, vz)`` rotated by the linear part
    (a rotation; with the same BEV augmentation on both sides, a conjugated rotation, scale included in
    the translation); log sizes unchanged.
    """
    assert anchor.shape[-1] == ANCHOR_DIM, f"anchor must be (..., T, 11); got {tuple(anchor.shape)}"
    anchor = anchor.to(torch.promote_types(anchor.dtype, torch.float32))
    M = cur_from_prev.to(device=anchor.device, dtype=anchor.dtype)
    R, t = M[..., None, :3, :3], M[..., None, :3, 3]  # (..., 1, 3, 3), (..., 1, 3)
    dt = torch.as_tensor(dt, dtype=anchor.dtype, device=anchor.device)[..., None, None]  # (..., 1, 1)

    def rotate(R: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # R @ v, elementwise: autocast leaves it alone
        return (R * v[..., None, :]).sum(-1)

    vel = anchor[..., [VX, VY, VZ]]
    centre = anchor[..., [X, Y, Z]] + vel * dt
    out = anchor.clone()
    out[..., [X, Y, Z]] = rotate(R, centre) + t
    cos_sin = torch.stack([anchor[..., COS], anchor[..., SIN]], -1)  # the heading as a vector (cos, sin)
    turned = rotate(R[..., :2, :2], cos_sin)
    out[..., COS], out[..., SIN] = turned[..., 0], turned[..., 1]
    out[..., [VX, VY, VZ]] = rotate(R, vel)
    return out


@dataclass
class _Stream:
    timestamp: int  # microseconds of the cached keyframe
    aug_from_global: torch.Tensor  # (4, 4) float64 on the inputs' device: the frame the cached anchors live in
    feature: torch.Tensor  # (T, C) detached
    anchor: torch.Tensor  # (T, 11) detached
    confidence: torch.Tensor  # (T,)
    ids: torch.Tensor  # (T,) long, -1: no id


class InstanceBank:
    """The temporal memory of the sparse head (module docstring). Holds no parameters; not in checkpoints.

    Args:
        num_temp_instances: T, instances carried per stream (Sparse4Dv3: 600 of 900 queries).
        confidence_decay: a carried instance's confidence floor, times its previous one (0.6).
        max_time_interval: seconds; a longer gap between a stream's keyframes starts it afresh (2.0).
        new_id_threshold: confidence a new query needs for a track id (Sparse4D's tracking threshold).
    """

    def __init__(
        self,
        num_temp_instances: int = 600,
        confidence_decay: float = 0.6,
        max_time_interval: float = 2.0,
        new_id_threshold: float = 0.2,
    ):
        if num_temp_instances < 1:
            raise ValueError(f"num_temp_instances must be >= 1; got {num_temp_instances}")
        self.num_temp_instances = int(num_temp_instances)
        self.confidence_decay = float(confidence_decay)
        self.max_time_interval = float(max_time_interval)
        self.new_id_threshold = float(new_id_threshold)
        self.streams: dict[str, _Stream] = {}
        self.next_id = 0
        self._valid: list[bool] | None = None  # B of the keyframe in flight: which streams carry (host bookkeeping)

    def reset(self) -> None:
        """Forget every stream (e.g. between validation and training)."""
        self.streams = {}
        self._valid = None

    # -- before the decoder --------------------------------------------------------------------------
    def carried(
        self, keys: Sequence[str], timestamps: Sequence[int] | torch.Tensor, aug_from_global: torch.Tensor
    ) -> tuple[CarriedInstances | None, torch.Tensor]:
        """The carried instances of this keyframe's streams (None when no stream carries any), and ``dt (B,)``
        float64 seconds since each stream's cached keyframe (0 where it starts afresh), on ``aug_from_global``'s
        device, as the carried instances.

        ``keys``: B stream keys; ``timestamps``: B microseconds (a host sequence; a tensor is read once);
        ``aug_from_global (B, 4, 4)``: the frame the model predicts in (the held BEV augmentation times
        ``ego_from_global``).
        """
        B = len(keys)
        ts = [int(t) for t in (timestamps.tolist() if isinstance(timestamps, torch.Tensor) else timestamps)]
        assert len(ts) == B and aug_from_global.shape == (B, 4, 4), (
            f"{B} keys need B timestamps and aug_from_global (B, 4, 4); got {len(ts)}, {tuple(aug_from_global.shape)}"
        )
        device = aug_from_global.device
        valid, gaps = [False] * B, [0.0] * B
        for b, (k, t) in enumerate(zip(keys, ts)):
            s = self.streams.get(k)
            if s is not None and 0 < t - s.timestamp <= self.max_time_interval * 1e6:
                valid[b], gaps[b] = True, (t - s.timestamp) / 1e6
        self._valid = valid
        dt = torch.tensor(gaps, dtype=torch.float64).to(device, non_blocking=True)
        if not any(valid):
            return None, dt
        first = next(self.streams[k] for k, v in zip(keys, valid) if v)
        T, C = first.feature.shape
        feature = torch.zeros(B, T, C, device=device, dtype=first.feature.dtype)
        anchor = torch.zeros(B, T, ANCHOR_DIM, device=device, dtype=first.anchor.dtype)
        anchor[..., COS] = 1.0  # rows of streams that carry nothing: a 1 m box at the origin, finite embeddings
        for b, k in enumerate(keys):
            if valid[b]:
                s = self.streams[k]
                # float64: autocast leaves it alone
                cur_from_prev = aug_from_global[b].double() @ torch.linalg.inv(s.aug_from_global.double())
                feature[b] = s.feature
                anchor[b] = project_anchors(s.anchor, cur_from_prev, gaps[b])
        carries = torch.tensor(valid).to(device, non_blocking=True)
        return CarriedInstances(feature, anchor, carries), dt

    # -- after the first refine ----------------------------------------------------------------------
    def merge(
        self, carried: CarriedInstances | None, instance_feature: torch.Tensor, anchor: torch.Tensor, cls: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``(B, Q, C)``, ``(B, Q, 11)``: per carrying stream the T carried instances then the ``Q - T`` best
        new queries (by ``max sigmoid(cls)``), in that order; other streams keep theirs."""
        if carried is None:
            return instance_feature, anchor
        B, Q, C = instance_feature.shape
        T = carried.anchor.shape[1]
        assert Q > T, f"{Q} queries cannot hold {T} carried instances and new ones"
        conf = cls.detach().sigmoid().amax(-1)  # (B, Q)
        top = conf.topk(Q - T, dim=1).indices  # (B, Q - T)
        new_f = instance_feature.gather(1, top[..., None].expand(-1, -1, C))
        new_a = anchor.gather(1, top[..., None].expand(-1, -1, ANCHOR_DIM))
        merged_f = torch.cat([carried.instance_feature.to(new_f.dtype), new_f], 1)
        merged_a = torch.cat([carried.anchor.to(new_a.dtype), new_a], 1)
        keep = carried.valid.to(instance_feature.device)[:, None, None]
        return torch.where(keep, merged_f, instance_feature), torch.where(keep, merged_a, anchor)

    # -- after the last layer ------------------------------------------------------------------------
    @torch.no_grad()
    def cache(
        self,
        keys: Sequence[str],
        timestamps: Sequence[int] | torch.Tensor,
        aug_from_global: torch.Tensor,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        cls: torch.Tensor,
        assign_ids: bool = False,
    ) -> torch.Tensor | None:
        """Keep each stream's top T of the last layer; with ``assign_ids``, return every query's track id ``(B, Q)``.

        Queries ``[0, T)`` of a stream that carried (this keyframe's :meth:`carried`) are its carried instances
        (after :meth:`merge`): they inherit ids and decayed confidences. Streams absent from ``keys`` are dropped.
        """
        B, Q, C = instance_feature.shape
        T = self.num_temp_instances
        assert Q >= T, f"{Q} queries cannot fill {T} carried instances"
        ts = [int(t) for t in (timestamps.tolist() if isinstance(timestamps, torch.Tensor) else timestamps)]
        valid = self._valid if self._valid is not None and len(self._valid) == B else [False] * B
        conf = cls.detach().float().sigmoid().amax(-1)  # (B, Q)
        ids = torch.full((B, Q), -1, dtype=torch.long, device=conf.device)
        streams: dict[str, _Stream] = {}
        for b, k in enumerate(keys):
            c = conf[b].clone()
            if valid[b]:
                prev = self.streams[k]
                c[:T] = torch.maximum(prev.confidence.to(c.device) * self.confidence_decay, c[:T])
                ids[b, :T] = prev.ids.to(ids.device)
            if assign_ids:
                new = (ids[b] < 0) & (conf[b] >= self.new_id_threshold)
                n = int(new.sum())
                ids[b, new] = torch.arange(self.next_id, self.next_id + n, device=ids.device)
                self.next_id += n
            keep = c.topk(T).indices
            streams[k] = _Stream(
                timestamp=ts[b],
                aug_from_global=aug_from_global[b].detach().double(),  # on the inputs' device: no host copy
                feature=instance_feature[b, keep].detach(),
                anchor=anchor[b, keep].detach(),
                confidence=c[keep],
                ids=ids[b, keep],
            )
        self.streams = streams
        self._valid = None
        return ids if assign_ids else None


__all__ = ["InstanceBank", "project_anchors"]
