"""Writing a label store: the driver's :class:`LabelStoreWriter` and the workers' :class:`KeyframeWriter`.

Shapes as in :mod:`bevlabels.cache.schema`: ``S`` keyframes, ``C`` feature channels, ``(H, W)`` the
BEV grid (rows along ego y, columns along ego x), ``R`` rows of a keyframe's ``lidar_px`` table.

How a run goes::

    with LabelStoreWriter.create_or_open(out, sample_tokens=..., scenes=..., grid=..., dataset=...,
                                         feature_model=..., channels=C, config=cfg) as store:
        todo = store.todo_indices()                  # keyframes a previous run did not finish
        kw = store.keyframe_writer()                 # picklable: hand it to the dask tasks
        ...  # each task: kw.write_keyframe(s, dino_feat=..., dino_count=..., lidar_px=...)
        store.record_failures({scene: reason, ...})  # the driver, after gathering the tasks' results
        log.info(store.summary())

The driver holds the store's lock (:mod:`bevlabels.cache.lock`) from ``create_or_open`` until the
``with`` block ends; worker tasks, in other processes or on other machines sharing the filesystem,
open the store by path through their :class:`KeyframeWriter` and write only their own keyframes.
A later stage adds its own arrays and done flags with :meth:`LabelStoreWriter.add_stage` and
writes them through ``store.keyframe_writer("teacher").write_keyframe_arrays(s, {...})``.

Why a run killed at any moment, then rerun, leaves the same store as an uninterrupted run:

1. Every file is written whole or not at all: :class:`~bevlabels.cache._store.AtomicLocalStore`
   writes each key to a temporary file and renames it into place. A kill leaves at most a
   temporary file, swept by the next ``create_or_open``.
2. The template (root group, ``sample_token``, ``scene``, every stage array, the done flags) is
   written after the root attrs are marked ``template: "writing"`` (the first write, before anything
   an overwrite deletes); the full attrs, in one atomic write of the root ``zarr.json``, come last
   and are the commit point. A store found half-written is rebuilt from scratch; nothing else can
   be lost, because no task writes before ``create_or_open`` returns.
   A complete template is never written again: a rerun checks it instead (grid, dataset, feature
   model, label params, keyframes) and refuses a mismatch unless ``overwrite=True``.
3. Keyframe ``s`` is written as: clear ``done[s]`` if it was set (a rewrite must not look finished
   half-way), write ``[s]`` of each array (chunks are ``(1, ...)``, so this replaces exactly one chunk
   file per array and never reads or rewrites a neighbour's bytes), re-create the table arrays
   ``lidar_px/{s:06d}``, and LAST set ``done[s] = True`` (its own one-keyframe chunk). A kill before
   the last step leaves ``done[s]`` False, so the rerun redoes keyframe ``s`` completely from the same
   inputs; a kill after it leaves keyframe ``s`` complete, and the rerun skips it.
4. Root attrs change after the template only in the driver process (``record_failures``,
   ``add_stage``), each an atomic rewrite; tasks never touch the root ``zarr.json`` (zarr creates a
   missing parent group only if it is absent, and the template has created them all).
5. One run at a time: the lock refuses a second run, and a killed run's stale lock is taken over.

So the arrays of a resumed store equal those of an uninterrupted one byte for byte, provided the
stage computes the same values for the same keyframe (the attrs differ only in their timestamps).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import zarr

from bevlabels.cache._store import (
    TMP_MARK,
    StoreError,
    StoreMismatchError,
    atomic_put,
    clear_dir,
    jsonable,
    now_iso,
    open_root,
    read_root_attrs,
    sweep_tmp,
)
from bevlabels.cache.lock import LOCK_NAME, StoreLock
from bevlabels.cache.reader import LabelStoreReader, check_template, format_examples, read_rows, template_state
from bevlabels.cache.schema import (
    FLOAT32_EXACT_INT,
    LABELS,
    SAMPLE_TOKEN,
    SCENE,
    SCHEMA_VERSION,
    STORE_FORMAT,
    StageSpec,
    stage_entry,
    string_dtype,
    table_key,
)
from bevlabels.grid import GridSpec

log = logging.getLogger(__name__)

# Distributions whose versions a store records (absent ones are left out).
VERSIONED = ("bevlabels", "numpy", "zarr", "numcodecs", "torch", "dask", "transformers", "nuscenes-devkit", "av2")


@functools.lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name in VERSIONED:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
    return tuple(out)


def library_versions() -> dict[str, str]:
    """``{distribution: version}`` of the libraries that shape a store's content, where installed."""
    return dict(_library_versions())


