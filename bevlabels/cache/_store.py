"""Errors, the kill-safe zarr store, and the helpers writer and reader share.

zarr's ``LocalStore`` writes a key by opening the file and writing into it: a process killed in
between leaves a truncated chunk or, worse, a truncated ``zarr.json`` that makes the whole store
unreadable. :class:`AtomicLocalStore` writes every key to a temporary sibling and renames it into
place (``os.replace``, atomic on POSIX filesystems), so a reader, or a rerun, sees each key either
whole-old or whole-new. A kill leaves at most a temporary file, which the next writer sweeps away.
(Safe against a killed process, not against a power cut: nothing is fsynced.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

TMP_MARK = ".bevlabels-tmp-"


class StoreError(RuntimeError):
    """A label store cannot be used as asked; the message says why and what to do."""


class StoreMismatchError(StoreError):
    """The store was made from something else (grid, dataset, feature model, keyframes) than asked for.

    ``field`` names what differs; ``store_value`` and ``requested_value`` are both sides.
    """

    def __init__(self, field: str, store_value, requested_value, message: str):
        super().__init__(message)
        self.field = field
        self.store_value = store_value
        self.requested_value = requested_value


class StoreIncompleteError(StoreError):
    """Keyframes asked for are not written (``done`` is False); ``indices`` lists them."""

    def __init__(self, message: str, indices: Sequence[int] = ()):
        super().__init__(message)
        self.indices = np.asarray(indices, dtype=np.int64)


class StoreLockedError(StoreError):
    """Another run holds the store's lock; ``holder`` is what its lock file says (host, pid, started)."""

    def __init__(self, message: str, holder: Mapping | None = None):
        super().__init__(message)
        self.holder = dict(holder or {})


def atomic_put(path: Path, data, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # create-if-absent, with its content already in place
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: exclusive create, not atomic
            try:
                with open(path, "xb") as f:
                    f.write(data)
            except FileExistsError:
                pass
    finally:
        tmp.unlink(missing_ok=True)


class AtomicLocalStore(LocalStore):
    """A zarr ``LocalStore`` whose every write is a rename of a complete temporary file."""

    supports_partial_writes: bool = False

    async def set(self, key: str, value: Buffer) -> None:
        await self._atomic_set(key, value, exclusive=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._atomic_set(key, value, exclusive=True)

    async def _atomic_set(self, key: str, value: Buffer, exclusive: bool) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"AtomicLocalStore.set(): value must be a zarr Buffer, got {type(value)}")
        await asyncio.to_thread(atomic_put, self.root / key, value.as_buffer_like(), exclusive)

    async def set_partial_values(self, key_start_values: Iterable) -> None:
        raise NotImplementedError("AtomicLocalStore writes whole keys only")


def open_root(path: Path, *, writable: bool) -> zarr.Group:
    """The store's root group: read-write through :class:`AtomicLocalStore`, or read-only."""
    if writable:
        return zarr.open_group(store=AtomicLocalStore(path), mode="r+")
    return zarr.open_group(store=LocalStore(path, read_only=True), mode="r")


def read_root_attrs(path: Path) -> dict | None:
    """The root ``zarr.json``'s attributes, ``None`` when there is no root ``zarr.json``.

    Raises :class:`StoreError` when it exists but is not a zarr v3 group's metadata.
    """
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{meta} is unreadable ({e}); overwrite=true replaces the store") from e
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreError(f"{path} is not a zarr v3 group; overwrite=true replaces it")
    return dict(doc.get("attributes") or {})


def clear_dir(path: Path, keep: Iterable[str] = ()) -> None:
    """Delete everything inside ``path`` except the entries named in ``keep`` (the lock file)."""
    keep = set(keep)
    for entry in Path(path).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def sweep_tmp(path: Path) -> int:
    """Remove temporary files a killed writer left in the store; returns how many."""
    n = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            if TMP_MARK in name:
                Path(dirpath, name).unlink(missing_ok=True)
                n += 1
    return n


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(obj, where: str = "value"):
    """``obj`` as plain JSON types (numpy scalars and arrays, tuples, paths converted); raises naming the key."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (bytes, bytearray)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where} = {obj!r} ({type(obj).__name__}) is not JSON-able; store attrs need JSON values")
