"""The label store: one zarr v3 store per dataset holding the offline labels (schema in :mod:`.schema`).

:class:`LabelStoreWriter` (the stage driver, holding the store's lock), :class:`KeyframeWriter`
(the worker tasks, one keyframe at a time), :class:`LabelStoreReader` (the trainer, notebooks).
"""

from bevlabels.cache._store import (
    StoreError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from bevlabels.cache.lock import LOCK_NAME, StoreLock
from bevlabels.cache.reader import LabelStoreReader
from bevlabels.cache.schema import LABELS, LIDAR_PX, SCHEMA_VERSION, STAGES, TEACHER, ArraySpec, StageSpec, TableSpec
from bevlabels.cache.writer import KeyframeWriter, LabelStoreWriter

__all__ = [
    "LABELS",
    "LIDAR_PX",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "STAGES",
    "TEACHER",
    "ArraySpec",
    "KeyframeWriter",
    "LabelStoreReader",
    "LabelStoreWriter",
    "StageSpec",
    "StoreError",
    "StoreIncompleteError",
    "StoreLockedError",
    "StoreLock",
    "StoreMismatchError",
    "TableSpec",
]