def feature_model_record(feature_model: Mapping, channels: int) -> dict:
    """``feature_model`` (an extractor's ``describe()``) as a store's attrs record it: JSON values, ``channels`` added.

    Raises ``ValueError`` when ``name`` or ``weights`` is missing, ``weights`` is neither
    ``"pretrained:<id>"``, ``"random-init"`` nor ``"oracle:<what>"`` (a synthetic oracle,
    :mod:`bevlabels.features.oracle`: never mistaken for a foundation model), or ``channels`` is not a positive int (or disagrees
    with a ``channels`` already given). A task compares its own extractor's record with the store's.
    """
    feature_model = jsonable(dict(feature_model), "feature_model")
    for key in ("name", "weights"):
        if key not in feature_model:
            raise ValueError(f"feature_model needs name and weights; missing {key!r}")
    weights = str(feature_model["weights"])
    tagged = any(weights.startswith(t) and len(weights) > len(t) for t in ("pretrained:", "oracle:"))
    if not tagged and weights != "random-init":
        raise ValueError(
            f"feature_model.weights must be 'pretrained:<id>', 'random-init' or 'oracle:<what>', got {weights!r}"
        )
    if isinstance(channels, bool) or int(channels) != channels or channels <= 0:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if feature_model.setdefault("channels", int(channels)) != int(channels):
        raise ValueError(f"feature_model.channels = {feature_model['channels']} but channels = {channels}")
    return feature_model


def _mismatch(path: Path, field: str, stored, requested, what: str = "") -> StoreMismatchError:
    return StoreMismatchError(
        field,
        stored,
        requested,
        f"{path} was made with another {field}: {what or f'the store has {stored!r}, this run asks for {requested!r}'}. "
        "overwrite=true replaces the store (its labels are lost)",
    )


def _create_stage_arrays(root: zarr.Group, stage: StageSpec, dims: Mapping[str, int], n: int) -> None:
    """Create a stage's done flags ``(S,)``, arrays ``(S, *shape)`` (one keyframe per chunk) and table groups."""
    root.create_array(stage.done, shape=(n,), dtype="bool", chunks=(1,), fill_value=False)
    for a in stage.arrays:
        kf = a.keyframe_shape(dims)
        root.create_array(a.name, shape=(n, *kf), dtype=a.dtype, chunks=(1, *kf), fill_value=a.fill_value)
    for t in stage.tables:
        root.create_group(
            t.name,
            attributes={
                "columns": [list(c) for c in t.columns],
                "layout": f"one float32 array (R, {len(t.columns)}) per keyframe s: {t.name}/{{s:06d}}",
            },
        )


def _delete_paths(path: Path, names: Sequence[str]) -> None:
    for name in names:
        target = path / name
        if target.is_dir():
            clear_dir(target)
            target.rmdir()


def _foreign_entries(path: Path) -> list[str]:
    """Names in ``path`` that no label-store run leaves there (not the lock, not a temporary file)."""
    return [p.name for p in path.iterdir() if not p.name.startswith(LOCK_NAME) and TMP_MARK not in p.name]


def _check_dims(stage: StageSpec, dims: Mapping[str, int]) -> dict[str, int]:
    missing = [d for d in stage.dims if d not in dims]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs dims {list(stage.dims)}; missing {missing}")
    out = {d: int(dims[d]) for d in stage.dims}
    bad = {d: v for d, v in out.items() if v <= 0}
    if bad:
        raise ValueError(f"stage {stage.name!r}: dims must be positive, got {bad}")
    return out


