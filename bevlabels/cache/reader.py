"""Reading a label store: :class:`LabelStoreReader` (read-only, picklable, opens lazily).

Shapes as in :mod:`bevlabels.cache.schema`: ``S`` keyframes, ``C`` feature channels, ``(H, W)`` the
BEV grid (rows along ego y, columns along ego x), ``R`` rows of a keyframe's ``lidar_px`` table.

A torch ``DataLoader`` worker can hold a reader: pickling keeps only the path, and each process
opens the store on first use. The reader refuses to return a keyframe whose stage has not marked
it done (its data may be half-written), and :meth:`LabelStoreReader.check_compatible` is what the
trainer calls before training: it refuses a store whose grid or keyframes differ from the config.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr

from bevlabels.cache._store import (
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    open_root,
    read_root_attrs,
)
from bevlabels.cache.schema import SAMPLE_TOKEN, SCENE, SCHEMA_VERSION, STORE_FORMAT, table_key
from bevlabels.grid import GridSpec

_SHOW = 5  # how many tokens an error message lists

#: why a store of an older schema version is refused, by its version
SCHEMA_CHANGES = {
    1: "Its labels were pooled under a 4 px z-buffer that lets the ground behind objects take their features "
    "(25% of the background cells of the synthetic oracle store carry an object class; issue 32). ",
}


def template_state(attrs: dict | None) -> str:
    """``"absent"`` (no root metadata), ``"partial"`` (template being written or killed while it was),
    ``"complete"``, or ``"foreign"`` (a zarr group that is not a label store)."""
    if attrs is None:
        return "absent"
    if attrs.get("format") != STORE_FORMAT:
        return "foreign"
    if attrs.get("template") == "writing" or "schema_version" not in attrs:
        return "partial"
    return "complete"


def check_template(path: Path, attrs: dict | None) -> None:
    """Raise unless ``attrs`` are a complete label store template of this schema version."""
    state = template_state(attrs)
    if state == "absent":
        raise StoreError(f"{path} is not a label store (no zarr.json); make one with the label stage")
    if state == "foreign":
        raise StoreError(
            f"{path} is a zarr group but not a bevlabels label store (attrs.format is not {STORE_FORMAT!r})"
        )
    if state == "partial":
        raise StoreError(
            f"{path}: the store's template is half-written (a run was killed while creating it); "
            "rerun the label stage, which rebuilds it",
        )
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise StoreMismatchError(
            "schema_version",
            attrs["schema_version"],
            SCHEMA_VERSION,
            f"{path} has schema version {attrs['schema_version']}; this bevlabels reads version {SCHEMA_VERSION}. "
            + SCHEMA_CHANGES.get(attrs["schema_version"], "")
            + f'Remake it: make labels ARGS="out={path} overwrite=true ..." (the same features, dataset and grid), '
            "or use the bevlabels version that wrote it",
        )


def read_rows(done: zarr.Array, rows, where: str = "done") -> np.ndarray:
    """``(n,)`` bool: the flags ``done[rows]`` of the store rows ``rows`` ``(n,)``, in their order.

    Reads only the chunks of those rows (a done array has one keyframe per chunk, so a scene's task
    reads its own keyframes' flags, not one file per keyframe of the whole store). ``IndexError``
    names ``where`` and the first row out of range.
    """
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)  # (n,)
    n = done.shape[0]
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"{where}: keyframe index {int(bad[0])} out of range [0, {n})")
    if not idx.size:
        return np.zeros(0, dtype=bool)
    return np.asarray(done.get_coordinate_selection(idx), dtype=bool)


def format_examples(tokens: Iterable[str]) -> str:
    """The first few of ``tokens``, comma-separated, and how many there are in all when more: for error messages."""
    tokens = list(tokens)
    more = f", ... ({len(tokens)} in all)" if len(tokens) > _SHOW else ""
    return ", ".join(map(str, tokens[:_SHOW])) + more


class LabelStoreReader:
    """Read-only view of the label store at ``path``; picklable (holds only the path), opens lazily."""

    _writable = False
    _cache_done = True  # a reader may cache done masks; a writer must not (workers write meanwhile)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self._root: zarr.Group | None = None
        self._attrs: dict | None = None
        self._tokens: np.ndarray | None = None
        self._scenes: np.ndarray | None = None
        self._index: dict[str, int] | None = None
        self._done: dict[str, np.ndarray] = {}
        self._arrays: dict[str, zarr.Array] = {}

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self._reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def refresh(self) -> None:
        """Forget cached metadata and done masks (to see what a running stage wrote since)."""
        self._reset()

    # -- opening -----------------------------------------------------------------------------------
    def _group(self) -> zarr.Group:
        if self._root is None:
            if not self.path.is_dir():
                raise FileNotFoundError(f"no label store at {self.path}")
            attrs = read_root_attrs(self.path)
            check_template(self.path, attrs)
            self._root = open_root(self.path, writable=self._writable)
            self._attrs = attrs
        return self._root

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self._group()[name]
        return self._arrays[name]

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """A copy of the store's attributes (schema_version, grid, dataset, feature_model, ...)."""
        self._group()
        return json.loads(json.dumps(self._attrs))

    @property
    def grid(self) -> GridSpec:
        """The BEV grid the store was made with."""
        self._group()
        return GridSpec.from_dict(self._attrs["grid"])

    @property
    def stages(self) -> dict:
        """``{stage name: record}`` of the stages the store holds (done flag, arrays, tables, identity)."""
        return json.loads(json.dumps(self._stages()))

    def _stages(self) -> dict:  # not copied: for lookups on every read
        self._group()
        return self._attrs.get("stages", {})

    @property
    def sample_tokens(self) -> np.ndarray:
        """Keyframe tokens ``(S,)`` str, in scene order."""
        if self._tokens is None:
            self._tokens = self._array(SAMPLE_TOKEN)[:]
        return self._tokens

    @property
    def scenes(self) -> np.ndarray:
        """Scene name of each keyframe ``(S,)`` str."""
        if self._scenes is None:
            self._scenes = self._array(SCENE)[:]
        return self._scenes

    @property
    def num_keyframes(self) -> int:
        """``S``."""
        return int(self._array(SAMPLE_TOKEN).shape[0])

    def __len__(self) -> int:
        return self.num_keyframes

    def index_of(self, token: str) -> int:
        """The keyframe index ``s`` of a sample token; ``KeyError`` when the store lacks it."""
        try:
            return self._token_index()[token]
        except KeyError:
            raise KeyError(f"sample token {token!r} is not in the store {self.path}") from None

    def _token_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {str(t): i for i, t in enumerate(self.sample_tokens)}
        return self._index

    def has(self, name: str) -> bool:
        """True when the store holds the stage, array or table ``name`` (e.g. ``"teacher/bev"``)."""
        if name in (SAMPLE_TOKEN, SCENE):
            return True
        for stage_name, entry in self._stages().items():
            if name in (stage_name, entry["done"]) or name in entry["arrays"] or name in entry["tables"]:
                return True
        return False

    def _stage(self, stage: str) -> dict:
        stages = self._stages()
        if stage not in stages:
            raise StoreError(
                f"{self.path} has no {stage!r} stage (it has {sorted(stages)}); run pipelines.{stage} to add it"
            )
        return stages[stage]

    def _stage_of(self, name: str, kind: str) -> str:
        for stage_name, entry in self._stages().items():
            if name in entry[kind]:
                return stage_name
        known = sorted(n for e in self._stages().values() for n in e[kind])
        raise KeyError(f"{self.path} has no {kind[:-1]} {name!r}; it has {known}")

    # -- progress ----------------------------------------------------------------------------------
    def done_mask(self, stage: str = "labels") -> np.ndarray:
        """``(S,)`` bool: which keyframes the stage has finished."""
        if stage in self._done:
            return self._done[stage]
        mask = np.asarray(self._array(self._stage(stage)["done"])[:], dtype=bool)
        if self._cache_done:
            self._done[stage] = mask
        return mask

    def done_rows(self, rows, stage: str = "labels") -> np.ndarray:
        """``(n,)`` bool: the stage's done flags of the keyframes ``rows`` ``(n,)``, read now (never cached).

        Reads only those keyframes' chunks: what a stage's driver polls while its tasks run.
        """
        return read_rows(self._array(self._stage(stage)["done"]), rows, f"{self.path} {stage} done")

    @property
    def done(self) -> np.ndarray:
        """``(S,)`` bool: which keyframes the label stage has finished."""
        return self.done_mask("labels")

    def todo_indices(self, stage: str = "labels") -> np.ndarray:
        """``(n,)`` int64 indices of the keyframes the stage has not finished, ascending."""
        return np.flatnonzero(~self.done_mask(stage)).astype(np.int64)

    def failures(self, stage: str = "labels") -> dict[str, str]:
        """``{scene: reason}`` of the scenes the stage's last runs could not process."""
        self._group()
        return dict(self._attrs.get("failures", {}).get(stage, {}))

    def summary(self, stage: str = "labels", coverage: bool = True) -> dict:
        """Progress of a stage: ``total``, ``done``, ``todo``, ``incomplete_scenes``, ``coverage``, ``failures``.

        ``coverage`` is the share of BEV cells with a count > 0 over the done keyframes (stages with a
        count array; ``None`` otherwise, when ``coverage=False``, or when nothing is done). Reading it
        reads every done keyframe's count map.
        """
        entry = self._stage(stage)
        done = self.done_mask(stage)
        scenes = self.scenes
        cov = None
        if coverage and entry.get("coverage") and done.any():
            count = self._array(entry["coverage"])
            idx = np.flatnonzero(done)
            filled = 0
            for i in range(0, idx.size, 256):  # bounded memory: 256 maps at a time
                block = count.get_orthogonal_selection((idx[i : i + 256],))
                filled += int(np.count_nonzero(block))
            cov = filled / float(idx.size * int(np.prod(count.shape[1:])))
        return {
            "stage": stage,
            "total": int(done.size),
            "done": int(done.sum()),
            "todo": int((~done).sum()),
            "incomplete_scenes": sorted({str(s) for s in scenes[~done]}),
            "coverage": cov,
            "failures": self.failures(stage),
        }

    # -- data --------------------------------------------------------------------------------------
    def _check_index(self, s: int, stage: str) -> int:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"keyframe index must be an int, got {type(s).__name__}")
        n = self.num_keyframes
        if not 0 <= int(s) < n:
            raise IndexError(f"keyframe index {s} out of range [0, {n})")
        if not self.done_mask(stage)[int(s)]:
            raise StoreIncompleteError(
                f"{self.path}: keyframe {s} ({self.sample_tokens[int(s)]}, scene {self.scenes[int(s)]}) "
                f"is not written by the {stage} stage yet; finish the stage (rerun it) first",
                [int(s)],
            )
        return int(s)

    def read(self, name: str, s: int) -> np.ndarray:
        """Keyframe ``s`` of the per-keyframe array ``name`` (e.g. ``"teacher/bev"`` ``(C_t, H_t, W_t)``)."""
        s = self._check_index(s, self._stage_of(name, "arrays"))
        return self._array(name)[s]

    def table(self, name: str, s: int) -> dict[str, np.ndarray]:
        """Keyframe ``s``'s table ``name`` as ``{column: (R,) array}``, each column in its schema dtype."""
        stage = self._stage_of(name, "tables")
        s = self._check_index(s, stage)
        columns = self._stages()[stage]["tables"][name]["columns"]
        rows = self._group()[table_key(name, s)][...]  # (R, n) float32
        return {col: rows[:, j].astype(dtype) for j, (col, dtype) in enumerate(columns)}

    def dino_feat(self, s: int) -> np.ndarray:
        """Mean foundation feature per BEV cell ``(C, H, W)`` float16 of keyframe ``s`` (0 where empty)."""
        return self.read("dino/feat", s)

    def dino_count(self, s: int) -> np.ndarray:
        """Points pooled per BEV cell ``(H, W)`` uint16 of keyframe ``s``."""
        return self.read("dino/count", s)

    def lidar_px(self, s: int) -> dict[str, np.ndarray]:
        """Projected LiDAR pixels of keyframe ``s``: ``cam`` uint8, ``u, v, depth`` float32, ``obj`` int32, each ``(R,)``."""
        return self.table("lidar_px", s)

    def teacher_bev(self, s: int) -> np.ndarray:
        """The LiDAR teacher's BEV map ``(C_t, H_t, W_t)`` float16 of keyframe ``s``."""
        return self.read("teacher/bev", s)

    # -- the trainer's check -----------------------------------------------------------------------
    def check_compatible(
        self,
        *,
        grid: GridSpec | None = None,
        sample_tokens: Iterable[str] | None = None,
        stage: str = "labels",
        require_done: bool = True,
    ) -> np.ndarray:
        """Store indices ``(N,)`` int64 of ``sample_tokens`` (all keyframes when ``None``), after checks.

        Raises :class:`StoreMismatchError` when the store's grid differs from ``grid`` or it lacks some
        of ``sample_tokens`` (a subset, e.g. one split, is fine), and :class:`StoreIncompleteError`
        (``require_done``) when some of them are not done, naming which and the recorded failures.
        """
        if grid is not None and not self.grid.same_geometry(grid):
            raise StoreMismatchError(
                "grid",
                self.grid.to_dict(),
                grid.to_dict(),
                f"{self.path} was made with the grid {self.grid.to_dict()}; the config asks for "
                f"{grid.to_dict()}. Remake the labels with this grid, or train with the store's grid",
            )
        self._stage(stage)
        if sample_tokens is None:
            idx = np.arange(self.num_keyframes, dtype=np.int64)
        else:
            tokens = [str(t) for t in sample_tokens]
            index = self._token_index()
            missing = [t for t in tokens if t not in index]
            if missing:
                raise StoreMismatchError(
                    "sample_tokens",
                    f"{self.num_keyframes} keyframes",
                    f"{len(tokens)} keyframes",
                    f"{self.path} lacks {len(missing)} of the {len(tokens)} keyframes the config asks for "
                    f"({format_examples(missing)}): it was made from another dataset or version; remake it",
                )
            idx = np.array([index[t] for t in tokens], dtype=np.int64)
        if require_done:
            not_done = idx[~self.done_mask(stage)[idx]]
            if not_done.size:
                scenes = sorted({str(s) for s in self.scenes[not_done]})
                fails = self.failures(stage)
                reasons = "; ".join(f"{sc}: {fails[sc]}" for sc in scenes if sc in fails)
                raise StoreIncompleteError(
                    f"{self.path}: {not_done.size} of the {idx.size} keyframes asked for are not written by "
                    f"the {stage} stage ({format_examples(self.sample_tokens[not_done])}; scenes {format_examples(scenes)})."
                    + (f" Recorded failures: {reasons}." if reasons else "")
                    + f" Rerun pipelines.{stage} to finish them, or leave those keyframes out",
                    not_done,
                )
        return idx