class LabelStoreWriter(LabelStoreReader):
    """The driver's handle on a label store it holds the lock of; a context manager releasing the lock.

    Build it with :meth:`create_or_open` (the label stage) or :meth:`open` (a later stage). All of
    :class:`LabelStoreReader`'s methods work; done masks are read fresh each time.
    """

    _writable = True
    _cache_done = False

    def __init__(self, path: str | Path, *, _lock: StoreLock):
        super().__init__(path)
        self._lock = _lock

    def __reduce__(self):
        raise TypeError("a LabelStoreWriter holds the store's lock: hand workers store.keyframe_writer() instead")

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        path: str | Path,
        *,
        sample_tokens: Sequence[str],
        scenes: Sequence[str],
        grid: GridSpec,
        dataset: Mapping,
        feature_model: Mapping,
        channels: int,
        config: Mapping | None = None,
        params: Mapping | None = None,
        overwrite: bool = False,
    ) -> LabelStoreWriter:
        """A writer on the store at ``path``, locked: its template written if absent, checked if present.

        ``sample_tokens`` and ``scenes`` ``(S,)``: every keyframe of the dataset in scene order (a
        scene's keyframes contiguous). ``dataset``: ``{name, version[, root]}``. ``feature_model``:
        ``{name, weights, ...}`` with ``weights`` ``"pretrained:<id>"`` or ``"random-init"``; only what
        changes the features belongs in it (all of it is compared on reopen); ``channels`` is ``C``
        and is recorded in it. ``params``: label parameters that change the stored values
        (accumulation, visibility, ...), compared on reopen. ``config``: the resolved run config,
        recorded, never compared.

        An existing store must match ``schema_version``, the grid's geometry, the dataset's name and
        version (another ``root`` is accepted with a warning: the same dataset moved), the feature
        model, the params and the keyframes (same tokens, same order, same scenes); otherwise
        :class:`StoreMismatchError` names the field and both values. ``overwrite=True`` deletes the
        store and writes a new template. A second run on the store raises :class:`StoreLockedError`.
        """
        path = Path(path)
        tokens, scene_names = cls._check_keyframes(sample_tokens, scenes)
        dataset, feature_model = cls._check_identity_args(dataset, feature_model, channels)
        params = jsonable(dict(params or {}), "params")
        config = jsonable(dict(config or {}), "config")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory; pick another store path")
        lock = StoreLock(path).acquire()
        try:
            try:
                found = template_state(read_root_attrs(path))
            except StoreError:  # an unreadable root zarr.json
                if not overwrite:
                    raise
                found = "foreign"
            if found == "absent" and _foreign_entries(path):
                raise StoreError(
                    f"{path} is a non-empty directory, not a zarr store: pick another path (overwrite=true "
                    "replaces stores only, it does not empty a directory)"
                )
            state = "overwrite" if overwrite else found
            if state == "foreign":
                raise StoreError(f"{path} is a zarr group but not a label store; overwrite=true replaces it")
            if state == "complete":
                attrs = read_root_attrs(path)
                check_template(path, attrs)
                cls._check_existing(path, attrs, tokens, scene_names, grid, dataset, feature_model, params)
                n = sweep_tmp(path)
                if n:
                    log.info("%s: removed %d temporary files a killed run left", path, n)
                log.info("%s: resuming (template matches)", path)
            else:
                if state == "partial":
                    log.warning("%s: the template was half-written by a killed run; rebuilding it", path)
                elif state == "overwrite":
                    log.warning("%s: overwrite=true: deleting the store and writing a new template", path)
                created = now_iso()
                final = {
                    "format": STORE_FORMAT,
                    "schema_version": SCHEMA_VERSION,
                    "grid": grid.to_dict(),
                    "dataset": dataset,
                    "feature_model": feature_model,
                    "params": params,
                    "config": config,
                    "versions": library_versions(),
                    "created": created,
                    "failures": {},
                    "stages": {LABELS.name: stage_entry(LABELS, cls._labels_dims(grid, channels), {}, created)},
                }
                cls._write_template(path, tokens, scene_names, cls._labels_dims(grid, channels), final)
                log.info(
                    "%s: wrote the template (%d keyframes, grid %s, C=%d)", path, len(tokens), grid.shape, channels
                )
                if feature_model["weights"] == "random-init":
                    log.warning("%s: features come from a randomly initialised %s", path, feature_model["name"])
            return cls(path, _lock=lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | Path) -> LabelStoreWriter:
        """A writer on an existing, complete store, locked (for a later stage or driver bookkeeping)."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no label store at {path}; the label stage makes it")
        lock = StoreLock(path).acquire()
        try:
            check_template(path, read_root_attrs(path))
            sweep_tmp(path)
            return cls(path, _lock=lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_for_task(cls, path: str | Path, stage: str = "labels") -> KeyframeWriter:
        """A :class:`KeyframeWriter` on the store at ``path``, for a worker task (takes no lock)."""
        return KeyframeWriter(path, stage)

    def close(self) -> None:
        """Release the store's lock (the store stays readable through this object)."""
        self._lock.release()

    @contextlib.contextmanager
    def lock(self) -> Iterator[LabelStoreWriter]:
        """A context holding the store's lock (taken by ``create_or_open``/``open``), released on exit, errors too."""
        self._lock.acquire()  # a no-op while held
        try:
            yield self
        finally:
            self.close()

    def __enter__(self) -> LabelStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- template internals ------------------------------------------------------------------------
    @staticmethod
    def _labels_dims(grid: GridSpec, channels: int) -> dict[str, int]:
        return {"C": int(channels), "H": grid.ny, "W": grid.nx}

    @staticmethod
    def _check_keyframes(sample_tokens, scenes) -> tuple[list[str], list[str]]:
        tokens, scene_names = [str(t) for t in sample_tokens], [str(s) for s in scenes]
        if not tokens:
            raise ValueError("a label store needs at least one keyframe; sample_tokens is empty")
        if len(tokens) != len(scene_names):
            raise ValueError(f"sample_tokens has {len(tokens)} entries but scenes has {len(scene_names)}")
        if len(set(tokens)) != len(tokens):
            values, counts = np.unique(tokens, return_counts=True)
            raise ValueError(f"sample_tokens has duplicates: {format_examples(values[counts > 1])}")
        runs = [s for i, s in enumerate(scene_names) if i == 0 or s != scene_names[i - 1]]
        if len(runs) != len(set(runs)):
            split = sorted({s for s in runs if runs.count(s) > 1})
            raise ValueError(
                f"keyframes must be in scene order (each scene contiguous); split scenes: {format_examples(split)}"
            )
        return tokens, scene_names

    @staticmethod
    def _check_identity_args(dataset: Mapping, feature_model: Mapping, channels: int) -> tuple[dict, dict]:
        dataset = jsonable(dict(dataset), "dataset")
        missing = [k for k in ("name", "version") if k not in dataset]
        if missing:
            raise ValueError(f"dataset needs name and version (and root); missing {missing}")
        return dataset, feature_model_record(feature_model, channels)

    @staticmethod
    def _write_template(path: Path, tokens, scene_names, dims, final_attrs: dict) -> None:
        # First mark the store as a template being written (one atomic write of the root metadata),
        # then delete the rest: a kill from here to the commit leaves a store the rerun rebuilds.
        marker = {"zarr_format": 3, "node_type": "group", "attributes": {"format": STORE_FORMAT, "template": "writing"}}
        atomic_put(path / "zarr.json", json.dumps(marker).encode(), exclusive=False)
        clear_dir(path, keep=(LOCK_NAME, "zarr.json"))
        root = open_root(path, writable=True)
        for name, values in ((SAMPLE_TOKEN, tokens), (SCENE, scene_names)):
            dtype = string_dtype(values)
            with warnings.catch_warnings():  # fixed_length_utf32 has no v3 spec yet: zarr warns on creation
                warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
                arr = root.create_array(name, shape=(len(values),), dtype=dtype, chunks=(len(values),), fill_value="")
            arr[:] = np.asarray(values, dtype=dtype)
        _create_stage_arrays(root, LABELS, dims, len(tokens))
        root.attrs.put(final_attrs)  # the commit point: the template is complete from here on

    @staticmethod
    def _check_existing(path, attrs, tokens, scene_names, grid, dataset, feature_model, params) -> None:
        stored_grid = GridSpec.from_dict(attrs["grid"])
        if not stored_grid.same_geometry(grid):
            raise _mismatch(path, "grid", stored_grid.to_dict(), grid.to_dict())
        for key in ("name", "version"):
            if attrs["dataset"].get(key) != dataset.get(key):
                raise _mismatch(path, f"dataset.{key}", attrs["dataset"].get(key), dataset.get(key))
        if attrs["dataset"].get("root") != dataset.get("root"):
            log.warning(
                "%s: made from the dataset at %s, now read from %s (same name and version: accepted)",
                path,
                attrs["dataset"].get("root"),
                dataset.get("root"),
            )
        for field, stored, requested in (
            ("feature_model", attrs["feature_model"], feature_model),
            ("params", attrs.get("params", {}), params),
        ):
            if stored != requested:
                keys = sorted(k for k in set(stored) | set(requested) if stored.get(k) != requested.get(k))
                diff = ", ".join(f"{k}: store {stored.get(k)!r} vs run {requested.get(k)!r}" for k in keys)
                raise _mismatch(path, field, stored, requested, diff)
        root = open_root(path, writable=False)
        stored_tokens = [str(t) for t in root[SAMPLE_TOKEN][:]]
        if stored_tokens != tokens:
            extra = [t for t in stored_tokens if t not in set(tokens)]
            missing = [t for t in tokens if t not in set(stored_tokens)]
            if extra:
                what = f"the store has {len(extra)} keyframes the dataset does not ({format_examples(extra)})"
            elif missing:
                what = f"the dataset has {len(missing)} keyframes the store does not ({format_examples(missing)})"
            else:
                i = next(i for i, (a, b) in enumerate(zip(stored_tokens, tokens)) if a != b)
                what = f"same keyframes in another order (index {i}: store {stored_tokens[i]}, dataset {tokens[i]})"
            raise _mismatch(path, "sample_tokens", f"{len(stored_tokens)} keyframes", f"{len(tokens)} keyframes", what)
        stored_scenes = [str(s) for s in root[SCENE][:]]
        if stored_scenes != scene_names:
            i = next(i for i, (a, b) in enumerate(zip(stored_scenes, scene_names)) if a != b)
            raise _mismatch(
                path,
                "scenes",
                stored_scenes[i],
                scene_names[i],
                f"keyframe {i} ({tokens[i]}) is in scene "
                f"{stored_scenes[i]} in the store, {scene_names[i]} in the dataset",
            )

    def _put_attrs(self, attrs: dict) -> None:
        self._group().attrs.put(attrs)
        self._attrs = attrs

    # -- stages ------------------------------------------------------------------------------------
    def add_stage(
        self, stage: StageSpec, *, dims: Mapping[str, int], identity: Mapping | None = None, overwrite: bool = False
    ) -> None:
        """Create a later stage's arrays ``(S, ...)`` and done flags ``(S,)``, or check the existing ones.

        ``dims`` resolves the stage's shape letters (e.g. ``{"C_t": 64, "H_t": 128, "W_t": 128}``);
        ``identity`` is what the stage's values depend on (teacher checkpoint, ...). A stage already in
        the store must have the same dims and identity, else :class:`StoreMismatchError`, unless
        ``overwrite=True``, which deletes that stage's arrays (not the others) and creates them anew.
        Same kill-safety as the template: the stage's record in ``attrs["stages"]`` is written last.
        """
        if stage.name == LABELS.name:
            raise ValueError("the labels stage is part of the template: use create_or_open(overwrite=True)")
        dims = _check_dims(stage, dims)
        identity = jsonable(dict(identity or {}), "identity")
        attrs = self.attrs
        entry = attrs["stages"].get(stage.name)
        if entry is not None and not overwrite:
            for field, stored, requested in (("dims", entry["dims"], dims), ("identity", entry["identity"], identity)):
                if stored != requested:
                    raise _mismatch(self.path, f"stages.{stage.name}.{field}", stored, requested)
            return
        if entry is not None:  # overwrite: forget the stage first, so a kill below leaves it absent
            del attrs["stages"][stage.name]
            attrs["failures"].pop(stage.name, None)
            self._put_attrs(attrs)
            log.warning("%s: overwrite=true: deleting the %s stage", self.path, stage.name)
        _delete_paths(self.path, stage.paths)  # leftovers of a killed or replaced attempt
        self._arrays, self._done = {}, {}
        _create_stage_arrays(self._group(), stage, dims, self.num_keyframes)
        attrs["stages"][stage.name] = stage_entry(stage, dims, identity, now_iso())
        self._put_attrs(attrs)  # the commit point of the stage's template
        log.info("%s: added the %s stage (dims %s)", self.path, stage.name, dims)

    def keyframe_writer(self, stage: str = "labels") -> KeyframeWriter:
        """A picklable :class:`KeyframeWriter` for worker tasks writing ``stage``'s keyframes."""
        self._stage(stage)
        return KeyframeWriter(self.path, stage)

    # -- the driver's bookkeeping ------------------------------------------------------------------
    def record_failures(self, failures: Mapping[str, object], stage: str = "labels") -> dict[str, str]:
        """The stage's failures ``{scene: reason}`` after recording this run's (driver only, after the tasks).

        Each failure is logged as a warning and kept in ``attrs["failures"][stage]``; an earlier
        failure whose scene is now complete is dropped. Also records the run's end in
        ``attrs["stages"][stage]["last_run"]``.
        """
        self._stage(stage)
        known = set(self.scenes.tolist())
        unknown = [s for s in failures if s not in known]
        if unknown:
            raise ValueError(f"failures name scenes the store does not have: {format_examples(unknown)}")
        for scene, reason in failures.items():
            log.warning("%s: %s stage: scene %s failed: %s", self.path, stage, scene, reason)
        done = self.done_mask(stage)
        complete = set(self.scenes[done].tolist()) - set(self.scenes[~done].tolist())
        attrs = self.attrs
        current = {s: r for s, r in attrs["failures"].get(stage, {}).items() if s not in complete}
        current.update({str(s): str(r) for s, r in failures.items()})
        attrs["failures"][stage] = current
        attrs["stages"][stage]["last_run"] = {
            "finished": now_iso(),
            "done": int(done.sum()),
            "total": int(done.size),
            "failed_scenes": len(current),
        }
        self._put_attrs(attrs)
        return current


def _as_index(s, n: int) -> int:
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
        raise TypeError(f"keyframe index must be an int, got {type(s).__name__}")
    if not 0 <= int(s) < n:
        raise IndexError(f"keyframe index {s} out of range [0, {n})")
    return int(s)


def _check_array(name: str, value, expected_shape: tuple[int, ...], expected_dtype: np.dtype, letters) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != expected_shape:
        named = f"({', '.join(letters)}) = {expected_shape}" if letters else f"{expected_shape}"
        raise ValueError(f"{name}: expected shape {named}, got {a.shape}")
    if a.dtype != expected_dtype:
        raise ValueError(
            f"{name}: expected dtype {expected_dtype}, got {a.dtype}; cast it explicitly "
            "(checking the range: a silent cast would overflow)"
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} values are not finite (nan or inf)")
    return a


def _pack_table(name: str, value, columns: Sequence[Sequence[str]]) -> np.ndarray:
    """A table given as ``{column: (R,)}`` or ``(R, n)``, checked and packed as float32 ``(R, n)``."""
    names = [c for c, _ in columns]
    if isinstance(value, Mapping):
        if set(value) != set(names):
            raise ValueError(f"{name}: expected columns {names}, got {sorted(value)}")
        cols = [np.asarray(value[c]) for c in names]
        bad = {c: col.shape for c, col in zip(names, cols) if col.ndim != 1 or col.shape != cols[0].shape}
        if bad:
            raise ValueError(f"{name}: columns must be 1-D of one length R; got shapes {bad} (first {cols[0].shape})")
    else:
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ValueError(
                f"{name}: expected a dict of columns {names} or an array (R, {len(names)}), got {arr.shape}"
            )
        cols = [arr[:, j] for j in range(len(names))]
    out = np.empty((cols[0].shape[0], len(names)), dtype=np.float32)  # (R, n)
    for j, ((col, dtype), values) in enumerate(zip(columns, cols)):
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{name}.{col}: expected numbers, got dtype {values.dtype}")
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            lo, hi = max(info.min, -FLOAT32_EXACT_INT), min(info.max, FLOAT32_EXACT_INT)
            if values.size and (values.min() < lo or values.max() > hi):
                raise ValueError(f"{name}.{col}: values must lie in [{lo}, {hi}] ({dtype}, exact in float32)")
            if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
                raise ValueError(f"{name}.{col}: expected integers ({dtype}), got fractional values")
        elif not np.isfinite(values).all():
            raise ValueError(f"{name}.{col}: {int((~np.isfinite(values)).sum())} values are not finite")
        out[:, j] = values
    return out


class KeyframeWriter:
    """What a worker task holds to write one stage's keyframes: picklable (a path and a stage name).

    Opens the store on first use, in whichever process it runs; takes no lock (the run's driver
    holds it). Each task must write only its own keyframes.
    """

    def __init__(self, path: str | Path, stage: str = "labels"):
        self.path = Path(path)
        self.stage = stage
        self._reset()

    def _reset(self) -> None:
        self._root: zarr.Group | None = None
        self._attrs: dict = {}
        self._entry: dict = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._done: zarr.Array | None = None

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "stage": self.stage}

    def __setstate__(self, state: dict) -> None:
        self.path, self.stage = Path(state["path"]), state["stage"]
        self._reset()

    def __repr__(self) -> str:
        return f"KeyframeWriter({str(self.path)!r}, stage={self.stage!r})"

    def _open(self) -> None:
        if self._root is not None:
            return
        attrs = read_root_attrs(self.path)
        check_template(self.path, attrs)
        if self.stage not in attrs.get("stages", {}):
            raise StoreError(f"{self.path} has no {self.stage!r} stage; the driver adds it first (add_stage)")
        entry = attrs["stages"][self.stage]
        root = open_root(self.path, writable=True)
        self._arrays = {name: root[name] for name in entry["arrays"]}
        self._done = root[entry["done"]]
        self._attrs, self._entry, self._root = attrs, entry, root

    @property
    def attrs(self) -> dict:
        """The store's root attributes as the task first read them (``feature_model``, ``grid``, ...)."""
        self._open()
        return json.loads(json.dumps(self._attrs))

    def done_mask(self) -> np.ndarray:
        """``(S,)`` bool: which keyframes of the stage are written (read now, not cached).

        Reads one chunk file per keyframe of the store: a task reads :meth:`done_rows` of its own.
        """
        self._open()
        return np.asarray(self._done[:], dtype=bool)

    def done_rows(self, rows) -> np.ndarray:
        """``(n,)`` bool: which of the keyframes ``rows`` ``(n,)`` of the stage are written (read now).

        Reads only those keyframes' chunks of the done array.
        """
        self._open()
        return read_rows(self._done, rows, f"{self.path} {self.stage} done")

    def is_done(self, s: int) -> bool:
        """True when keyframe ``s`` of the stage is written."""
        self._open()
        return bool(self._done[_as_index(s, self._done.shape[0])])

    def write_keyframe(self, s: int, *, dino_feat, dino_count, lidar_px) -> None:
        """Write keyframe ``s`` of the label stage, done flag last (returns nothing).

        ``dino_feat (C, H, W)`` float16, ``dino_count (H, W)`` uint16, ``lidar_px`` a dict of
        ``(R,)`` columns ``cam, u, v, depth, obj`` or an array ``(R, 5)`` in that column order
        (``R`` may be 0).
        """
        if self.stage != LABELS.name:
            raise ValueError(f"write_keyframe writes the labels stage; this writer is for {self.stage!r}")
        self.write_keyframe_arrays(s, {"dino/feat": dino_feat, "dino/count": dino_count}, tables={"lidar_px": lidar_px})

    def write_keyframe_arrays(
        self, s: int, arrays: Mapping[str, object], tables: Mapping[str, object] | None = None
    ) -> None:
        """Write keyframe ``s`` of every array and table of the stage, then its done flag (returns nothing).

        ``arrays``: ``{name: (*keyframe shape)}`` in the stored dtype, e.g. ``{"teacher/bev": (C_t, H_t, W_t)
        float16}``; every array of the stage must be given. ``tables``: ``{name: dict of (R,) columns
        or (R, n) array}``. Everything is checked before anything is written; errors name the array.
        """
        self._open()
        n = self._done.shape[0]
        s = _as_index(s, n)
        tables = dict(tables or {})
        for given, expected, kind in ((arrays, self._arrays, "arrays"), (tables, self._entry["tables"], "tables")):
            missing, unknown = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
            if missing or unknown:
                raise ValueError(
                    f"stage {self.stage!r} writes the {kind} {sorted(expected)} for each keyframe; "
                    f"missing {missing}, unknown {unknown}"
                )
        checked = {
            name: _check_array(name, arrays[name], z.shape[1:], z.dtype, self._entry["arrays"][name]["shape"])
            for name, z in self._arrays.items()
        }
        packed = {
            name: _pack_table(name, tables[name], spec["columns"]) for name, spec in self._entry["tables"].items()
        }

        if self._done[s]:
            self._done[s] = False  # a rewrite must not look finished while half-written
        for name, value in checked.items():
            self._arrays[name][s] = value  # exactly the chunk (1, ...) of keyframe s
        for name, rows in packed.items():
            names = [c for c, _ in self._entry["tables"][name]["columns"]]
            t = self._root.create_array(
                table_key(name, s),
                shape=rows.shape,
                dtype="float32",
                chunks=(max(rows.shape[0], 1), rows.shape[1]),
                fill_value=0,
                attributes={"columns": names},
                overwrite=True,
            )
            if rows.shape[0]:
                t[...] = rows
        self._done[s] = True  # last: the keyframe is complete
